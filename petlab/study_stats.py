"""The study's statistics and the rules its report concludes by (docs/study.md says why each).

Pure functions of the cells' numbers. The interval of probe - CNN at a size holds both sources of uncertainty:

- training randomness: the seeds. Each seed gives one paired difference d_s (both models on the same train and
  selection subsets, scored on the same test images); their sample variance over S seeds, divided by S, is the
  seed part of the variance of their mean, with S - 1 degrees of freedom. A bootstrap that draws 3 seeds with
  replacement shrinks it by a third and uses normal-like quantiles where Student's t with 2 degrees of freedom
  is 4.30: its "95%" intervals covered 80-91% in simulations of this study.
- test sampling: the test split is one sample of images, shared by every seed, so its error does not average out
  over seeds. Its variance is that of the mean over seeds of the paired difference, by the delta method: the
  variance over test images of each image's influence on the metric (for accuracy, whether it is right), divided
  by the number of images.

The two add; the interval is the mean difference +- Student's t on seeds - 1 degrees of freedom times the total
standard error (conservative: combine says why). tests/test_study_stats.py simulates studies like the real one and checks that it covers
the true difference at least 93% of the time, and names a winner where there is none at most 5% of the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from petlab import verdict as verdict_rules
from petlab.metrics import macro_f1_rows

LEVEL = 0.95  # of every interval
POWER = 0.8  # of the smallest detectable difference
REFERENCE_DIFFERENCE = 0.02  # the difference (2 points) whose number of seeds the report states
MAX_SEEDS = 100  # beyond it, "more seeds" is no answer: the test split's sampling is what hides the difference


def metric_rows(labels: np.ndarray, preds: np.ndarray, metric: str, num_classes: int) -> np.ndarray:
    """The metric of each row of (rows, images) label and prediction arrays."""
    if metric == "accuracy":
        return (labels == preds).mean(1)
    return macro_f1_rows(labels, preds, num_classes)


def influence(labels: np.ndarray, preds: np.ndarray, metric: str, num_classes: int) -> np.ndarray:
    """Each image's influence on the metric of each row of (rows, images) predictions (the delta method): the
    metric moves by about influence / images when an image is added to the test split. For accuracy, whether the
    image is right, minus the accuracy; for macro-F1, through each class's F1 = 2 TP / (actual + predicted)."""
    preds = np.atleast_2d(preds)
    if metric == "accuracy":
        right = (preds == labels).astype(np.float64)
        return right - right.mean(1, keepdims=True)
    out = np.zeros(preds.shape)
    for k in range(num_classes):
        actual = (labels == k).astype(np.float64)[None, :]
        predicted = (preds == k).astype(np.float64)
        hit = actual * predicted
        t, a, b = hit.mean(1, keepdims=True), actual.mean(1, keepdims=True), predicted.mean(1, keepdims=True)
        denominator = a + b
        with np.errstate(divide="ignore", invalid="ignore"):
            term = np.where(denominator > 0, 2 * (hit - t) / denominator
                            - 2 * t / denominator ** 2 * ((actual - a) + (predicted - b)), 0.0)
        out += term
    return out / num_classes


def variance_from_test_sampling(labels: np.ndarray, cnn: np.ndarray, probe: np.ndarray, metric: str,
                           num_classes: int) -> float:
    """The test split's sampling variance of the mean over seeds of probe - CNN, by the delta method: the variance
    over test images of each image's paired influence (averaged over the seeds), over the number of images."""
    paired = (influence(labels, probe, metric, num_classes) - influence(labels, cnn, metric, num_classes)).mean(0)
    return float(paired.var(ddof=1) / len(labels))


@dataclass(frozen=True)
class Comparison:
    """probe - CNN at one size, over paired seeds."""

    difference: float  # mean over seeds of (probe - CNN) on the whole test split
    interval: tuple[float, float]  # LEVEL interval: seed and test-sampling variance, Student's t
    seed_sd: float | None  # sd over seeds of the per-seed differences; None with one seed
    test_se: float  # the test-sampling standard error of the mean difference
    se: float  # the total standard error
    df: float  # seeds - 1 (inf with one seed: test sampling alone)
    seeds: int
    probe_wins: int  # seeds where the probe scored higher
    ties: int
    wins_interval: tuple[float, float]  # Clopper-Pearson LEVEL interval of P(probe beats CNN) over seeds


def t_quantile(p: float, df: float) -> float:
    return float(stats.norm.ppf(p) if math.isinf(df) else stats.t.ppf(p, df))


