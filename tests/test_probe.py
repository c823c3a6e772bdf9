"""The linear probe's default head: L-BFGS logistic regression with C chosen on val, against scikit-learn itself."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from petlab.core.errors import PipelineError
from petlab.core.metrics import classification_metrics
from petlab.core.params import TrainViTParams
from petlab.probe.logistic import SWEEP_COLUMNS, fit_logistic_probe
from petlab.train.state import selection_key

DEFAULT_C_GRID = TrainViTParams().c_grid


def digits_splits(classes: int = 10) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's real handwritten digits as 64 features in [0, 1], split 60/20/20 stratified and seeded."""
    digits = load_digits(n_class=classes)
    x, y = digits.data.astype(np.float32) / 16, digits.target
    train, rest = train_test_split(np.arange(len(y)), test_size=0.4, stratify=y, random_state=0)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=0)
    return {
        name: (torch.from_numpy(x[i]), torch.from_numpy(y[i]))
        for name, i in (("train", train), ("val", val), ("test", test))
    }


def reference_probe(splits: dict, c_grid: list[float]) -> LogisticRegression:
    """The plain protocol, written independently: one LogisticRegression per C, the best val accuracy kept."""
    # float64, as the pipeline fits: where L-BFGS stops at max_iter (large C on raw features), where it stops
    # depends on the dtype, and float32 input stops elsewhere.
    (x_train, y_train), (x_val, y_val) = [(x.double().numpy(), y.numpy()) for x, y in (splits["train"], splits["val"])]
    # Unconverged fits at the largest C are expected on raw features; the pipeline records them per C.
    with threadpool_limits(limits=1), warnings.catch_warnings():  # one thread, as the pipeline: busy cores
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = [LogisticRegression(C=c, max_iter=1000).fit(x_train, y_train) for c in c_grid]
    return max(fitted, key=lambda model: model.score(x_val, y_val))


def test_probe_matches_scikit_learn_on_real_digits():
    splits = digits_splits()
    probe = fit_logistic_probe(splits["train"], splits["val"], 10, DEFAULT_C_GRID, max_iter=1000)
    head = torch.nn.Linear(64, 10)
    head.load_state_dict(probe.head_state)
    x_test, y_test = splits["test"]
    with torch.no_grad():
        ours = classification_metrics(head(x_test), y_test, 10)
    reference = reference_probe(splits, DEFAULT_C_GRID)
    predicted = reference.predict(x_test.double().numpy())
    theirs = {"accuracy": accuracy_score(y_test, predicted), "macro_f1": f1_score(y_test, predicted, average="macro")}
    assert theirs["accuracy"] > 0.9  # real features, a real fit: chance is 0.1
    assert abs(ours["accuracy"] - theirs["accuracy"]) <= 0.01, (ours, theirs, probe.c, reference.C)
    assert abs(ours["macro_f1"] - theirs["macro_f1"]) <= 0.01, (ours, theirs, probe.c, reference.C)

    # The sweep records every C, and the kept one is the best of it by the pipeline's selection rule.
    assert [row["c"] for row in probe.sweep] == sorted(DEFAULT_C_GRID) and set(probe.sweep[0]) == set(SWEEP_COLUMNS)
    kept = max(probe.sweep, key=lambda row: selection_key({"macro_f1": row["val_macro_f1"], "loss": row["val_loss"]}))
    assert kept["c"] == probe.c == probe.selection["selected_c"] and kept["converged"]
    assert probe.best_val["macro_f1"] == kept["val_macro_f1"]


@pytest.mark.parametrize("classes", [2, 4])
def test_head_gives_scikit_learns_probabilities(classes):
    """The nn.Linear the pipeline keeps is the fitted model itself, the two-class case (one row in sklearn) too."""
    splits = digits_splits(classes)
    probe = fit_logistic_probe(splits["train"], splits["val"], classes, [0.1], max_iter=1000)
    head = torch.nn.Linear(64, classes)
    head.load_state_dict(probe.head_state)
    x_test = splits["test"][0]
    with threadpool_limits(limits=1):
        reference = LogisticRegression(C=0.1, max_iter=1000).fit(*[t.numpy() for t in splits["train"]])
    with torch.no_grad():
        probabilities = head(x_test).softmax(1).numpy()
    np.testing.assert_allclose(probabilities, reference.predict_proba(x_test.double().numpy()), atol=1e-3)


def test_probe_is_deterministic():
    splits = digits_splits(4)
    runs = [fit_logistic_probe(splits["train"], splits["val"], 4, [0.01, 1.0], max_iter=1000) for _ in range(2)]
    assert runs[0].sweep == runs[1].sweep
    assert all(torch.equal(runs[0].head_state[k], runs[1].head_state[k]) for k in runs[0].head_state)


