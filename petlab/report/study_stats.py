"""The study's statistics and the rules its report concludes by (docs/study.md says why each).

Pure functions of the cells' numbers. The interval of probe - CNN at a size holds both sources of uncertainty:

- training randomness: the seeds. Each seed gives one paired difference d_s (both models on the same train and
  selection subsets, scored on the same test images); their sample variance over S seeds, divided by S, is the
  seed part of the variance of their mean, with S - 1 degrees of freedom: its quantile is Student's t on S - 1.
  (A bootstrap that draws 3 seeds with replacement shrinks it by a third and uses normal-like quantiles where t
  with 2 degrees of freedom is 4.30: its "95%" intervals covered 80-91% in simulations of this study.)
- test sampling: the test split is one sample of images, shared by every seed, so its error does not average out
  over seeds. Its variance is that of the mean over seeds of the paired difference, by the delta method: the
  variance over test images of each image's influence on the metric (for accuracy, whether it is right; for a
  mean score such as NLL, the image's score), divided by the number of images. It is estimated from thousands of
  images, so its quantile is the normal one.

The half-width is sqrt((t x seed part)^2 + (z x test part)^2): each part with the quantile of its own estimate.
Student's t applied to the test part too made 3-seed intervals 2 to 2.65 times as wide as a known-variance one
and covered 98-100%. tests/test_study_stats.py simulates studies like the real ones (3 and 5 seeds, a seed sd of
0.5 to 4 points, 6 classes x 600 and 37 x 3,669 test images, accuracy and macro-F1) and checks that this interval
covers the true difference at least 93% of the time and names a false winner at most 5%.

Over sizes, the verdicts are one family: each size's interval is at the Bonferroni level 1 - (1 - LEVEL) / sizes,
so that the chance of any false winner over the whole ladder stays under 1 - LEVEL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from petlab.core.metrics import macro_f1_rows

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
            term = np.where(
                denominator > 0,
                2 * (hit - t) / denominator - 2 * t / denominator**2 * ((actual - a) + (predicted - b)),
                0.0,
            )
        out += term
    return out / num_classes


def variance_from_test_sampling(
    labels: np.ndarray, cnn: np.ndarray, probe: np.ndarray, metric: str, num_classes: int
) -> float:
    """The test split's sampling variance of the mean over seeds of probe - CNN, by the delta method: the variance
    over test images of each image's paired influence (averaged over the seeds), over the number of images."""
    paired = (influence(labels, probe, metric, num_classes) - influence(labels, cnn, metric, num_classes)).mean(0)
    return float(paired.var(ddof=1) / len(labels))


@dataclass(frozen=True)
class Comparison:
    """probe - CNN at one size, over paired seeds (or any paired B - A: the budget check's long - normal run)."""

    difference: float  # mean over seeds of (probe - CNN) on the whole test split
    interval: tuple[float, float]  # at `level`: seed part with Student's t, test part with the normal quantile
    seed_sd: float | None  # sd over seeds of the per-seed differences; None with one seed
    test_se: float  # the test-sampling standard error of the mean difference
    seeds: int
    probe_wins: int  # seeds where the probe scored higher
    ties: int
    wins_interval: tuple[float, float]  # Clopper-Pearson LEVEL interval of P(probe beats CNN) over seeds
    level: float = LEVEL

    @property
    def se(self) -> float:
        """The total standard error of the mean difference."""
        return combine(None if self.seed_sd is None else self.seed_sd**2, self.seeds, self.test_se**2)[0]

    def bounds(self, level: float) -> tuple[float, float]:
        """The interval at another level."""
        half = half_width(self.seed_sd, self.seeds, self.test_se, level)
        return self.difference - half, self.difference + half


def t_quantile(p: float, df: float) -> float:
    return float(stats.norm.ppf(p) if math.isinf(df) else stats.t.ppf(p, df))


def combine(seed_variance: float | None, seeds: int, test_var: float) -> tuple[float, float]:
    """(standard error, degrees of freedom of its seed part) of a mean over `seeds` seeds: the seed variance over
    seeds plus the test variance (one seed: test sampling alone, df inf)."""
    if seed_variance is None or seeds < 2:
        return math.sqrt(test_var), math.inf
    return math.sqrt(seed_variance / seeds + test_var), float(seeds - 1)


