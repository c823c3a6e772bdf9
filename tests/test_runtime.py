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
from petlab.runtime import PipelineError, Precision, select_device, select_precision

# A device this machine does not have (CUDA machines have no MPS, and the other way round).
MISSING_DEVICE = "mps" if torch.cuda.is_available() else "cuda"
DEVICE_STAGES = ["sanity_data", "train_cnn", "train_vit", "profile", "evaluate"]


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
        importlib.import_module(f"stages.{stage}").main()


def start_as_in_a_terminal(cmd: list[str], cwd, **kwargs) -> subprocess.Popen:
    """Its own process group (Ctrl-C signals a whole group), with Ctrl-C enabled even when these tests run
    in the background, where SIGINT is ignored and every child would inherit that."""
    return subprocess.Popen(cmd, cwd=cwd, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def test_ctrl_c_while_a_stage_is_still_importing_prints_one_line(tmp_path):
    write_params(tmp_path, {})
    proc = start_as_in_a_terminal([sys.executable, "-m", "stages.train_cnn"], tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    time.sleep(0.5)  # importing torch alone takes longer than this
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "train_cnn: interrupted while starting; nothing was written\n", err


def pretend_cuda_device(monkeypatch, major: int, minor: int) -> None:
    """A CUDA GPU of compute capability major.minor, on which (as torch finds on a T4) bf16 tensors can be made."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(major=major, minor=minor, name=f"sm_{major}{minor}"))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)  # emulated bf16 works


@pytest.mark.parametrize("capability, name, grad_scaling", [((7, 5), "fp16", True), ((7, 0), "fp16", True),
                                                            ((8, 0), "bf16", False), ((8, 6), "bf16", False),
                                                            ((9, 0), "bf16", False)])
def test_gpus_get_bf16_only_where_it_is_native_else_fp16_with_grad_scaling(monkeypatch, capability, name,
                                                                           grad_scaling):
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
    code = ("import resource, sys, torch\n"
            "from petlab.runtime import keep_freed_memory\n"
            "kept = sys.argv[1] == 'keep' and keep_freed_memory()\n"
            "a = torch.ones(16 * 2 ** 20)\n"
            "faults = []\n"
            "for step in range(8):\n"
            "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    ((a * 2 + 1) * 3).sum()\n"
            "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
            "print(kept, *faults[-4:])\n")
    faults = {}
    for way in ("keep", "default"):
        out = subprocess.run([sys.executable, "-c", code, way], capture_output=True, text=True, cwd=REPO, check=True,
                             timeout=300).stdout.split()
        assert out[0] == str(way == "keep")
        faults[way] = [int(n) for n in out[1:]]
    # The steady state, over the last 4 steps (the median): on a busy machine one step may fault a tensor in again.
    assert statistics.median(faults["default"]) > 2 * 16_384 and statistics.median(faults["keep"]) < 1_000, faults
