"""petlab/core/paths.py names every path of the pipeline once: each path the dvc files declare is one of its
paths (or inside one of its folders), and no stage spells a path of its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from project_imports import REPO, dvc_files, repo_relative

from petlab.core import paths

PIPELINE_FOLDERS = ("data", "models", "metrics", "plots", "runs", "reports", "resume", "study")


def named_paths() -> set[str]:
    found = {str(v) for v in vars(paths).values() if isinstance(v, Path)}
    for fn in (paths.checkpoint, paths.train_metrics, paths.train_plots, paths.epoch_times, paths.train_logs):
        found |= {str(fn(model)) for model in paths.MODELS}
    return found


def declared_paths(dvc_file: Path) -> list[str]:
    """The data paths (not code, not params) a dvc file declares as deps or outs, templates filled with a model."""
    spec = yaml.safe_load(dvc_file.read_text())
    found = []
    for stage in spec["stages"].values():
        body = stage.get("do", stage)
        wdir = dvc_file.parent / body.get("wdir", ".")
        for entry in [*(body.get("deps") or []), *(body.get("outs") or []), *(body.get("metrics") or [])]:
            name = next(iter(entry)) if isinstance(entry, dict) else entry
            name = repo_relative(re.sub(r"\$\{[^}]*\}", "cnn", name), wdir)
            if name.split("/")[0] in PIPELINE_FOLDERS:
                found.append(name)
    return found


def is_named(path: str, named: set[str]) -> bool:
    return any(path == n or path.startswith(n + "/") or Path(path).parent.as_posix() == n for n in named)


@pytest.mark.parametrize("dvc_file", dvc_files(), ids=lambda f: f.relative_to(REPO).as_posix())
def test_every_path_a_dvc_file_declares_is_named_in_core_paths(dvc_file):
    named = named_paths()
    declared = declared_paths(dvc_file)
    assert declared
    assert [p for p in declared if not is_named(p, named)] == []


def test_a_path_named_nowhere_is_found():
    assert not is_named("metrics/elsewhere.json", named_paths())
    assert is_named("plots/evaluate/confusion_cnn.csv", named_paths())


def path_literals(source: str) -> list[str]:
    """String constants of a module (docstrings left out) that spell a path in one of the pipeline's folders."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    pattern = re.compile(rf"^({'|'.join(PIPELINE_FOLDERS)})/")
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
        if pattern.match(node.value)
    ]


@pytest.mark.parametrize("stage", sorted((REPO / "stages").glob("*.py")), ids=lambda p: p.name)
def test_no_stage_spells_a_path_of_its_own(stage):
    assert path_literals(stage.read_text()) == []


def test_a_stage_spelling_a_path_is_found():
    assert path_literals('"""Writes metrics/x.json."""\nOUT = Path("metrics/x.json")\n') == ["metrics/x.json"]