def half_width(
    seed_sd: float | None, seeds: int, test_se: float, level: float = LEVEL, power: float | None = None
) -> float:
    """The half-width of a two-sided `level` interval: sqrt((t_{S-1} x seed_sd / sqrt(S))^2 + (z x test_se)^2).
    With `power`, the smallest true difference such an interval excludes 0 for with that probability: each part's
    quantile raised by its quantile of `power`."""
    tail = 1 - (1 - level) / 2
    df = math.inf if seed_sd is None or seeds < 2 else seeds - 1
    t, z = t_quantile(tail, df), t_quantile(tail, math.inf)
    if power is not None:
        t, z = t + t_quantile(power, df), z + t_quantile(power, math.inf)
    seed_part = 0.0 if seed_sd is None or seeds < 2 else t * seed_sd / math.sqrt(seeds)
    return math.hypot(seed_part, z * test_se)


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact binomial interval of a share from k of n (3 of 3: [0.29, 1])."""
    tail = (1 - level) / 2
    low = 0.0 if k == 0 else float(stats.beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - tail, k + 1, n - k))
    return low, high


def paired_comparison(per_seed: np.ndarray, paired_influence: np.ndarray, level: float = LEVEL) -> Comparison:
    """From each seed's difference and each test image's paired influence (mean over seeds), the Comparison."""
    seeds = len(per_seed)
    seed_sd = float(per_seed.std(ddof=1)) if seeds > 1 else None
    test_se = float(math.sqrt(paired_influence.var(ddof=1) / len(paired_influence)))
    half = half_width(seed_sd, seeds, test_se, level)
    mean = float(per_seed.mean())
    wins, ties = int((per_seed > 0).sum()), int((per_seed == 0).sum())
    return Comparison(
        mean, (mean - half, mean + half), seed_sd, test_se, seeds, wins, ties, clopper_pearson(wins, seeds), level
    )


def compare(
    labels: np.ndarray, cnn: np.ndarray, probe: np.ndarray, metric: str, num_classes: int, level: float = LEVEL
) -> Comparison:
    """probe - CNN from (seeds, images) predicted labels, row i of both from the same seed."""
    labels_rows = np.broadcast_to(labels, cnn.shape)
    per_seed = metric_rows(labels_rows, probe, metric, num_classes) - metric_rows(labels_rows, cnn, metric, num_classes)
    paired = (influence(labels, probe, metric, num_classes) - influence(labels, cnn, metric, num_classes)).mean(0)
    return paired_comparison(per_seed, paired, level)


def compare_scores(cnn: np.ndarray, probe: np.ndarray, level: float = LEVEL) -> Comparison:
    """probe - CNN of a mean per-image score (NLL, Brier) from (seeds, images) arrays of it; lower is better, so
    `probe_wins` counts the seeds where the probe's score is the higher (worse)."""
    per_seed = probe.mean(1) - cnn.mean(1)
    paired = ((probe - probe.mean(1, keepdims=True)) - (cnn - cnn.mean(1, keepdims=True))).mean(0)
    return paired_comparison(per_seed, paired, level)


def family_level(members: int) -> float:
    """Bonferroni: the level of each of `members` intervals whose family holds LEVEL (0.95 / 4 sizes: 0.9875)."""
    return 1 - (1 - LEVEL) / max(1, members)


# ---------------------------------------------------------------- power: what the study could detect


def detectable(seed_sd: float | None, test_se: float, seeds: int, power: float = POWER, level: float = LEVEL) -> float:
    """The smallest true difference a study of `seeds` seeds detects with probability `power` by the rule below
    (a two-sided `level` interval excluding 0)."""
    return half_width(seed_sd, seeds, test_se, level, power)


def seeds_needed(difference: float, seed_sd: float | None, test_se: float, level: float = LEVEL) -> int | None:
    """The fewest seeds (2 or more) that detect `difference` with POWER; None where MAX_SEEDS do not (the test
    split's sampling alone hides it) or the seed sd is unknown (one seed)."""
    if seed_sd is None or detectable(seed_sd, test_se, MAX_SEEDS, level=level) > difference:
        return None
    low, high = 2, MAX_SEEDS  # detectable falls as seeds grow: the fewest that reach it, by bisection
    while low < high:
        middle = (low + high) // 2
        if detectable(seed_sd, test_se, middle, level=level) <= difference:
            high = middle
        else:
            low = middle + 1
    return low


