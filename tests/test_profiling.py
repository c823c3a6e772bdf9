import json
import subprocess
import sys
import threading
from types import SimpleNamespace
from pathlib import Path

import pytest
import torch
from torch import nn

from petlab.data import TransformSpec
from petlab.params import Params, ProfileParams
from petlab import report_document
from petlab.profiling import PEAK_MEMORY_METRICS, PeakMemory, forward_gflops, peak_memory_metric, step_stats
from petlab.runtime import Precision
from petlab.train import StepContext, train_step

REPO = Path(__file__).resolve().parents[1]

PROFILE_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from petlab.params import ProfileParams
from petlab.profiling import profile_steps

model = torch.nn.Linear(8, 3)
batches = [(torch.randn(4, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
made_before = [torch.randn(1000) for _ in range(4)]  # freed while profiling, as the stage frees old batches


def step(x, y):
    made_before.pop()
    model(x).sum().backward()


stats = profile_steps(step, batches, ProfileParams(wait=1, warmup=1, active=2), torch.device("cpu"),
                      Path(sys.argv[1]), desc="profile")
print(json.dumps(stats))
"""


def test_profile_steps_times_the_active_steps_writes_a_trace_and_stays_quiet(tmp_path):
    """In a fresh interpreter, as in the stage: the profiler backend's own log lines must not reach the user."""
    proc = subprocess.run([sys.executable, "-c", PROFILE_SCRIPT, str(tmp_path / "trace")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["step_ms_mean"] > 0 and stats["throughput_images_per_s"] > 0
    assert 0 <= stats["data_wait_share"] < 1  # a list of ready batches: the step hardly waits
    assert stats["peak_rss_rise_mb"] >= 0 and peak_memory_metric(stats).key == "peak_rss_rise_mb"
    assert any(tmp_path.joinpath("trace").glob("*.pt.trace.json*"))
    for noise in ("ERROR:", "USDT:", "STAGE:", "gpuGetDeviceCount", "Memory block of unknown size"):
        assert noise not in proc.stderr, proc.stderr


def test_step_stats_and_gflops():
    stats = step_stats([0.1, 0.2, 0.3], batch_size=10)
    assert stats["step_ms_mean"] == 200.0 and stats["throughput_images_per_s"] == 50.0
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 1000))
    assert forward_gflops(model, 64, torch.device("cpu")) == round(2 * 3 * 64 * 64 * 1000 / 1e9, 4)


@pytest.mark.parametrize("precision", [Precision(torch.float16, True), Precision(torch.bfloat16, False),
                                       Precision(None, False)], ids=lambda p: p.name)
def test_the_profiled_step_scales_gradients_where_training_does(monkeypatch, tmp_path, precision):
    """fp16 trains with a GradScaler (its scaling and unscaling are part of every step): the profile times that
    step, one scaler across the steps as in training; other precisions have none to time."""
    import stages.profile as stage

    spec = TransformSpec(size=16)
    batches = [(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8), torch.randint(0, 3, (4,)))
               for _ in range(2)]
    monkeypatch.setattr(stage, "TRACES", tmp_path)
    monkeypatch.setattr(stage, "image_loader", lambda *args, **kwargs: batches)
    scalers = []

    def recording_train_step(*args):
        scalers.append(args[-1])
        return train_step(*args)

    monkeypatch.setattr(stage, "train_step", recording_train_step)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    params = Params(profile=ProfileParams(wait=0, warmup=1, active=2, batch_size=4))
    ctx = StepContext(torch.device("cpu"), precision, input_spec=spec)
    stats = stage.profile_model("cnn", model, {"transform": spec.as_dict()}, ctx, params, None, params.train_cnn)
    assert stats["precision"] == precision.name and stats["steps_timed"] == 2 and len(scalers) == 3
    if precision.grad_scaling:
        assert isinstance(scalers[0], torch.amp.GradScaler) and all(s is scalers[0] for s in scalers)
    else:
        assert scalers == [None] * 3


MB = 2**20


def test_peak_memory_on_the_cpu_is_the_rise_of_the_process_rss():
    with PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(64 * MB // 4)  # 64 MB, every page touched
    assert memory.metric.key == "peak_rss_rise_mb" and 48 <= memory.peak_mb < 1024
    del block


def test_peak_memory_on_cuda_is_the_allocators_absolute_peak(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated",
                        lambda device=None: calls.append(("peak", device)) or 700 * MB)
    cuda = torch.device("cuda")
    with PeakMemory(cuda) as memory:
        pass
    assert calls == [("reset", cuda), ("peak", cuda)]
    assert (memory.metric.key, memory.peak_mb) == ("peak_cuda_allocated_mb", 700.0)


def test_peak_memory_on_mps_is_the_metal_drivers_absolute_peak(monkeypatch):
    """RSS misses Metal's allocations: the driver's own count, its highest value during the block."""
    held = [100 * MB]
    sampled_high = threading.Event()

    def driver_allocated_memory():
        if held[0] == 300 * MB:
            sampled_high.set()
        return held[0]

    monkeypatch.setattr(torch.mps, "driver_allocated_memory", driver_allocated_memory)
    with PeakMemory(torch.device("mps")) as memory:
        held[0] = 300 * MB  # a step's activations, sampled, then freed before the block ends
        assert sampled_high.wait(timeout=10)
        held[0] = 200 * MB
    assert (memory.metric.key, memory.peak_mb) == ("peak_mps_driver_mb", 300.0)


def test_each_peak_memory_metric_has_its_own_name_and_the_report_says_which():
    assert len({m.key for m in PEAK_MEMORY_METRICS.values()}) == 3
    profile = {"step_ms_mean": 10.0, "step_ms_p95": 12.0, "throughput_images_per_s": 100.0, "gflops_per_image": 1.0,
               "trainable_parameters": 10, "total_parameters": 10, "data_wait_share": 0.0, "batch_size": 4,
               "device": "cuda", "peak_cuda_allocated_mb": 1234.0}
    run = SimpleNamespace(profile={"cnn": profile, "vit": profile}, top_ops={}, stage_seconds={"train_cnn": 1.0},
                          root=Path("run"))
    text = report_document.cost_section(run, {"cnn": ("compute-bound",), "vit": ("compute-bound",)}, Path("run"))
    assert "peak CUDA memory allocated (MB)" in text and "1234" in text
    assert PEAK_MEMORY_METRICS["cuda"].meaning in text and "resident memory" not in text