def test_probe_reports_a_class_missing_from_train():
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1])
    with pytest.raises(PipelineError, match=r"no training sample of class \[2\]"):
        fit_logistic_probe((x, y), (x, y), 3, [1.0], max_iter=10)


def test_probe_warns_when_lbfgs_stops_before_converging(capsys):
    splits = digits_splits(4)
    probe = fit_logistic_probe(splits["train"], splits["val"], 4, [100.0], max_iter=2)
    assert probe.sweep[0]["converged"] is False and probe.selection["converged"] is False
    assert "raise train_vit.max_iter" in capsys.readouterr().out


def check_probe(project: Path, max_gap: float | None = None) -> None:
    """After a `dvc repro` with the default solver: metrics, sweep, checkpoint and evaluate agree on the kept C;
    with `max_gap`, its test scores are within that of scikit-learn's on the same cached features."""
    metrics = json.loads((project / "metrics/train_vit.json").read_text())
    checkpoint = torch.load(project / "models/vit.pt", weights_only=True)
    c_grid = [float(c) for c in checkpoint["selection"]["c_grid"].split()]
    solver = json.loads((project / "plots/train_vit/run.json").read_text())["solver"]
    assert solver == "lbfgs" and c_grid == sorted(DEFAULT_C_GRID) and "c_grid" not in metrics
    with open(project / "plots/train_vit/c_sweep.csv", newline="") as f:
        # (val_top5_accuracy is empty with 5 classes or fewer: no top-5 there)
        sweep = [{k: float(v) for k, v in row.items() if k != "converged" and v != ""} for row in csv.DictReader(f)]
    with open(project / "plots/train_vit/history.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []  # no epochs: the header only
    assert [row["c"] for row in sweep] == c_grid
    kept = max(sweep, key=lambda row: selection_key({"macro_f1": row["val_macro_f1"], "loss": row["val_loss"]}))
    assert kept["c"] == metrics["selected_c"] and kept["val_macro_f1"] == metrics["val_macro_f1"]
    assert checkpoint["selection"]["selected_c"] == metrics["selected_c"] and checkpoint["epoch"] is None
    evaluation = json.loads((project / "metrics/evaluate/vit.json").read_text())["vit"]
    for key in ("accuracy", "macro_f1"):  # the checkpoint scores on val what the sweep recorded for its C
        assert evaluation["val"][key] == pytest.approx(metrics[f"val_{key}"], abs=1e-6)
    # and on its cached train features the train accuracy the sweep recorded
    assert evaluation["train"]["accuracy"] == pytest.approx(kept["train_accuracy"], abs=1e-6)
    if max_gap is None:
        return
    cache = torch.load(project / "data/features/vit.pt", weights_only=True)
    splits = {split: (cache[f"{split}/features"], cache[f"{split}/labels"]) for split in ("train", "val", "test")}
    reference = reference_probe(splits, c_grid)
    x_test, y_test = splits["test"]
    predicted = reference.predict(x_test.double().numpy())
    theirs = {"accuracy": accuracy_score(y_test, predicted), "macro_f1": f1_score(y_test, predicted, average="macro")}
    for key in ("accuracy", "macro_f1"):
        assert abs(evaluation["test"][key] - theirs[key]) <= max_gap, (evaluation["test"], theirs, reference.C)


def test_a_kept_c_at_either_end_of_the_grid_is_flagged(capsys):
    splits = digits_splits()
    inside = fit_logistic_probe(splits["train"], splits["val"], 10, DEFAULT_C_GRID, max_iter=1000)
    assert inside.c == 3.0 and inside.edge is None and inside.selection["c_at_grid_edge"] is False
    capsys.readouterr()
    too_strong = fit_logistic_probe(splits["train"], splits["val"], 10, [0.0001, 0.001], max_iter=1000)
    assert too_strong.c == 0.001 and too_strong.edge == "largest" and too_strong.selection["c_at_grid_edge"]
    assert "WARNING: the kept C = 0.001 is the largest of train_vit.c_grid" in capsys.readouterr().out
    assert fit_logistic_probe(splits["train"], splits["val"], 10, [0.001], max_iter=1000).edge is None


def test_a_c_of_many_digits_is_kept_exactly():
    splits = digits_splits()
    fitted = fit_logistic_probe(splits["train"], splits["val"], 10, [0.0012345678, 0.0001234567], max_iter=1000)
    assert [row["c"] for row in fitted.sweep] == [0.0001234567, 0.0012345678]
    assert fitted.c == 0.0012345678 and fitted.edge == "largest" and fitted.selection["selected_c"] == fitted.c
