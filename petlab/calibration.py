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
- Temperature scaling: one parameter T per model, fitted by minimising NLL on the selection split (val), which
  divides the logits: it changes confidence, never the predicted class (Guo et al. 2017).
"""

from __future__ import annotations

import math

import numpy as np

ECE_BINS = 15  # at most; fewer on a small split, so that each bin holds at least MIN_BIN_IMAGES
MIN_BIN_IMAGES = 10
TEMPERATURE_RANGE = (0.05, 20.0)  # log-spaced search bounds: beyond them a model's confidence is degenerate anyway


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
        rows.append({"images": int(len(part)), "confidence": float(confidence[part].mean()),
                     "accuracy": float(correct[part].mean())})
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
    found = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)), bounds=(low, high), method="bounded",
                            options={"xatol": 1e-4})
    return float(math.exp(found.x))


def calibration_metrics(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> dict[str, float]:
    """NLL, Brier, ECE (and the bins it used) of logits / temperature."""
    probs = softmax(logits, temperature)
    return {"nll": round(nll(logits, labels, temperature), 6), "brier": round(brier(probs, labels), 6),
            "ece": round(ece(probs, labels), 6), "ece_bins": ece_bins(len(labels))}


def ece_interval(probs: np.ndarray, labels: np.ndarray, resamples: int, seed: int,
                 level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval of ECE over the test images (resampled with replacement)."""
    confidence, correct = probs.max(1), probs.argmax(1) == np.asarray(labels)
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, resamples, 200):  # chunks keep (resamples x images) arrays small
        rows = rng.integers(0, len(labels), size=(min(200, resamples - start), len(labels)))
        values.append(ece_rows(confidence[rows], correct[rows], ece_bins(len(labels))))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.concatenate(values), [tail, 100 - tail])
    return round(float(low), 6), round(float(high), 6)


def calibration_summary(val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray,
                        test_labels: np.ndarray, resamples: int = 0, seed: int = 0) -> dict:
    """Test calibration as trained and after temperature scaling fitted on val; with `resamples`, ECE's 95%
    bootstrap intervals too, as ece_low and ece_high (scalars, for `dvc metrics`)."""
    temperature = fit_temperature(val_logits, val_labels)
    out = {"temperature": round(temperature, 6), "test": calibration_metrics(test_logits, test_labels),
           "test_scaled": calibration_metrics(test_logits, test_labels, temperature)}
    if resamples:
        for key, t in (("test", 1.0), ("test_scaled", temperature)):
            low, high = ece_interval(softmax(test_logits, t), test_labels, resamples, seed)
            out[key].update(ece_low=low, ece_high=high)
    return out
