"""Whether a model's confidence means something: NLL, Brier score, expected calibration error, temperature scaling.

Pure functions of logits (or probabilities) and labels, computed with numpy and scipy, for the evaluate stage and
the study's cells alike (docs/report.md says what each number can and cannot show).

- NLL: the mean of -log p(label), natural log; 0 for a model sure and right, log(classes) for a uniform guess.
- Brier score: the mean over images of the squared distance between the predicted distribution and the one-hot
  label, summed over classes (Brier, 1950; 0 to 2).
- ECE: images sorted by their top confidence into equal-mass bins (as many images in each, Nixon et al. 2019,
  which keeps every bin's accuracy estimable on a small split), and the bins' |accuracy - mean confidence|
  averaged with the bins' shares as weights (Guo et al. 2017). Equal-width bins leave most of them empty for a
  confident model.
- ECE is biased upward: even a perfectly calibrated model scores above 0 on a finite split (about 5 points on 600
  images). `calibration_reference` draws that bias: each image's label is drawn as right with the model's own
  confidence (a model calibrated by construction, with the same confidences; Broecker and Smith 2007), and the
  ECE of those draws is the reference a real ECE is read against. The debiased ECE is the plug-in minus their
  mean (floored at 0); the test of calibration is where the real ECE falls among them. A percentile bootstrap
  interval of ECE does not cover the true value (0% coverage for a calibrated model on 600 images), so none is
  quoted; comparisons of calibration use the proper scores, NLL and Brier, whose per-image means have paired
  intervals that cover.
- Temperature scaling: one parameter T per model, fitted by minimising NLL, which divides the logits: it changes
  confidence, never the predicted class (Guo et al. 2017). It is fitted on data that chose nothing else: the test
  split, cross-fitted (each half's T is fitted on the other half, so every image is scored by a T that never saw
  it), and only from MIN_TEMPERATURE_IMAGES images a half. The selection split chose the epoch, C and recipe, so
  a T fitted there would be fitted on data already used, and on 12 such images it made test NLL worse in a third
  of simulated fits.
"""

from __future__ import annotations

import math

import numpy as np

ECE_BINS = 15  # at most; fewer on a small split, so that each bin holds at least MIN_BIN_IMAGES
MIN_BIN_IMAGES = 10
TEMPERATURE_RANGE = (0.05, 20.0)  # log-spaced search bounds: beyond them a model's confidence is degenerate anyway
# Images a temperature is fitted on, at least: on 12 a fitted T made test NLL worse than none in 27-46% of simulated
# fits, on 30 in 5-12%, from 150 never (tests/test_calibration.py repeats the check at this count).
MIN_TEMPERATURE_IMAGES = 150
REFERENCE_DRAWS = 200  # calibrated draws behind the ECE reference and its test


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    labels = np.asarray(labels)
    return float(-log_softmax(logits, temperature)[np.arange(len(labels)), labels].mean())


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    labels = np.asarray(labels)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(((probs - onehot) ** 2).sum(1).mean())


