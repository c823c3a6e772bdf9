"""A stage's run: failures the user can fix and Ctrl-C as one line and an exit code, no partial live logs."""

import errno
import os

import pytest

from petlab.runtime import PipelineError
from petlab.stage import run_stage


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


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EROFS", "EACCES", "EDQUOT"])
def test_a_write_failure_anywhere_is_one_line(capsys, errno_name):
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
