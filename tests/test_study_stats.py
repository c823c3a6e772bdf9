"""The study's statistics: the interval of probe - CNN holds at its stated level in studies like the real one (few
seeds, small test splits), the rule names no winner where there is none more than 5% of the time, and the power
numbers say what a study can detect."""

import math

import numpy as np
import pytest
from scipy.special import ndtr
from sklearn.metrics import f1_score

from petlab.study_stats import (Comparison, clopper_pearson, combine, compare, crossing, detectable, influence,
                                metric_rows, seeds_needed, variance_from_test_sampling, undertrained, verdict)

CLASSES = 6


def simulated_study(rng, seeds: int, images: int, difference: float, seed_sd: float, base: float = 0.8,
                    shared: float = 0.7):
    """One study like the real one: a fresh test split of `images` images, and for each seed a CNN and a probe whose
    accuracies on the population of images are base + u_s and base + difference + v_s. Seed effects u, v are
    normal with the sd that gives the per-seed difference probe - CNN an sd of `seed_sd`; image i is right for a
    model of a seed when W < its accuracy, W uniform on (0, 1) and built from a part `shared` by both models and all
    seeds (hard images are hard for everyone) and a part of the model's and seed's own. The true difference is
    `difference` exactly. Wrong answers go to another class at random."""
    labels = rng.integers(0, CLASSES, images)
    common = rng.standard_normal(images)

    def model(accuracy: np.ndarray) -> np.ndarray:
        own = rng.standard_normal((seeds, images))
        w = ndtr(shared * common + math.sqrt(1 - shared ** 2) * own)  # the normal CDF
        right = w < np.clip(accuracy, 0.01, 0.99)[:, None]
        wrong = (labels + rng.integers(1, CLASSES, (seeds, images))) % CLASSES
        return np.where(right, labels, wrong)

    effect = seed_sd / math.sqrt(2)  # u and v independent, each this sd: u - v has sd seed_sd
    cnn = model(base - difference / 2 + rng.normal(0, effect, seeds))
    probe = model(base + difference / 2 + rng.normal(0, effect, seeds))
    return labels, cnn, probe


SETTINGS = [(seeds, sd, images, difference) for seeds in (3, 5) for sd in (0.01, 0.03) for images in (600, 3669)
            for difference in (0.0, 0.03)]


@pytest.mark.parametrize("seeds, seed_sd, images, difference", SETTINGS,
                         ids=[f"{s}seeds-sd{sd * 100:.0f}-{n}images-diff{d * 100:.0f}" for s, sd, n, d in SETTINGS])
def test_interval_coverage_holds_at_its_level_in_studies_like_the_real_one(seeds, seed_sd, images, difference):
    """500 simulated studies a setting, on test accuracy (whose true difference the simulation knows exactly): the
    95% interval covers the true difference in at least 93% of them, and with no true difference the rule names a
    winner in at most 5%. (A percentile bootstrap over 3 seeds covered 80-91% here at a seed sd of 2-3 points.)"""
    rng = np.random.default_rng([seeds, int(seed_sd * 100), images, int(difference * 100)])
    covered, decided = 0, 0
    for _ in range(500):
        labels, cnn, probe = simulated_study(rng, seeds, images, difference, seed_sd)
        c = compare(labels, cnn, probe, "accuracy", CLASSES)
        covered += c.interval[0] <= difference <= c.interval[1]
        decided += verdict(c) != "undecided"
    assert covered / 500 >= 0.93, covered / 500
    if difference == 0:
        assert decided / 500 <= 0.05, decided / 500


@pytest.mark.parametrize("seeds, seed_sd", [(3, 0.03), (5, 0.01)])
def test_macro_f1_interval_coverage_holds_too(seeds, seed_sd):
    """The conclusions are drawn on macro-F1, whose test-sampling variance comes from the delta method: the true
    difference of macro-F1 (not known in closed form) from studies with a test split of 200,000 images."""
    rng = np.random.default_rng([7, seeds])
    truth_labels, truth_cnn, truth_probe = simulated_study(np.random.default_rng(99), 400, 20_000, 0.03, 0.0)
    truth = float((metric_rows(np.broadcast_to(truth_labels, truth_probe.shape), truth_probe, "macro_f1", CLASSES)
                   - metric_rows(np.broadcast_to(truth_labels, truth_cnn.shape), truth_cnn, "macro_f1", CLASSES)).mean())
    covered = 0
    for _ in range(500):
        labels, cnn, probe = simulated_study(rng, seeds, 600, 0.03, seed_sd)
        c = compare(labels, cnn, probe, "macro_f1", CLASSES)
        covered += c.interval[0] <= truth <= c.interval[1]
    assert covered / 500 >= 0.93, covered / 500


