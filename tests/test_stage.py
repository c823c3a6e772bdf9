"""A stage's run: failures the user can fix and Ctrl-C as one line and an exit code, no partial live logs."""

import errno
import os

import pytest
import torch

from petlab.core.errors import PipelineError
from petlab.core.stage import run_stage


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


def test_the_process_group_is_left_after_a_clean_finish_only(tmp_path, monkeypatch, capsys):
    """NCCL's teardown can wait on ranks still in a collective with a failed one until the timeout: a failed rank
    exits without it (torchrun stops the others); a rank that finished leaves the group."""
    import atexit

    import torch.distributed as dist

    from petlab.core import distributed

    monkeypatch.chdir(tmp_path)
    registered, destroyed = [], []
    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: registered.append(fn))
    monkeypatch.setattr(dist, "init_process_group", lambda backend: None)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    distributed.join(torch.device("cpu"))
    assert registered == []  # nothing that tears the group down at exit, whatever the exit

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: destroyed.append(True))

    def fail():
        raise PipelineError("rank 1 cannot read data")

    with pytest.raises(SystemExit):
        run_stage("demo", fail)
    assert destroyed == []
    run_stage("demo", lambda: None)
    assert destroyed == [True]


def test_an_operation_without_a_deterministic_kernel_is_one_line(capsys):
    def backward_of_an_op_without_one():
        raise RuntimeError(
            "adaptive_max_pool2d_backward_cuda does not have a deterministic implementation, but you "
            "set 'torch.use_deterministic_algorithms(True)'. You can turn off determinism ..."
        )

    with pytest.raises(SystemExit) as exit_:
        run_stage("train_cnn", backward_of_an_op_without_one)
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and len(err.splitlines()) == 1
    assert err.startswith("train_cnn: error: adaptive_max_pool2d_backward_cuda has no deterministic kernel")
    assert "PETLAB_DETERMINISTIC=warn" in err

    def another_runtime_error():
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):  # a bug or a resource: its traceback is kept
        run_stage("train_cnn", another_runtime_error)
