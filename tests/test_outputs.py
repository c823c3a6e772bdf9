"""Atomic outputs: a failed or killed write leaves the old output (or none), and nothing half-written."""

import pytest
import torch
from test_models import RunsCode

from petlab.core.errors import PipelineError
from petlab.core.outputs import atomic_dir, atomic_path, load_torch, save_torch, write_json


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"accuracy": 0.5})
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            tmp.write_text('{"accura')  # interrupted half-way
            raise KeyboardInterrupt
    assert path.read_text() == '{\n  "accuracy": 0.5\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_folder_keeps_the_previous_folder(tmp_path):
    out = tmp_path / "prepared"
    with atomic_dir(out) as tmp:
        (tmp / "old.jpg").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "new.jpg").write_bytes(b"new")
            raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]
    assert [p.name for p in out.iterdir()] == ["old.jpg"]


def test_leftovers_of_a_killed_run_are_cleaned_on_the_next_write(tmp_path):
    """SIGKILL skips every `finally`: what it leaves behind must not pile up."""
    (tmp_path / ".cnn.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".prepared.xyz.tmp").mkdir()
    (tmp_path / ".prepared.xyz.tmp" / "a.jpg").write_bytes(b"half")
    (tmp_path / ".prepared.old").mkdir()
    (tmp_path / ".other.json.abc.tmp").write_bytes(b"someone else's")
    save_torch(tmp_path / "cnn.pt", {"w": torch.ones(2)})
    with atomic_dir(tmp_path / "prepared") as tmp:
        (tmp / "b.jpg").write_bytes(b"b")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.abc.tmp", "cnn.pt", "prepared"]


def test_checkpoint_bytes_do_not_depend_on_the_file_name(tmp_path):
    state = {"model_state": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    save_torch(tmp_path / "a.pt", state)
    save_torch(tmp_path / "sub" / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "sub" / "b.pt").read_bytes()
    assert torch.equal(load_torch(tmp_path / "a.pt")["model_state"]["w"], state["model_state"]["w"])


def test_loading_refuses_pickled_code_and_truncated_files(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"model_state": {}, "payload": RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(PipelineError, match="evil.pt: cannot be loaded safely"):
        load_torch(tmp_path / "evil.pt")
    assert not marker.exists()
    save_torch(tmp_path / "good.pt", {"w": torch.ones(1000)})
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:500])
    with pytest.raises(PipelineError, match="cut.pt: cannot be loaded safely"):
        load_torch(tmp_path / "cut.pt")
    with pytest.raises(PipelineError, match="missing.pt: file not found"):
        load_torch(tmp_path / "missing.pt")


def test_outputs_get_the_usual_permissions_not_the_temporary_ones(tmp_path):
    import os
    import stat

    from petlab.core.outputs import atomic_dir, write_json

    umask = os.umask(0o022)
    os.umask(umask)
    write_json(tmp_path / "m.json", {"a": 1})
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "x").write_text("x")
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~umask


def unwritable_folder(tmp_path):
    """A folder this process cannot create files in: read-only for a normal user, /sys/kernel for root."""
    import os
    import tempfile
    from pathlib import Path

    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:
        os.unlink(tempfile.mkstemp(dir="/sys/kernel")[1])
    except OSError:
        return Path("/sys/kernel")
    pytest.skip("no folder refuses writes to root here")


# case -> (make `metrics` unusable under tmp_path, the reason the error must give)
OUTPUT_FAULTS = {
    "folder_is_a_file": (lambda tmp: (tmp / "metrics").write_text("x"), r"metrics is not a folder"),
    "dangling_link": (lambda tmp: (tmp / "metrics").symlink_to(tmp / "gone"), r"metrics is a link to nothing"),
    "read_only": (
        lambda tmp: (tmp / "metrics").symlink_to(unwritable_folder(tmp)),
        r"metrics refuses new files \((Permission denied|Read-only file system)\)",
    ),
}


@pytest.mark.parametrize("case", OUTPUT_FAULTS)
def test_an_unwritable_output_location_is_named_before_any_work(tmp_path, case):
    from petlab.core.outputs import check_writable

    make, reason = OUTPUT_FAULTS[case]
    make(tmp_path)
    out = tmp_path / "metrics" / "timing" / "stage.json"
    with pytest.raises(PipelineError, match=rf"^{out}: cannot be written: {tmp_path}/{reason}"):
        check_writable([tmp_path / "data" / "prepared", out])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics",
        *(["read_only"] if case == "read_only" and (tmp_path / "read_only").exists() else []),
    ]


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EROFS", "EACCES"])
def test_a_failing_probe_is_one_error(tmp_path, monkeypatch, errno_name):
    import errno
    import os
    import tempfile

    from petlab.core.outputs import check_writable

    def refuse(*args, **kwargs):
        code = getattr(errno, errno_name)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PipelineError, match=rf"refuses new files \({os.strerror(getattr(errno, errno_name))}\)"):
        check_writable([tmp_path / "metrics.json"])


def test_stage_outputs_are_read_from_dvc_yaml():
    from pathlib import Path

    from conftest import REPO

    from petlab.core.outputs import stage_outputs

    outputs = stage_outputs("prepare_oxford_pets", REPO / "dvc.yaml")
    assert Path("data/oxford_pets") in outputs and Path("metrics/timing/prepare_oxford_pets.json") in outputs
    assert Path("metrics/sanity.json") in stage_outputs("sanity_data", REPO / "dvc.yaml")
    assert stage_outputs("no_such_stage", REPO / "dvc.yaml") == []


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EROFS", "EACCES", "EDQUOT"])
def test_a_write_that_fails_names_its_file(tmp_path, monkeypatch, errno_name):
    """write() says why it failed, not where: the atomic writers name the file they were writing."""
    import errno
    import os

    from petlab.core import outputs

    code = getattr(errno, errno_name)

    def refuse(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(outputs.os, "fsync", refuse)
    target = tmp_path / "metrics" / "evaluate.json"
    with pytest.raises(OSError) as err:
        outputs.write_json(target, {"accuracy": 0.5})
    assert (err.value.errno, err.value.filename) == (code, str(target))
    assert list(tmp_path.rglob("*.json*")) == []  # no temporary file left behind


def test_a_folder_where_an_output_file_goes_is_named(tmp_path, capsys):
    from petlab.core.outputs import write_json
    from petlab.core.stage import run_stage

    target = tmp_path / "metrics.json"
    target.mkdir()
    with pytest.raises(SystemExit):
        run_stage("demo", lambda: write_json(target, {}), record_time=False)
    assert capsys.readouterr().err == f"demo: error: {target}: Is a directory (errno EISDIR)\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_write_inside_a_folder_being_built_names_the_folder(tmp_path):
    import errno

    from petlab.core.outputs import atomic_dir

    with pytest.raises(OSError) as err:
        with atomic_dir(tmp_path / "prepared"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.filename == str(tmp_path / "prepared") and list(tmp_path.iterdir()) == []
