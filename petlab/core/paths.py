"""Where the pipeline's files live, relative to the repository root: each path named here once, for the stage that
writes it and every one that reads it. dvc.yaml and study/pipeline.yaml declare the same paths (a stage's outs and
deps); tests/test_paths.py checks that each one they declare is a path of this module.

The models are named as their stages are (cnn, vit): the probe's files keep `vit`, the name its stage, params and
metrics keys have always had (docs/outputs.md).
"""

from __future__ import annotations

from pathlib import Path

MODELS = ("cnn", "vit")  # the two models, as the stages that take one (evaluate@cnn, profile@vit, ...) name them

# prepare_oxford_pets, sanity_data, backbone_weights
DATA = Path("data/oxford_pets")  # the prepared splits (petlab.prepare.splits draws the layout)
SANITY_PASSED = Path("data/checks/sanity_passed.json")  # what the training stages depend on
SANITY_METRICS = Path("metrics/sanity.json")  # the scalars worth comparing
SANITY_PLOTS = Path("plots/sanity")
SANITY_LOGS = Path("runs/sanity")
BACKBONE = Path("models/backbone.safetensors")  # the probe's frozen backbone's weights
BACKBONE_METRICS = Path("metrics/backbone.json")
LOCAL_WEIGHTS = Path("weights")  # a dep of backbone_weights, so DVC sees a local weights file there change

# train_cnn, train_vit
FEATURES = Path("data/features/vit.pt")  # the frozen backbone's features of every split, cached by train_vit
FIT_TIMES = Path("metrics/timing/train_vit_fit.json")  # the feature cache and the head's fit, in wall seconds


def checkpoint(model: str) -> Path:
    return Path(f"models/{model}.pt")


def train_metrics(model: str) -> Path:
    return Path(f"metrics/train_{model}.json")


def train_plots(model: str) -> Path:
    """history.csv per epoch, run.json (the run in words); the probe's c_sweep.csv per C."""
    return Path(f"plots/train_{model}")


def epoch_times(model: str) -> Path:
    """Wall times per epoch, apart from the deterministic curves."""
    return Path(f"metrics/timing/train_{model}_epochs.csv")


def train_logs(model: str) -> Path:
    """TensorBoard's event files."""
    return Path(f"runs/{model}")


# evaluate@MODEL, profile@MODEL, robustness@MODEL: one file per model in each folder (<model>.json)
EVALUATE_METRICS = Path("metrics/evaluate")
EVALUATE_PLOTS = Path("plots/evaluate")  # per-class, confusion, reliability and predictions files per model
PROFILE_METRICS = Path("metrics/profile")
PROFILE_PLOTS = Path("plots/profile")  # top_ops_<model>.json: lists, so not beside the metrics
PROFILE_TRACES = Path("runs/profile")  # one TensorBoard trace folder per model
ROBUSTNESS_METRICS = Path("metrics/robustness")
ROBUSTNESS_PLOTS = Path("plots/robustness")

# report
COMPARISON = Path("metrics/comparison.json")  # probe - CNN with 95% intervals: the comparison as metrics
REPORTS = Path("reports")  # report.md, study.md and their figures/

# every stage
TIMING = Path("metrics/timing")  # <stage>.json: each stage's wall time, apart from the deterministic outputs
RESUME = Path("resume")  # <stage>.pt: a training stage's state after its last finished epoch

# the study (study/pipeline.yaml)
STUDY_PIPELINE = Path("study/dvc.yaml")  # the copy DVC runs: a study the user adds (docs/study.md, "Adding the study")
STUDY_TEMPLATE = Path("study/pipeline.yaml")  # the study's pipeline as this project ships it
STUDY_CELLS = Path("study/cells")  # one JSON per cell; features.json: the shared extraction
STUDY_TIMING = Path("study/timing")  # each cell's wall seconds and the machine it ran on: cached like the cells
STUDY_FEATURES = Path("data/study/features.pt")  # every train, val and test image through the frozen backbone, once
STUDY_METRICS = Path("metrics/study.json")