def combine(seed_variance: float | None, seeds: int, test_var: float) -> tuple[float, float]:
    """(standard error, degrees of freedom) of a mean over `seeds` seeds: the seed variance over seeds plus the test
    variance, with Student's t on seeds - 1 degrees of freedom (normal quantiles with one seed, whose interval holds
    test sampling only).

    Conservative on purpose: the part of the test noise that differs between seeds is in both terms, and the degrees
    of freedom are not raised for the test part (Welch-Satterthwaite would, and with it the "95%" intervals of 3
    seeds covered 91% in the simulations of tests/test_study_stats.py)."""
    if seed_variance is None or seeds < 2:
        return math.sqrt(test_var), math.inf
    return math.sqrt(seed_variance / seeds + test_var), float(seeds - 1)


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact binomial interval of a share from k of n (3 of 3: [0.29, 1])."""
    tail = (1 - level) / 2
    low = 0.0 if k == 0 else float(stats.beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - tail, k + 1, n - k))
    return low, high


def compare(labels: np.ndarray, cnn: np.ndarray, probe: np.ndarray, metric: str, num_classes: int) -> Comparison:
    """probe - CNN from (seeds, images) predicted labels, row i of both from the same seed."""
    labels_rows = np.broadcast_to(labels, cnn.shape)
    per_seed = metric_rows(labels_rows, probe, metric, num_classes) - metric_rows(labels_rows, cnn, metric,
                                                                                 num_classes)
    seeds = len(per_seed)
    seed_variance = float(per_seed.var(ddof=1)) if seeds > 1 else None
    test_var = variance_from_test_sampling(labels, cnn, probe, metric, num_classes)
    se, df = combine(seed_variance, seeds, test_var)
    half = t_quantile(1 - (1 - LEVEL) / 2, df) * se
    mean = float(per_seed.mean())
    wins, ties = int((per_seed > 0).sum()), int((per_seed == 0).sum())
    return Comparison(mean, (mean - half, mean + half), None if seed_variance is None else math.sqrt(seed_variance),
                      math.sqrt(test_var), se, df, seeds, wins, ties, clopper_pearson(wins, seeds))


# ---------------------------------------------------------------- power: what the study could detect


def detectable(seed_sd: float | None, test_se: float, seeds: int, power: float = POWER) -> float:
    """The smallest true difference a study of `seeds` seeds detects with probability `power` by the rule below
    (a two-sided LEVEL interval excluding 0): (t_{1-alpha/2} + t_{power}) x its standard error."""
    se, df = combine(None if seed_sd is None else seed_sd ** 2, seeds, test_se ** 2)
    return (t_quantile(1 - (1 - LEVEL) / 2, df) + t_quantile(power, df)) * se


def seeds_needed(difference: float, seed_sd: float | None, test_se: float) -> int | None:
    """The fewest seeds (2 or more) that detect `difference` with POWER; None where MAX_SEEDS do not (the test
    split's sampling alone hides it) or the seed sd is unknown (one seed)."""
    if seed_sd is None:
        return None
    for seeds in range(2, MAX_SEEDS + 1):
        if detectable(seed_sd, test_se, seeds) <= difference:
            return seeds
    return None


# ---------------------------------------------------------------- the rules the report concludes by


def verdict(c: Comparison) -> str:
    """'probe', 'cnn' or 'undecided' at one size: a model is better only where the LEVEL interval of probe - CNN
    excludes 0. (The share of seeds won is reported beside it, with its exact interval; with 3 seeds that interval
    cannot exclude a half even at 3 of 3, so it decides nothing.)"""
    low, high = c.interval
    if low > 0:
        return "probe"
    if high < 0:
        return "cnn"
    return "undecided"


def crossing(sizes: list[str], verdicts: list[str]) -> str:
    """Where the curves cross, from the decided sizes only (ladder order, smallest first)."""
    decided = [(size, v) for size, v in zip(sizes, verdicts) if v != "undecided"]
    undecided = [size for size, v in zip(sizes, verdicts) if v == "undecided"]
    names = {"probe": "the probe", "cnn": "the CNN"}
    if not decided:
        return ("The intervals do not separate the models at any size tried: the study cannot say whether or where "
                "the curves cross.")
    for (a, first), (b, second) in zip(decided, decided[1:]):
        if first != second:
            return (f"The curves cross between {a} and {b} training images per class: {names[first]} is ahead at "
                    f"{a}, {names[second]} at {b}.")
    leader = names[decided[0][1]]
    if not undecided:
        return f"The curves do not cross within the sizes tried: {leader} is ahead at every size."
    return (f"No crossing is shown: {leader} is ahead at {', '.join(s for s, _ in decided)} training images per "
            f"class; at {', '.join(undecided)} the intervals do not separate the models.")


def undertrained(long_minus_normal: float, half_width: float) -> bool:
    """The budget check: the CNN counts as under-trained at a size where twice its optimiser steps raised its test
    macro-F1 (same seed, same recipe) by more than the half-width of that size's interval of probe - CNN: more
    training alone would then move the comparison by more than its uncertainty."""
    return long_minus_normal > half_width


def compute_to_target(cnn_curve: list[float], cnn_gflops_per_epoch: float, probe_best: float, probe_gflops: float,
                      num_classes: int) -> dict:
    """Training compute to the fixed target for one (seed, size) pair, by the single-run report's rule
    (petlab.verdict.compute_to_target)."""
    return verdict_rules.compute_to_target(
        {"cnn": [(e + 1, (e + 1) * cnn_gflops_per_epoch, float(f)) for e, f in enumerate(cnn_curve)],
         "vit": [(None, probe_gflops, float(probe_best))]}, num_classes)