def test_the_delta_method_matches_a_bootstrap_of_the_test_images():
    """One seed: the shared test-sampling variance is all of it, and equals a bootstrap's over the test images."""
    rng = np.random.default_rng(0)
    labels, cnn, probe = simulated_study(rng, 1, 600, 0.03, 0.0)
    for metric in ("accuracy", "macro_f1"):
        rows = rng.integers(0, 600, (2000, 600))
        boot = (metric_rows(labels[rows], probe[0][rows], metric, CLASSES)
                - metric_rows(labels[rows], cnn[0][rows], metric, CLASSES))
        assert variance_from_test_sampling(labels, cnn, probe, metric, CLASSES) == pytest.approx(boot.var(), rel=0.15)


def test_influence_sums_to_the_change_a_new_image_makes():
    """Adding an image moves macro-F1 by about its influence / images: checked against the exact change."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 400)
    preds = np.where(rng.random(400) < 0.7, labels, (labels + 1) % 4)[None, :]
    inf = influence(labels, preds, "macro_f1", 4)[0]
    assert abs(inf.mean()) < 1e-9
    base = f1_score(labels, preds[0], average="macro")
    for i in (0, 5, 17):
        doubled = f1_score(np.append(labels, labels[i]), np.append(preds[0], preds[0, i]), average="macro")
        assert (doubled - base) * 401 == pytest.approx(inf[i], abs=0.02)


def test_one_seed_gives_a_test_sampling_interval_of_normal_quantiles():
    rng = np.random.default_rng(2)
    labels, cnn, probe = simulated_study(rng, 1, 800, 0.05, 0.0)
    c = compare(labels, cnn, probe, "accuracy", CLASSES)
    assert c.seed_sd is None and math.isinf(c.df) and c.seeds == 1
    assert c.interval[1] - c.difference == pytest.approx(1.959964 * c.test_se)


def test_students_t_on_seeds_minus_one_degrees_of_freedom():
    se, df = combine(0.0004, 3, 0.0)  # seed variance only: the t-interval of the per-seed differences
    assert se == pytest.approx(math.sqrt(0.0004 / 3)) and df == 2
    se, df = combine(0.0004, 3, 0.0004 / 3)  # the test part adds to the error, not to the degrees of freedom
    assert df == 2 and se == pytest.approx(math.sqrt(2 * 0.0004 / 3))
    labels = np.arange(30) % 3
    perfect, off = labels[None, :].repeat(3, 0), (labels[None, :].repeat(3, 0) + 1) % 3
    c = compare(labels, off, perfect, "accuracy", 3)
    assert c.difference == 1.0 and c.interval == (1.0, 1.0) and c.probe_wins == 3  # no variance at all


def test_share_of_seeds_won_has_an_exact_interval():
    low, high = clopper_pearson(3, 3)
    assert low == pytest.approx(0.2924, abs=1e-4) and high == 1.0  # not [1.00, 1.00]
    assert clopper_pearson(0, 5)[0] == 0.0 and clopper_pearson(2, 5) == pytest.approx((0.0527, 0.8534), abs=1e-4)


def test_power_and_seeds_needed():
    # A seed sd of 2 points and a small test-sampling part: about 10 seeds for a 2-point difference.
    assert 8 <= seeds_needed(0.02, 0.02, 0.002) <= 12
    assert detectable(0.02, 0.002, 5) > detectable(0.02, 0.002, 20)  # more seeds, smaller detectable difference
    assert seeds_needed(0.02, 0.02, 0.012) is None  # test sampling alone hides 2 points: no number of seeds helps
    assert seeds_needed(0.02, None, 0.002) is None  # one seed: the seed sd is unknown
    assert detectable(None, 0.01, 1) == pytest.approx((1.959964 + 0.841621) * 0.01, rel=1e-5)


def comparison(low: float, high: float) -> Comparison:
    return Comparison((low + high) / 2, (low, high), 0.01, 0.01, 0.01, 4.0, 3, 2, 0, (0.1, 0.9))


def test_verdict_rests_on_the_interval():
    assert verdict(comparison(0.02, 0.10)) == "probe"
    assert verdict(comparison(-0.10, -0.02)) == "cnn"
    assert verdict(comparison(-0.01, 0.10)) == "undecided"


def test_crossing_rule():
    sizes = ["5", "10", "25", "50", "all"]
    assert crossing(sizes, ["probe"] * 5) == ("The curves do not cross within the sizes tried: the probe is ahead "
                                              "at every size.")
    assert crossing(sizes, ["probe", "probe", "undecided", "cnn", "cnn"]) == (
        "The curves cross between 10 and 50 training images per class: the probe is ahead at 10, the CNN at 50.")
    partial = crossing(sizes, ["probe", "probe", "probe", "undecided", "undecided"])
    assert partial.startswith("No crossing is shown: the probe is ahead at 5, 10, 25") and "50, all" in partial
    assert "cannot say" in crossing(sizes, ["undecided"] * 5)


def test_the_budget_check_fires_when_more_steps_gain_more_than_the_uncertainty():
    assert undertrained(0.05, 0.02) and not undertrained(0.01, 0.02) and not undertrained(-0.03, 0.02)
