"""Calibration numbers against independent computations; temperature scaling where it must help, refused where
it would harm; and the ECE's calibrated reference at its stated level, by simulation."""

import numpy as np
import pytest
from sklearn.metrics import log_loss

from petlab.core.calibration import (
    MIN_TEMPERATURE_IMAGES,
    bin_edges,
    brier,
    calibration_reference,
    calibration_summary,
    ece,
    ece_bins,
    ece_rows,
    fit_temperature,
    nll,
    per_image_scores,
    reliability,
    softmax,
)


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


def test_per_image_scores_average_to_the_splits_nll_and_brier():
    logits, labels = overconfident(n=300)
    per_nll, per_brier = per_image_scores(logits, labels)
    assert per_nll.mean() == pytest.approx(nll(logits, labels)) and per_brier.mean() == pytest.approx(
        brier(softmax(logits), labels)
    )


def test_temperature_scaling_is_cross_fitted_on_test_and_lowers_an_overconfident_models_nll():
    test_logits, test_labels = overconfident(seed=2)
    summary = calibration_summary(test_logits, test_labels, seed=0)
    assert summary["scaling"] == "cross-fitted on test halves" and len(summary["temperatures"]) == 2
    assert min(summary["temperatures"]) > 1.5  # the model is too sure: its logits are softened
    assert summary["test_scaled"]["nll"] < summary["test"]["nll"] - 0.5 and not summary["scaling_worsened_nll"]
    assert summary["test_scaled"]["ece"] < summary["test"]["ece"] and not summary["temperature_at_bound"]
    t = summary["temperature"]
    assert (softmax(test_logits, t).argmax(1) == test_logits.argmax(1)).all()
    # A calibrated model (logits of the true probabilities, labels drawn from them) is left about as it is.
    rng = np.random.default_rng(3)
    true_logits = rng.normal(0, 2, (4000, 4))
    drawn = np.array([rng.choice(4, p=p) for p in softmax(true_logits)])
    assert fit_temperature(true_logits, drawn) == pytest.approx(1.0, abs=0.1)


def test_no_temperature_is_fitted_on_fewer_than_the_minimum_a_half():
    logits, labels = overconfident(n=2 * MIN_TEMPERATURE_IMAGES - 1)
    summary = calibration_summary(logits, labels)
    assert summary["temperature"] is None and summary["test_scaled"] is None
    assert summary["scaling"].startswith("too few images")
    assert calibration_summary(*overconfident(n=2 * MIN_TEMPERATURE_IMAGES))["temperature"] is not None


@pytest.mark.parametrize("classes", [6, 37])
def test_a_cross_fitted_temperature_at_the_minimum_count_does_not_make_nll_worse(classes):
    """Models like the study's (a mildly over- or under-confident softmax, 6 or 37 classes) on the smallest split
    a temperature is fitted on: in 100 fits scaling never makes test NLL more than 5% worse, and more than 1% worse
    in at most 10% (the models already calibrated, where a fitted T can only add noise). On 12 images it made the
    mean NLL 2.7 times worse."""
    rng = np.random.default_rng(classes)
    ratios = []
    for trial in range(100):
        n = 2 * MIN_TEMPERATURE_IMAGES
        true_logits = rng.normal(0, 2.5, (n, classes))
        labels = np.array([rng.choice(classes, p=p) for p in softmax(true_logits)])
        shown = true_logits * rng.uniform(0.7, 1.5)  # the model's own miscalibration
        summary = calibration_summary(shown, labels, seed=trial)
        ratios.append(summary["test_scaled"]["nll"] / summary["test"]["nll"])
        assert summary["scaling_worsened_nll"] == (ratios[-1] > 1)
    assert max(ratios) < 1.05 and np.mean(np.array(ratios) > 1.01) <= 0.10, sorted(ratios)[-10:]


def calibrated_draw(rng, n: int, miscalibration: float):
    """Confidences and correctness of a model whose accuracy at confidence c is c - miscalibration (its true ECE
    is `miscalibration` exactly)."""
    confidence = rng.uniform(0.4, 0.99, n)
    return confidence, rng.random(n) < confidence - miscalibration


@pytest.mark.parametrize("images", [600, 3669])
def test_the_ece_reference_holds_its_level_and_debiases_ece(images):
    """For a perfectly calibrated model the plug-in ECE is biased upward (about 5 points on 600 images), the
    calibrated reference calls it miscalibrated in at most 5% of 200 simulated splits (its stated level, with
    Monte Carlo slack: 7%), and the debiased ECE averages under a point; a model 9 points overconfident is called
    miscalibrated in at least 85%."""
    rng = np.random.default_rng(images)
    plug_in, debiased, rejected = [], [], 0
    for trial in range(200):
        confidence, correct = calibrated_draw(rng, images, 0.0)
        value = ece_rows(confidence[None], correct[None], ece_bins(images))[0]
        reference = calibration_reference(confidence, value, seed=trial, draws=99)
        plug_in.append(value)
        debiased.append(reference["ece_debiased"])
        rejected += reference["ece_p"] < 0.05
    assert rejected / 200 <= 0.07, rejected
    assert np.mean(plug_in) > 0.015 and np.mean(debiased) < 0.01
    detected = 0
    for trial in range(40):
        confidence, correct = calibrated_draw(rng, images, 0.09)
        value = ece_rows(confidence[None], correct[None], ece_bins(images))[0]
        detected += calibration_reference(confidence, value, seed=trial, draws=99)["ece_p"] < 0.05
    assert detected >= 34, detected  # 85%
