"""Run-time guards: one-line errors, Ctrl-C, and an unavailable device refused before any work."""

import importlib
import os
import platform
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, write_params
from petlab.runtime import PipelineError, run_stage, select_device

# A device this machine does not have (CUDA machines have no MPS, and the other way round).
MISSING_DEVICE = "mps" if torch.cuda.is_available() else "cuda"
DEVICE_STAGES = ["sanity_data", "train_cnn", "train_vit", "profile", "evaluate"]


def test_run_stage_turns_errors_and_ctrl_c_into_one_line(capsys):
    def fail():
        raise PipelineError("data.root = 'x' is wrong")

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        run_stage("demo", fail)
    assert exit_.value.code == 1 and capsys.readouterr().err == "demo: error: data.root = 'x' is wrong\n"
    with pytest.raises(SystemExit) as exit_:
        run_stage("demo", interrupted)
    assert exit_.value.code == 130 and len(capsys.readouterr().err.splitlines()) == 1


def test_a_failed_stage_leaves_no_partial_live_logs(tmp_path, capsys):
    logs = tmp_path / "runs" / "demo"

    def fail_after_logging():
        logs.mkdir(parents=True)
        (logs / "events.out.tfevents.1.host").write_bytes(b"partial")
        raise PipelineError("cannot get pretrained weights")

    with pytest.raises(SystemExit):
        run_stage("demo", fail_after_logging, live_dirs=[logs])
    assert not logs.exists() and capsys.readouterr().err.startswith("demo: error: cannot get")


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


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EROFS", "EACCES", "EDQUOT"])
def test_a_write_failure_anywhere_is_one_line(capsys, errno_name):
    import errno

    code = getattr(errno, errno_name)

    def write():
        raise OSError(code, os.strerror(code), "metrics/train_cnn.json")

    with pytest.raises(SystemExit) as exit_:
        run_stage("demo", write)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"demo: error: metrics/train_cnn.json: {os.strerror(code)} (errno {errno_name})\n"


def test_an_os_error_without_errno_keeps_its_traceback():
    def bug():
        raise OSError("broken data stream")

    with pytest.raises(OSError, match="broken data stream"):
        run_stage("demo", bug)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_tensor_memory_is_reused_without_faulting_it_in_again():
    """Steps that make and free 64 MB tensors, as a training step does with activations: by default the kernel maps
    and zeroes their pages anew every step (16,384 page faults per tensor); after keep_freed_memory, once the first
    steps have grown the heap, none. A fresh process each way: the setting holds for the whole process."""
    code = ("import resource, sys, torch\n"
            "from petlab.runtime import keep_freed_memory\n"
            "kept = sys.argv[1] == 'keep' and keep_freed_memory()\n"
            "a = torch.ones(16 * 2 ** 20)\n"
            "for step in range(5):\n"
            "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    ((a * 2 + 1) * 3).sum()\n"
            "print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    faults = {}
    for way in ("keep", "default"):
        out = subprocess.run([sys.executable, "-c", code, way], capture_output=True, text=True, cwd=REPO, check=True,
                             timeout=300).stdout.split()
        assert out[0] == str(way == "keep")
        faults[way] = int(out[1])
    assert faults["default"] > 2 * 16_384 and faults["keep"] < 1_000
