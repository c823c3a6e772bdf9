"""The study's statistics and the rules its report concludes by (docs/study.md).

Pure functions of the cells' numbers, each checked on hand-made cases in tests/test_study.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from petlab import verdict as verdict_rules
from petlab.metrics import macro_f1_rows
from petlab.report import percentile_interval

# A cell's CNN counts as still improving when its best val macro-F1 over the last quarter of its epochs beats
# the best before them by more than this (2 points): more steps might have helped.
STILL_IMPROVING = 0.02


def metric_rows(labels: np.ndarray, preds: np.ndarray, metric: str, num_classes: int) -> np.ndarray:
    """The metric of each row of (rows, images) label and prediction arrays."""
    if metric == "accuracy":
        return (labels == preds).mean(1)
    return macro_f1_rows(labels, preds, num_classes)


@dataclass(frozen=True)
class Comparison:
    """probe - CNN at one size, over paired seeds. Intervals are 95% percentile intervals of the bootstrap."""

    difference: float  # mean over seeds of (probe - CNN) on all test images
    difference_interval: tuple[float, float]
    p_probe_better: float  # share of seeds where the probe scores higher (ties count half)
    p_interval: tuple[float, float]


def beats(difference: np.ndarray) -> np.ndarray:
    """1 where the probe scored higher, 0.5 on a tie, 0 where the CNN did."""
    return (difference > 0) + 0.5 * (difference == 0)


def compare(labels: np.ndarray, cnn: np.ndarray, probe: np.ndarray, metric: str, num_classes: int,
            resamples: int, seed: int, chunk: int = 100) -> Comparison:
    """The hierarchical bootstrap of probe - CNN over paired seeds: each resample draws the seeds with
    replacement, then the test images with replacement (one draw of images for every seed and both models,
    as the test set is one), and scores both models of each drawn seed on the drawn images.

    The interval so holds training randomness (which seeds) and test sampling (which images); pairing keeps a
    seed's two models on the same subset and both models on the same hard images. `cnn` and `probe` are
    (seeds, images) predicted labels, row i of both from the same seed.
    """
    seeds, images = cnn.shape
    point = metric_rows(labels[None, :].repeat(seeds, 0), probe, metric, num_classes) - \
        metric_rows(labels[None, :].repeat(seeds, 0), cnn, metric, num_classes)
    rng = np.random.default_rng(seed)
    differences, shares = [], []
    for start in range(0, resamples, chunk):  # chunks keep the (resamples x seeds x images) arrays small
        n = min(chunk, resamples - start)
        drawn_seeds = rng.integers(0, seeds, size=(n, seeds))
        drawn_images = rng.integers(0, images, size=(n, images))
        rows_labels = np.repeat(labels[drawn_images], seeds, axis=0)  # (n * seeds, images)
        pick = (drawn_seeds[:, :, None], drawn_images[:, None, :])  # (n, seeds, images)

        def scores(preds: np.ndarray) -> np.ndarray:
            return metric_rows(rows_labels, preds[pick].reshape(n * seeds, images), metric,
                               num_classes).reshape(n, seeds)

        difference = scores(probe) - scores(cnn)
        differences.append(difference.mean(1))
        shares.append(beats(difference).mean(1))
    return Comparison(float(point.mean()), percentile_interval(np.concatenate(differences)), float(beats(point).mean()),
                      percentile_interval(np.concatenate(shares)))


# ---------------------------------------------------------------- the rules the report concludes by


def verdict(c: Comparison) -> str:
    """'probe', 'cnn' or 'undecided' at one size.

    A model is better only when both hold: the 95% interval of probe - CNN excludes 0, and the interval of
    P(probe beats CNN) over seeds lies wholly on that model's side of 0.5 (Bouthillier et al., 2021: a
    difference of means can come from one lucky seed; the probability says how often the order holds).
    """
    low, high = c.difference_interval
    if low > 0 and c.p_interval[0] > 0.5:
        return "probe"
    if high < 0 and c.p_interval[1] < 0.5:
        return "cnn"
    return "undecided"


def crossing(sizes: Sequence[str], verdicts: Sequence[str]) -> str:
    """Where the curves cross, from the decided sizes only (ladder order, smallest first)."""
    decided = [(size, v) for size, v in zip(sizes, verdicts) if v != "undecided"]
    undecided = [size for size, v in zip(sizes, verdicts) if v == "undecided"]
    names = {"probe": "the probe", "cnn": "the CNN"}
    if not decided:
        return "The intervals do not separate the models at any size tried: the study cannot say whether or where " \
               "the curves cross."
    for (a, first), (b, second) in zip(decided, decided[1:]):
        if first != second:
            return (f"The curves cross between {a} and {b} images per class: {names[first]} is ahead at {a}, "
                    f"{names[second]} at {b}.")
    leader = names[decided[0][1]]
    if not undecided:
        return f"The curves do not cross within the sizes tried: {leader} is ahead at every size."
    return (f"No crossing is shown: {leader} is ahead at {', '.join(s for s, _ in decided)} images per class; at "
            f"{', '.join(undecided)} the intervals do not separate the models.")


def time_to_target(cnn_curve: Sequence[float], cnn_elapsed: Sequence[float], probe_best: float,
                   probe_seconds: float, num_classes: int) -> dict:
    """Time to a common target for one (seed, size) pair, by the single-run report's rule (verdict.time_to_target:
    the weaker model's best val macro-F1, as DAWNBench and MLPerf time to train). The CNN reaches a level at the
    first epoch at or above it (seconds from the start of training); the L-BFGS probe has no curve over time, so
    it reaches any level it reaches at the end of its fit. When either model never learned (verdict.learned), no
    time is compared: a level near chance is reached by learning nothing."""
    t = verdict_rules.time_to_target(
        {"cnn": [(e + 1, float(s), float(f)) for e, (s, f) in enumerate(zip(cnn_elapsed, cnn_curve))],
         "vit": [(None, float(probe_seconds), float(probe_best))]}, num_classes)
    out = {"target": t["target"], "cnn_seconds": None, "probe_seconds": None,
           "cnn_reaches_probe_best": t["reaches_other_best"]["cnn"],
           "probe_reaches_cnn_best": t["reaches_other_best"]["vit"]}
    if all(t["learned"].values()):
        out.update(cnn_seconds=t["reached"]["cnn"]["seconds"], probe_seconds=t["reached"]["vit"]["seconds"])
    return out