def ece_bins(n: int) -> int:
    """The number of equal-mass bins for a split of n images: ECE_BINS, fewer where bins would hold under
    MIN_BIN_IMAGES, at least 1."""
    return max(1, min(ECE_BINS, n // MIN_BIN_IMAGES))


def bin_edges(n: int, bins: int) -> np.ndarray:
    """Start indices of `bins` equal-mass bins over n sorted images (np.array_split's split points), and n."""
    return np.concatenate([[0], np.cumsum([len(part) for part in np.array_split(np.arange(n), bins)])])


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int | None = None) -> list[dict]:
    """The equal-mass bins of the reliability diagram: per bin its images, mean confidence and accuracy."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == np.asarray(labels)
    order = np.argsort(confidence, kind="stable")
    edges = bin_edges(len(order), bins or ece_bins(len(order)))
    rows = []
    for start, stop in zip(edges[:-1], edges[1:]):
        part = order[start:stop]
        rows.append(
            {
                "images": int(len(part)),
                "confidence": float(confidence[part].mean()),
                "accuracy": float(correct[part].mean()),
            }
        )
    return rows


def ece(probs: np.ndarray, labels: np.ndarray, bins: int | None = None) -> float:
    rows = reliability(probs, labels, bins)
    n = sum(r["images"] for r in rows)
    return float(sum(r["images"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows))


def ece_rows(confidence: np.ndarray, correct: np.ndarray, bins: int) -> np.ndarray:
    """ECE of each row of (resamples, images) confidences and correctness, with equal-mass bins: for bootstraps."""
    order = np.argsort(confidence, axis=1, kind="stable")
    conf = np.take_along_axis(confidence, order, 1)
    hit = np.take_along_axis(correct, order, 1).astype(np.float64)
    edges = bin_edges(confidence.shape[1], bins)
    total = np.zeros(len(confidence))
    for start, stop in zip(edges[:-1], edges[1:]):
        total += (stop - start) * np.abs(hit[:, start:stop].mean(1) - conf[:, start:stop].mean(1))
    return total / confidence.shape[1]


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the NLL of logits / T (bounded, log-spaced search: NLL is smooth in log T)."""
    from scipy.optimize import minimize_scalar

    low, high = (math.log(v) for v in TEMPERATURE_RANGE)
    found = minimize_scalar(
        lambda log_t: nll(logits, labels, math.exp(log_t)),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(found.x))


def calibration_metrics(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> dict[str, float]:
    """NLL, Brier, ECE (and the bins it used) of logits / temperature."""
    probs = softmax(logits, temperature)
    return {
        "nll": round(nll(logits, labels, temperature), 6),
        "brier": round(brier(probs, labels), 6),
        "ece": round(ece(probs, labels), 6),
        "ece_bins": ece_bins(len(labels)),
    }


def per_image_scores(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's NLL and Brier score: their means are the split's NLL and Brier, so paired intervals of a
    difference between models follow from the per-image values as for accuracy."""
    labels = np.asarray(labels)
    rows = np.arange(len(labels))
    probs = softmax(logits)
    onehot_sq = (probs**2).sum(1) - 2 * probs[rows, labels] + 1
    return -log_softmax(logits)[rows, labels], onehot_sq


def calibration_reference(
    confidence: np.ndarray, ece_value: float, seed: int, draws: int = REFERENCE_DRAWS
) -> dict[str, float]:
    """What ECE a perfectly calibrated model with these confidences scores on this many images: the mean over
    `draws` label draws (each image right with probability its confidence), the debiased ECE (ece_value minus that
    mean, at least 0) and the share of draws at or above ece_value (the p-value of "calibrated", with the +1 of a
    Monte Carlo test, so that it holds its level exactly)."""
    rng = np.random.default_rng(seed)
    drawn = np.concatenate(
        [
            ece_rows(
                np.broadcast_to(confidence, (k, len(confidence))),
                rng.random((k, len(confidence))) < confidence,
                ece_bins(len(confidence)),
            )
            for k in np.diff(np.r_[0:draws:200, draws])
        ]
    )
    return {
        "ece_reference": round(float(drawn.mean()), 6),
        "ece_debiased": round(max(0.0, ece_value - float(drawn.mean())), 6),
        "ece_p": round(float((1 + (drawn >= ece_value).sum()) / (1 + draws)), 6),
    }


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of n images, drawn by a seeded permutation."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def cross_fitted_temperature(logits: np.ndarray, labels: np.ndarray, seed: int) -> dict | None:
    """Temperature scaling cross-fitted on one split: T fitted on each half, applied to the other. Returns each
    half's T, the log-probabilities every image gets from the T that did not see it, and whether a T sits at its
    search bound; None where a half would hold under MIN_TEMPERATURE_IMAGES images."""
    labels = np.asarray(labels)
    if len(labels) // 2 < MIN_TEMPERATURE_IMAGES:
        return None
    first, second = halves(len(labels), seed)
    scaled = np.empty((len(labels), logits.shape[1]))
    temperatures = []
    for fit_on, apply_to in ((first, second), (second, first)):
        t = fit_temperature(logits[fit_on], labels[fit_on])
        temperatures.append(t)
        scaled[apply_to] = log_softmax(logits[apply_to], t)
    at_bound = any(min(abs(math.log(t / b)) for b in TEMPERATURE_RANGE) < 1e-3 for t in temperatures)
    return {"temperatures": temperatures, "log_probs": scaled, "at_bound": at_bound}


def calibration_summary(test_logits: np.ndarray, test_labels: np.ndarray, seed: int = 0) -> dict:
    """Test calibration as trained, with ECE's calibrated reference (calibration_reference), and after temperature
    scaling cross-fitted on the test split (cross_fitted_temperature): `temperature` the geometric mean of the two
    halves' T, `scaling_worsened_nll` where the scaled NLL is above the unscaled one (the fit did harm), and
    `test_scaled` null with `scaling` "too few images" where a half would hold under MIN_TEMPERATURE_IMAGES."""
    labels = np.asarray(test_labels)
    as_trained = calibration_metrics(test_logits, labels)
    as_trained.update(calibration_reference(softmax(test_logits).max(1), as_trained["ece"], seed))
    out = {"test": as_trained, "temperature": None, "test_scaled": None}
    fitted = cross_fitted_temperature(test_logits, labels, seed)
    if fitted is None:
        return {**out, "scaling": f"too few images: under {MIN_TEMPERATURE_IMAGES} a half"}
    probs = np.exp(fitted["log_probs"])
    scaled = {
        "nll": round(float(-fitted["log_probs"][np.arange(len(labels)), labels].mean()), 6),
        "brier": round(brier(probs, labels), 6),
        "ece": round(ece(probs, labels), 6),
        "ece_bins": ece_bins(len(labels)),
    }
    t = math.exp(np.mean(np.log(fitted["temperatures"])))
    return {
        **out,
        "scaling": "cross-fitted on test halves",
        "temperature": round(t, 6),
        "temperatures": [round(v, 6) for v in fitted["temperatures"]],
        "temperature_at_bound": fitted["at_bound"],
        "test_scaled": scaled,
        "scaling_worsened_nll": scaled["nll"] > as_trained["nll"],
    }
