"""Hostile inputs through the real stage commands: one line on stderr, exit code 1, no traceback, nothing written.

Every case fails before any heavy work, so no case needs trained models or even prepared data.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY_PARAMS, deep_update, run
from test_outputs import unwritable_folder


def light_project(root: Path, params: dict | str) -> Path:
    """The stage code and params in a folder: enough for `python -m stages.<stage>` (no git or DVC needed)."""
    root.mkdir(parents=True)
    for name in ("petlab", "stages"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "dvc.yaml", root / "dvc.yaml")
    if isinstance(params, dict):
        full = deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), yaml.safe_load(yaml.safe_dump(params)))
        params = yaml.safe_dump(full, sort_keys=False)
    (root / "params.yaml").write_text(params)
    return root


def pets_copy(fake_pets: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(fake_pets, tmp / "pets"))


def edit_annotation(root: Path, lineno: int, line: bytes) -> Path:
    ann = root / "annotations" / "trainval.txt"
    lines = ann.read_bytes().splitlines()
    lines[lineno - 1] = line
    ann.write_bytes(b"\n".join(lines) + b"\n")
    return root


def imagefolder_with_one_class_outside(tmp: Path, fake_pets: Path) -> Path:
    root = tmp / "folder"
    (root / "cat").mkdir(parents=True)
    (tmp / "elsewhere").mkdir()
    for i in range(4):
        shutil.copy(fake_pets / "images" / f"Abyssinian_{i + 1}.jpg", root / "cat" / f"{i}.jpg")
        shutil.copy(fake_pets / "images" / f"beagle_{i + 1}.jpg", tmp / "elsewhere" / f"{i}.jpg")
    (root / "dog").symlink_to(tmp / "elsewhere")
    return root


def params_with(**sections) -> dict:
    return deep_update(yaml.safe_load(yaml.safe_dump(TINY_PARAMS)), sections)


def params_text(fake_pets: Path, extra: str) -> str:
    text = yaml.safe_dump(params_with(data={"root": str(fake_pets)}), sort_keys=False)
    return text + extra


# One case or two of each class that can stop a stage (the unit tests hold the full matrices: each case here
# costs a Python start with torch). case -> (stage, make(tmp, fake_pets) -> (params, a setup for the project or None), the error after "<stage>: error: ")
CASES = {
    # 1. annotation files
    "annotation_not_utf8": (
        "prepare_oxford_pets",
        lambda tmp, pets: (
            params_with(data={"root": str(edit_annotation(pets_copy(pets, tmp), 2, b"Abyssinian_2 1 1 2 \xfe"))}),
            None,
        ),
        r".*trainval\.txt:2: not UTF-8 text",
    ),
    "annotation_image_id_with_a_folder": (
        "prepare_oxford_pets",
        lambda tmp, pets: (
            params_with(data={"root": str(edit_annotation(pets_copy(pets, tmp), 4, b"../x/Abyssinian_4 1 1 4"))}),
            None,
        ),
        r".*trainval\.txt:4: image id '\.\./x/Abyssinian_4' is not a plain file name",
    ),
    # 2. image folders
    "imagefolder_class_linked_from_outside": (
        "prepare_oxford_pets",
        lambda tmp, pets: (
            params_with(data={"dataset": "imagefolder", "root": str(imagefolder_with_one_class_outside(tmp, pets))}),
            None,
        ),
        r"data\.root = .*: 1 class subfolder\(s\); at least 2 are needed",
    ),
    # 5. parameters
    "val_fraction_too_small_for_the_classes": (
        "prepare_oxford_pets",
        lambda tmp, pets: (params_with(data={"root": str(pets), "val_fraction": 0.05}), None),
        r"data\.val_fraction = 0\.05 splits 48 train/val images",
    ),
    "lr_infinite": (
        "prepare_oxford_pets",
        lambda tmp, pets: (params_with(data={"root": str(pets)}, train_vit={"lr": float("inf")}), None),
        r"params\.yaml: train_vit\.lr must be a finite number, got inf",
    ),
    "duplicated_yaml_key": (
        "prepare_oxford_pets",
        lambda tmp, pets: (params_text(pets, "seed: 7\ndevice: cpu\nseed: 8\n"), None),
        r"params\.yaml:\d+: not valid YAML: duplicate key 'seed' \(first at line \d+\)",
    ),
    "typo_in_a_section_no_stage_reads": (
        "prepare_oxford_pets",
        lambda tmp, pets: (params_with(data={"root": str(pets)}, loader={"num_worker": 2}), None),
        r"params\.yaml: unknown parameter loader\.num_worker; did you mean loader\.num_workers\?",
    ),
    # 6. output faults
    "metrics_is_a_file": (
        "prepare_oxford_pets",
        lambda tmp, pets: (params_with(data={"root": str(pets)}), lambda project: (project / "metrics").write_text("")),
        r"metrics/timing/prepare_oxford_pets\.json: cannot be written: metrics is not a folder",
    ),
    "metrics_read_only": (
        "prepare_oxford_pets",
        lambda tmp, pets: (
            params_with(data={"root": str(pets)}),
            lambda project: (project / "metrics").symlink_to(unwritable_folder(tmp)),
        ),
        r"metrics/timing/prepare_oxford_pets\.json: cannot be written: metrics refuses new files",
    ),
}


def snapshot(project: Path) -> set[str]:
    return {
        p.relative_to(project).as_posix()
        for p in project.rglob("*")
        if "__pycache__" not in p.parts and not p.relative_to(project).as_posix().startswith("metrics/")
    }


@pytest.mark.parametrize("case", CASES)
def test_stage_refuses_in_one_line_and_writes_nothing(tmp_path, fake_pets, case):
    stage, make, message = CASES[case]
    params, setup = make(tmp_path, fake_pets)
    project = light_project(tmp_path / "project", params)
    if setup is not None:
        setup(project)
    before = snapshot(project)
    proc = run([sys.executable, "-m", f"stages.{stage}"], project, check=False, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert re_match(rf"{stage}: error: {message}", lines[0]), lines[0]
    assert snapshot(project) == before  # no prepared data, no half-built folder, no temporary file
    metrics = project / "metrics"
    assert not metrics.is_dir() or metrics.is_symlink() or not any(metrics.rglob("*"))


def re_match(pattern: str, line: str) -> bool:
    import re

    return re.match(pattern, line) is not None
