"""The whole pipeline under DVC: deterministic on the CPU, and a killed training stage finishes on the next repro.

Slow by nature (each `dvc repro` starts six Python processes): one reference run is shared.
"""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_PARAMS, deep_update, dvc, make_project
from test_runtime import start_as_in_a_terminal

from petlab.prepare.synthetic import make_fake_pets, write_awkward_image

# One worker runs this module's tests (pytest -n): they share the module's reference run.
pytestmark = pytest.mark.xdist_group("pipeline_robustness")

# Wall-clock measurements, different on every run by nature; everything else must be identical.
TIMED = ("metrics/timing/", "metrics/profile/", "plots/profile/")
COMPARED = ("metrics", "plots", "models", "data/oxford_pets", "data/features", "data/checks")
BAD_FILES = {"Bengal_2": "zero_bytes", "beagle_3": "truncated_jpeg"}


@pytest.fixture(scope="module")
def params(tmp_path_factory) -> dict:
    """TINY_PARAMS on a pets tree holding two unusable files (skipped, and listed) and a GIF (converted)."""
    root = make_fake_pets(
        tmp_path_factory.mktemp("messy") / "oxford-iiit-pet", num_classes=4, trainval_per_class=12, test_per_class=5
    )
    for image_id, kind in BAD_FILES.items():
        write_awkward_image(root / "images" / f"{image_id}.jpg", kind)
    write_awkward_image(root / "images" / "Abyssinian_4.jpg", "gif_named_jpg")
    # Two DataLoader workers, so Ctrl-C reaches worker processes too: none may print a traceback.
    overrides = {
        "data": {"root": str(root), "max_bad_fraction": 0.05},
        "train_cnn": {"epochs": 4},
        "loader": {"num_workers": 2},
    }
    return deep_update(yaml.safe_load(yaml.safe_dump(TINY_PARAMS)), overrides)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, params) -> Path:
    project = make_project(tmp_path_factory.mktemp("reference") / "project", params)
    # Up to evaluate: profile and report hold wall-clock measurements (the end-to-end test covers them).
    dvc(project, "repro", "evaluate")
    return project


def compared_files(project: Path) -> dict[str, bytes]:
    files = {}
    for top in COMPARED:
        for path in sorted((project / top).rglob("*")):
            rel = path.relative_to(project).as_posix()
            if path.is_file() and not rel.startswith(TIMED):
                files[rel] = path.read_bytes()
    return files


def assert_same_checkpoint(a: Path, b: Path) -> None:
    sa, sb = (torch.load(p, map_location="cpu", weights_only=True)["model_state"] for p in (a, b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), f"{b} differs from {a}"


def test_unusable_images_are_listed_by_name_in_the_sanity_metrics(reference):
    sanity = yaml.safe_load((reference / "plots" / "sanity" / "report.json").read_text())
    skipped = {Path(s["file"]).stem: s["reason"] for s in sanity["prepare"]["skipped"]}
    assert sorted(skipped) == sorted(BAD_FILES) and sanity["prepare"]["skipped_count"] == 2
    assert "empty file" in skipped["Bengal_2"] and "truncated" in skipped["beagle_3"]
    assert sanity["prepare"]["converted_to_rgb"]["GIF P"] == 1
    assert sanity["passed"]


def interrupt_repro(project: Path, sig: signal.Signals, *args: str) -> str:
    """Start `dvc repro ARGS`, signal its whole process group (as Ctrl-C does) during train_cnn's epoch 2."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1"}
    proc = start_as_in_a_terminal(
        [sys.executable, "-m", "dvc", "repro", *args],
        project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines, signalled = [], False
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("train_cnn: epoch 1/"):
            signalled = proc.poll() is None
            os.killpg(proc.pid, sig)
            break
    lines.append(proc.stdout.read())
    returncode = proc.wait(timeout=60)
    assert signalled, "".join(lines)
    assert returncode != 0, "".join(lines)
    return "".join(lines)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_an_interrupted_training_stage_resumes_on_the_next_repro(reference, params, tmp_path, sig):
    """Stopped during epoch 2, train_cnn continues after epoch 1, and every output is the reference's, byte for byte.
    Ctrl-C (SIGINT) stops a rerun of train_cnn in a copy of the reference; SIGKILL stops a whole run from nothing in
    a new project, so every other stage is compared across two runs as well: clean runs repeat. (Other params or a
    truncated checkpoint start from scratch in one line: tests/test_resume.py, on the same code.)"""
    assert not (reference / "resume").exists()  # a finished stage leaves no checkpoint
    project = tmp_path / "project"
    if sig == signal.SIGINT:
        shutil.copytree(reference, project, symlinks=True)
        output = interrupt_repro(project, sig, "--force", "--single-item", "train_cnn")
    else:
        make_project(project, params)
        output = interrupt_repro(project, sig, "evaluate")  # everything but profile: its outputs are all timings
    assert "Traceback" not in output and "Error in atexit" not in output
    if sig == signal.SIGINT:  # our one line, then DVC's one line
        assert "train_cnn: interrupted; no output was half-written, re-run `dvc repro` to finish\n" in output
        assert output.rstrip().splitlines()[-1].startswith("ERROR: failed to reproduce 'train_cnn'")
    assert not (project / "models" / "cnn.pt").exists()  # removed by DVC before the run, or never made
    checkpoint = project / "resume" / "train_cnn.pt"
    assert checkpoint.is_file() and "resume/" in (project / ".gitignore").read_text()
    assert (
        subprocess.run(["git", "status", "--porcelain", "resume"], cwd=project, capture_output=True, text=True).stdout
        == ""
    )  # never in git

    result = dvc(project, "repro", "evaluate")
    assert "Running stage 'train_cnn'" in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert "train_cnn: resumed after epoch 1 (resume/train_cnn.pt)\n" in result.stdout
    assert "starting from scratch" not in result.stdout
    assert "train_cnn: epoch 1/" not in result.stdout and "train_cnn: epoch 2/" in result.stdout
    assert not checkpoint.exists() and not checkpoint.parent.exists()  # removed once the outputs are written
    assert not list(project.rglob(".*.tmp"))
    if sig == signal.SIGINT:  # the retrained checkpoint has the reference's hash: nothing downstream to redo
        assert "Stage 'evaluate@cnn' didn't change, skipping" in result.stdout
    first, second = compared_files(reference), compared_files(project)
    assert "models/cnn.pt" in first and "metrics/evaluate/vit.json" in first and "data/features/vit.pt" in first
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []
    for name in ("models/cnn.pt", "models/vit.pt"):
        assert_same_checkpoint(reference / name, project / name)
