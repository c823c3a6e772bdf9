"""Run-time guards: Ctrl-C while a stage is still starting, and an unavailable device refused before any work."""

import importlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, write_params

from petlab.core.device import Precision, select_device, select_precision
from petlab.core.errors import PipelineError

# A device this machine does not have (CUDA machines have no MPS, and the other way round).
MISSING_DEVICE = "mps" if torch.cuda.is_available() else "cuda"
# The stages that choose a device: the per-model ones with a model (their main's argument).
DEVICE_STAGES = ["sanity_data", "train_cnn", "train_vit", "profile", "evaluate", "robustness"]
MODEL_STAGES = {"profile", "evaluate", "robustness"}


def test_a_missing_device_is_an_error():
    if MISSING_DEVICE == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has both CUDA and MPS")
    with pytest.raises(PipelineError, match=f"device = '{MISSING_DEVICE}' but"):
        select_device(MISSING_DEVICE)
    assert select_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("stage", DEVICE_STAGES)
def test_every_device_stage_checks_the_device_before_reading_data(tmp_path, monkeypatch, stage):
    """There is no data here at all: getting the device message, not a missing-data one, shows the order."""
    write_params(tmp_path, {"device": MISSING_DEVICE})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=f"^device = '{MISSING_DEVICE}' but .* available here"):
        main = importlib.import_module(f"stages.{stage}").main
        main("cnn") if stage in MODEL_STAGES else main()


def start_as_in_a_terminal(cmd: list[str], cwd, **kwargs) -> subprocess.Popen:
    """Its own process group (Ctrl-C signals a whole group), with Ctrl-C enabled even when these tests run
    in the background, where SIGINT is ignored and every child would inherit that."""
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,
    )


