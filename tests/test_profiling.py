import json
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from petlab.core.device import Precision
from petlab.core.params import Params, ProfileParams
from petlab.core.records import PEAK_MEMORY_METRICS, peak_memory_metric
from petlab.data.transforms import TransformSpec
from petlab.measure.profiling import PeakMemory, step_stats
from petlab.models.registry import forward_gflops
from petlab.report import document as report_document
from petlab.train.loop import StepContext, train_step

REPO = Path(__file__).resolve().parents[1]

PROFILE_SCRIPT = """
import json, sys
from pathlib import Path
import stages.profile  # first, as when the stage runs: it quiets torch's C++ log before torch loads
import torch
from petlab.core.params import ProfileParams
from petlab.measure.profiling import profile_steps

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
    proc = subprocess.run(
        [sys.executable, "-c", PROFILE_SCRIPT, str(tmp_path / "trace")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
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


@pytest.mark.parametrize(
    "precision",
    [Precision(torch.float16, True), Precision(torch.bfloat16, False), Precision(None, False)],
    ids=lambda p: p.name,
)
def test_the_profiled_step_scales_gradients_where_training_does(monkeypatch, tmp_path, precision):
    """fp16 trains with a GradScaler (its scaling and unscaling are part of every step): the profile times that
    step, one scaler across the steps as in training; other precisions have none to time."""
    from petlab.measure import profiling as stage

    spec = TransformSpec(size=16)
    batches = [(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8), torch.randint(0, 3, (4,))) for _ in range(2)]
    monkeypatch.setattr(stage, "image_loader", lambda *args, **kwargs: batches)
    scalers = []

    def recording_train_step(*args):
        scalers.append(args[-1])
        return train_step(*args)

    monkeypatch.setattr(stage, "train_step", recording_train_step)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    params = Params(profile=ProfileParams(wait=0, warmup=1, active=2, batch_size=4))
    ctx = StepContext(torch.device("cpu"), precision, input_spec=spec)
    stats = stage.profile_model(
        "cnn", model, {"transform": spec.as_dict()}, ctx, params, None, params.train_cnn, tmp_path
    )
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
    monkeypatch.setattr(
        torch.cuda, "max_memory_allocated", lambda device=None: calls.append(("peak", device)) or 700 * MB
    )
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


def test_each_peak_memory_metric_has_its_own_name_and_the_report_says_which(tmp_path):
    assert len({m.key for m in PEAK_MEMORY_METRICS.values()}) == 3
    profile = {
        "step_ms_mean": 10.0,
        "step_ms_p95": 12.0,
        "throughput_images_per_s": 100.0,
        "gflops_per_image": 1.0,
        "trainable_parameters": 10,
        "total_parameters": 10,
        "data_wait_share": 0.0,
        "batch_size": 4,
        "device": "cuda",
        "peak_cuda_allocated_mb": 1234.0,
    }
    run = SimpleNamespace(
        profile={"cnn": profile, "vit": profile}, top_ops={}, stage_seconds={"train_cnn": 1.0}, root=tmp_path
    )
    text = report_document.cost_section(
        run,
        {"cnn": ("compute-bound",), "vit": ("compute-bound",)},
        {"cnn": "CNN", "vit": "probe"},
        tmp_path,
        tmp_path / "figures",
    )
    assert "peak CUDA memory allocated (MB)" in text and "1234" in text
    assert PEAK_MEMORY_METRICS["cuda"].meaning in text and "resident memory" not in text


def event(key: str, device_type, self_cpu_us: float, self_device_us: float, count: int = 1) -> SimpleNamespace:
    """A row of torch.profiler's key_averages(), with the fields top_ops reads."""
    return SimpleNamespace(
        key=key,
        device_type=device_type,
        self_cpu_time_total=self_cpu_us,
        self_device_time_total=self_device_us,
        count=count,
    )


def test_cuda_top_ops_rank_operators_by_their_kernels_time_counting_no_kernel_twice():
    """On CUDA the profiler lists each kernel as a row of its own, and the operator that launched it also holds its
    time as self CUDA time: ranking every row would list the same time twice (the convolution and its kernel)."""
    from torch.autograd import DeviceType

    from petlab.measure.profiling import top_ops

    events = [
        event("aten::cudnn_convolution", DeviceType.CPU, 40, 900, 10),
        event("sm90_xmma_fprop_implicit_gemm_kernel", DeviceType.CUDA, 0, 900, 10),
        event("aten::add_", DeviceType.CPU, 30, 50, 20),
        event("elementwise_kernel", DeviceType.CUDA, 0, 50, 20),
        event("cudaLaunchKernel", DeviceType.CPU, 300, 0, 30),
        event("aten::batch_norm", DeviceType.CPU, 60, 400, 10),
    ]
    top = top_ops(events, "cuda", 3)
    assert top == [
        {"op": "aten::cudnn_convolution", "self_device_ms_total": 0.9, "calls": 10},
        {"op": "aten::batch_norm", "self_device_ms_total": 0.4, "calls": 10},
        {"op": "aten::add_", "self_device_ms_total": 0.05, "calls": 20},
    ]
    # MPS records no GPU time per operator: host time, under a name that says so; the CPU: self CPU time.
    assert top_ops(events, "mps", 1) == [{"op": "cudaLaunchKernel", "self_host_ms_total": 0.3, "calls": 30}]
    assert list(top_ops(events, "cpu", 1)[0]) == ["op", "self_cpu_ms_total", "calls"]


def test_gflops_count_attention_whichever_kernel_the_device_would_run():
    """FlopCounterMode has no formula for the CPU's flash attention (it counted nothing for it), and one for CUDA's
    fused kernels: counted under the math kernel, a ViT costs the same on every device."""
    import timm
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model("test_vit", pretrained=False).eval()
    size = model.default_cfg["input_size"][-1]
    x = torch.zeros(1, 3, size, size)

    def counted(*backends) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(list(backends)):
            model(x)
        return counter.get_total_flops()

    with_attention = counted(SDPBackend.MATH)
    assert counted(SDPBackend.FLASH_ATTENTION) < with_attention  # the CPU's fused kernel, counted as nothing
    assert forward_gflops(model, size, torch.device("cpu")) == round(with_attention / 1e9, 4)
