"""Run-time guards: one-line errors, Ctrl-C, and an unavailable device refused before any work."""

import importlib

import pytest
import torch

from conftest import write_params
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