def seed_sd_range(seed_sd: float | None, seeds: int, level: float = LEVEL) -> tuple[float, float] | None:
    """The `level` interval of the seed sd from its estimate over `seeds` seeds (chi-square on seeds - 1): with 3
    seeds it spans 0.52x to 6.3x the estimate, so power and seeds needed computed from it are that uncertain."""
    if seed_sd is None or seeds < 2:
        return None
    df, tail = seeds - 1, (1 - level) / 2
    return (seed_sd * math.sqrt(df / stats.chi2.ppf(1 - tail, df)), seed_sd * math.sqrt(df / stats.chi2.ppf(tail, df)))


def power_summary(c: Comparison, reference: float = REFERENCE_DIFFERENCE, level: float = LEVEL) -> dict:
    """What the study could detect, with its uncertainty: the detectable difference and the seeds a `reference`
    difference needs, at the estimated seed sd and at the two ends of its interval (seed_sd_range)."""
    sd_range = seed_sd_range(c.seed_sd, c.seeds)
    ends = (c.seed_sd, *(sd_range or (None, None)))
    return {
        "seed_sd": c.seed_sd,
        "seed_sd_range": sd_range,
        "test_se": c.test_se,
        "detectable": [
            detectable(sd, c.test_se, c.seeds, level=level) if sd is not None or k == 0 else None
            for k, sd in enumerate(ends)
        ],
        "seeds_for_reference": [seeds_needed(reference, sd, c.test_se, level) for sd in ends],
    }


# ---------------------------------------------------------------- the rules the report concludes by


def better_model(c: Comparison) -> str:
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
        return (
            "The intervals do not separate the models at any size tried: the study cannot say whether or where "
            "the curves cross."
        )
    for (a, first), (b, second) in zip(decided, decided[1:]):
        if first != second:
            return (
                f"The curves cross between {a} and {b} training images per class: {names[first]} is ahead at "
                f"{a}, {names[second]} at {b}."
            )
    leader = names[decided[0][1]]
    if not undecided:
        return f"The curves do not cross within the sizes tried: {leader} is ahead at every size."
    return (
        f"No crossing is shown: {leader} is ahead at {', '.join(s for s, _ in decided)} training images per "
        f"class; at {', '.join(undecided)} the intervals do not separate the models."
    )


# The budget check is an equivalence test (two one-sided tests): "trained enough" only where the one-sided 95% upper
# bound of the gain from twice the steps (the two-sided 90% interval's) is under the tolerance fixed in advance
# (study.budget_tolerance); "under-trained" where the 95% interval of the gain excludes 0; "inconclusive" else.
# Comparing one seed's gain with the comparison's half-width, as before, fired in 2-19% of simulated studies whose
# CNN truly gained 3 points: absence of evidence read as evidence of absence.
EQUIVALENCE_LEVEL = 1 - 2 * (1 - LEVEL)
TRAINED, UNDERTRAINED, INCONCLUSIVE = "trained enough", "under-trained", "inconclusive"


def budget_verdict(gain: Comparison, tolerance: float) -> str:
    """The budget check at one size from the paired comparison of the CNN with twice its steps against the CNN
    (long - normal, test macro-F1, over seeds). With one seed it is INCONCLUSIVE: the long and the normal run of one
    seed also differ by training randomness, which an interval of test sampling alone leaves out."""
    if gain.seeds < 2:
        return INCONCLUSIVE
    if gain.bounds(EQUIVALENCE_LEVEL)[1] < tolerance:
        return TRAINED
    if gain.interval[0] > 0:
        return UNDERTRAINED
    return INCONCLUSIVE


def equivalence_power(gain: Comparison, tolerance: float) -> float:
    """The chance that the check says TRAINED if twice the steps truly gained nothing, at this study's standard
    errors: P(estimate + 90% half-width < tolerance), the estimate normal around 0 with the total standard error."""
    if gain.seeds < 2:
        return 0.0  # budget_verdict never says TRAINED with one seed
    half = half_width(gain.seed_sd, gain.seeds, gain.test_se, EQUIVALENCE_LEVEL)
    return float(stats.norm.cdf((tolerance - half) / gain.se)) if gain.se > 0 else float(half < tolerance)