def test_ctrl_c_while_a_stage_is_still_importing_prints_one_line(tmp_path):
    write_params(tmp_path, {})
    proc = start_as_in_a_terminal(
        [sys.executable, "-m", "stages.train_cnn"],
        tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    time.sleep(0.5)  # importing torch alone takes longer than this
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "train_cnn: interrupted while starting; nothing was written\n", err


def pretend_cuda_device(monkeypatch, major: int, minor: int) -> None:
    """A CUDA GPU of compute capability major.minor, on which (as torch finds on a T4) bf16 tensors can be made."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda device=None: SimpleNamespace(major=major, minor=minor, name=f"sm_{major}{minor}"),
    )
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)  # emulated bf16 works


@pytest.mark.parametrize(
    "capability, name, grad_scaling",
    [
        ((7, 5), "fp16", True),
        ((7, 0), "fp16", True),
        ((8, 0), "bf16", False),
        ((8, 6), "bf16", False),
        ((9, 0), "bf16", False),
    ],
)
def test_gpus_get_bf16_only_where_it_is_native_else_fp16_with_grad_scaling(monkeypatch, capability, name, grad_scaling):
    """A T4 (sm_75) emulates bf16, so torch.cuda.is_bf16_supported() says yes: it must still get fp16."""
    pretend_cuda_device(monkeypatch, *capability)
    precision = select_precision(torch.device("cuda"), amp=True)
    assert (precision.name, precision.grad_scaling) == (name, grad_scaling)
    assert select_precision(torch.device("cuda"), amp=False).name == "fp32"


def test_only_fp16_gets_a_grad_scaler():
    cpu = torch.device("cpu")
    assert isinstance(Precision(torch.float16, True).grad_scaler(cpu), torch.amp.GradScaler)
    assert Precision(torch.bfloat16, False).grad_scaler(cpu) is None and Precision(None, False).grad_scaler(cpu) is None


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_tensor_memory_is_reused_without_faulting_it_in_again():
    """Steps that make and free 64 MB tensors, as a training step does with activations: by default the kernel maps
    and zeroes their pages anew every step (16,384 page faults per tensor); after keep_freed_memory, once the first
    steps have grown the heap, none. A fresh process each way: the setting holds for the whole process."""
    code = (
        "import resource, sys, torch\n"
        "from petlab.core.runtime import keep_freed_memory\n"
        "kept = sys.argv[1] == 'keep' and keep_freed_memory()\n"
        "a = torch.ones(16 * 2 ** 20)\n"
        "faults = []\n"
        "for step in range(8):\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    ((a * 2 + 1) * 3).sum()\n"
        "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
        "print(kept, *faults[-4:])\n"
    )
    faults = {}
    for way in ("keep", "default"):
        out = subprocess.run(
            [sys.executable, "-c", code, way], capture_output=True, text=True, cwd=REPO, check=True, timeout=300
        ).stdout.split()
        assert out[0] == str(way == "keep")
        faults[way] = [int(n) for n in out[1:]]
    # The steady state, over the last 4 steps (the median): on a busy machine one step may fault a tensor in again.
    assert statistics.median(faults["default"]) > 2 * 16_384 and statistics.median(faults["keep"]) < 1_000, faults


# ---------------------------------------------------------------- a GPU the installed build has no kernels for

CUDA13_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.14.1's CUDA 13 wheels


def pretend_gpu_and_build(monkeypatch, capability: tuple[int, int], arch_list: list[str], name: str) -> None:
    pretend_cuda_device(monkeypatch, *capability)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arch_list)


@pytest.mark.parametrize("requested", ["auto", "cuda"])
@pytest.mark.parametrize("capability, name", [((7, 0), "Tesla V100-SXM2-16GB"), ((6, 0), "Tesla P100-PCIE-16GB")])
def test_a_gpu_the_build_has_no_kernels_for_is_refused_in_one_line(monkeypatch, requested, capability, name):
    """Kaggle's P100 and a V100 under the CUDA 13 build: refused before any work, naming a build that covers them,
    not "no kernel image is available" at the first kernel."""
    pretend_gpu_and_build(monkeypatch, capability, CUDA13_ARCHS, name)
    with pytest.raises(PipelineError) as refused:
        select_device(requested)
    message = str(refused.value)
    assert "\n" not in message and name in message and f"sm_{capability[0]}{capability[1]}" in message
    assert "download.pytorch.org/whl/cu126" in message and "device: cpu" in message


@pytest.mark.parametrize(
    "capability, arch_list",
    [
        ((7, 5), CUDA13_ARCHS),
        ((8, 9), CUDA13_ARCHS),  # a T4; an L4 runs the sm_86 binaries
        ((9, 0), CUDA13_ARCHS),
        ((12, 1), CUDA13_ARCHS),  # an H100; sm_121 runs sm_120's
        ((7, 0), ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]),  # a V100 under the CUDA 12.6 build
        ((10, 3), ["sm_80", "sm_90a", "compute_90"]),  # PTX compiles for any later GPU
    ],
)
def test_a_gpu_the_build_covers_is_chosen(monkeypatch, capability, arch_list):
    pretend_gpu_and_build(monkeypatch, capability, arch_list, "GPU")
    assert select_device("auto") == torch.device("cuda") == select_device("cuda")


def test_kernel_coverage_follows_cudas_compatibility_rules():
    from petlab.core.device import arch_version, cuda_kernels_cover

    assert arch_version("sm_86") == ("sm", 8, 6) and arch_version("sm_120") == ("sm", 12, 0)
    assert arch_version("sm_90a") == ("sm", 9, 0) and arch_version("compute_100f") == ("compute", 10, 0)
    assert arch_version("gfx90a") is None
    assert cuda_kernels_cover((8, 9), ["sm_86"]) and not cuda_kernels_cover((8, 0), ["sm_86"])  # minor: forward only
    assert not cuda_kernels_cover((9, 0), ["sm_86"])  # never across a major version
    assert cuda_kernels_cover((9, 0), ["compute_86"]) and not cuda_kernels_cover((8, 0), ["compute_86"])


# ---------------------------------------------------------------- what fp32 and determinism mean on each device


def test_fp32_is_ieee_fp32_on_ampere_not_tf32(monkeypatch):
    """cuDNN runs fp32 convolutions as TF32 on Ampere and later by default (matmuls stay IEEE): a run with amp off,
    the sanity overfit and the cached-feature head, all recorded as fp32, must not get TF32."""
    from petlab.core.runtime import seed_everything

    pretend_cuda_device(monkeypatch, 8, 0)
    for flag in (torch.backends.cudnn, torch.backends.cuda.matmul):
        monkeypatch.setattr(flag, "allow_tf32", True)
    seed_everything(0, torch.device("cuda"))
    assert select_precision(torch.device("cuda"), amp=False).name == "fp32"
    assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False


@pytest.mark.parametrize(
    "device, relaxed, warn_only", [("cuda", "", False), ("cpu", "", False), ("mps", "", True), ("cuda", "warn", True)]
)
def test_deterministic_kernels_are_required_except_on_mps_or_when_relaxed(monkeypatch, device, relaxed, warn_only):
    """warn_only=False is what switches CUDA's flash and memory-efficient attention to their deterministic backward
    (under warn_only=True they only warn): the unfreeze route then repeats on a GPU too."""
    from petlab.core.runtime import DETERMINISTIC_VARIABLE, seed_everything

    monkeypatch.setenv(DETERMINISTIC_VARIABLE, relaxed)
    try:
        seed_everything(0, torch.device(device))
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled() is warn_only
    finally:
        seed_everything(0)


def test_the_cnns_global_average_pooling_is_a_mean_whose_backward_is_deterministic():
    """nn.AdaptiveAvgPool2d(1) lowers to mean() (aten's adaptive_avg_pool2d, any device), whose backward is an
    expand: not the adaptive pooling backward that has no deterministic CUDA kernel."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from petlab.models.cnn import SimpleCNN

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(str(func))
            return func(*args, **(kwargs or {}))

    model = SimpleCNN(3, [4, 8], dropout=0.0, batch_norm=True)
    with Ops() as ops:
        model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert "aten.mean.dim" in ops.names
    assert not any("adaptive_avg_pool" in name for name in ops.names), sorted(ops.names)
