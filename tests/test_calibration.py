"""Calibration numbers against independent computations, and temperature scaling where it must help."""

import numpy as np
import pytest
from sklearn.metrics import log_loss

from petlab.calibration import (bin_edges, brier, calibration_summary, ece, ece_bins, ece_interval, ece_rows,
                                fit_temperature, nll, reliability, softmax)


def overconfident(n: int = 600, classes: int = 5, accuracy: float = 0.7, scale: float = 8.0, seed: int = 0):
    """Logits that put nearly all mass on the predicted class while it is right only `accuracy` of the time."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    right = rng.random(n) < accuracy
    preds = np.where(right, labels, (labels + rng.integers(1, classes, n)) % classes)
    logits = rng.normal(0, 0.5, (n, classes))
    logits[np.arange(n), preds] += scale
    return logits, labels


def test_nll_and_brier_match_scikit_learn_and_the_definition():
    logits, labels = overconfident()
    probs = softmax(logits)
    assert nll(logits, labels) == pytest.approx(log_loss(labels, probs, labels=range(5)), rel=1e-9)
    onehot = np.eye(5)[labels]
    assert brier(probs, labels) == pytest.approx(np.mean(((probs - onehot) ** 2).sum(1)))
    uniform = np.zeros((4, 3))
    assert nll(uniform, np.array([0, 1, 2, 0])) == pytest.approx(np.log(3))


def test_ece_is_the_weighted_gap_of_equal_mass_bins_computed_directly():
    logits, labels = overconfident(n=203)  # not a multiple of the bins: unequal by at most one image
    probs = softmax(logits)
    bins = ece_bins(len(labels))
    assert bins == 15
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    order = np.argsort(confidence, kind="stable")
    direct = 0.0
    for chunk in np.array_split(order, bins):  # a direct binning, written again here
        direct += len(chunk) / len(labels) * abs(correct[chunk].mean() - confidence[chunk].mean())
    assert ece(probs, labels) == pytest.approx(direct)
    rows = reliability(probs, labels)
    assert sum(r["images"] for r in rows) == 203 and {r["images"] for r in rows} <= {13, 14}
    assert ece_rows(confidence[None, :], correct[None, :], bins)[0] == pytest.approx(direct)
    # On a small split each bin keeps at least 10 images; a perfectly calibrated toy case has ECE 0.
    assert ece_bins(45) == 4 and ece_bins(5) == 1 and list(bin_edges(10, 3)) == [0, 4, 7, 10]
    half = np.array([[0.5, 0.5]] * 4)
    assert ece(half, np.array([0, 1, 0, 1])) == pytest.approx(0.0)


def test_temperature_scaling_lowers_an_overconfident_models_nll_on_val_without_changing_its_predictions():
    val_logits, val_labels = overconfident(seed=1)
    test_logits, test_labels = overconfident(seed=2)
    t = fit_temperature(val_logits, val_labels)
    assert t > 1.5  # the model is too sure: its logits are softened
    assert nll(val_logits, val_labels, t) < nll(val_logits, val_labels) - 0.5
    summary = calibration_summary(val_logits, val_labels, test_logits, test_labels, resamples=300, seed=0)
    assert summary["test_scaled"]["nll"] < summary["test"]["nll"]
    assert summary["test_scaled"]["ece"] < summary["test"]["ece"]
    assert (softmax(test_logits, t).argmax(1) == test_logits.argmax(1)).all()
    low, high = summary["test"]["ece_low"], summary["test"]["ece_high"]
    assert low <= summary["test"]["ece"] <= high and high - low < 0.1
    # A calibrated model (logits of the true probabilities, labels drawn from them) is left about as it is.
    rng = np.random.default_rng(3)
    true_logits = rng.normal(0, 2, (4000, 4))
    drawn = np.array([rng.choice(4, p=p) for p in softmax(true_logits)])
    assert fit_temperature(true_logits, drawn) == pytest.approx(1.0, abs=0.1)


def test_the_ece_interval_is_seeded_and_narrows_with_more_images():
    small, small_labels = overconfident(n=100)
    large, large_labels = overconfident(n=2000)
    a = ece_interval(softmax(small), small_labels, 400, seed=5)
    assert a == ece_interval(softmax(small), small_labels, 400, seed=5)
    b = ece_interval(softmax(large), large_labels, 400, seed=5)
    assert (b[1] - b[0]) < (a[1] - a[0])
