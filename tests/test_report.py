"""The report's quantities on hand-worked cases, and its conclusions following the numbers."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from petlab import report


def predictions(labels, cnn, vit, num_classes=3, top5=None) -> report.TestPredictions:
    labels, cnn, vit = (np.asarray(a) for a in (labels, cnn, vit))
    top5 = top5 or {m: np.ones(len(labels), bool) for m in report.MODELS}
    return report.TestPredictions(labels, {"cnn": cnn, "vit": vit}, top5, num_classes)


def test_macro_f1_by_hand_and_as_sklearn_counts_it():
    # class 0: tp 1, 2 true, 1 predicted -> 2/3; class 1: tp 2, 2 true, 3 predicted -> 4/5; class 2 absent -> 0
    assert report.macro_f1_rows(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)[0] == pytest.approx(
        (2 / 3 + 4 / 5 + 0) / 3)
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 5, size=(20, 30)), rng.integers(0, 5, size=(20, 30))
    expected = [f1_score(y, p, labels=np.arange(6), average="macro", zero_division=0) for y, p in zip(labels, preds)]
    np.testing.assert_allclose(report.macro_f1_rows(labels, preds, 6), expected)


def test_bootstrap_is_seeded_and_its_intervals_hold_the_estimates():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 60)
    cnn = np.where(rng.random(60) < 0.7, labels, (labels + 1) % 3)
    vit = np.where(rng.random(60) < 0.5, labels, (labels + 2) % 3)
    data = predictions(labels, cnn, vit)
    first = report.bootstrap_results(data, resamples=500, seed=3)
    assert first == report.bootstrap_results(data, resamples=500, seed=3)
    assert first != report.bootstrap_results(data, resamples=500, seed=4)
    assert first["accuracy"]["cnn"][0] == pytest.approx(np.mean(cnn == labels))
    assert first["accuracy"]["difference"][0] == pytest.approx(np.mean(vit == labels) - np.mean(cnn == labels))
    for metric in report.METRICS:
        for key in ("cnn", "vit", "difference"):
            estimate, low, high = first[metric][key]
            assert low <= estimate <= high, (metric, key)
    assert first["accuracy"]["cnn"][2] - first["accuracy"]["cnn"][1] > 0.1  # 60 images: not a point
    assert first["top5_accuracy"]["difference"] == (0.0, 0.0, 0.0)  # both always right: no difference at all


def test_mcnemar_exact_on_a_known_table():
    # 1 image only model a gets right, 9 only model b: two-sided binomial p = 2 * (1 + 10) / 2**10
    a = np.array([True] * 5 + [True] + [False] * 9 + [False] * 3)
    b = np.array([True] * 5 + [False] + [True] * 9 + [False] * 3)
    result = report.mcnemar_exact(a, b)
    assert (result["only_a"], result["only_b"]) == (1, 9)
    assert result["p_value"] == pytest.approx(22 / 1024)
    assert report.mcnemar_exact(a, a)["p_value"] == 1.0  # no discordant image: no evidence either way


def test_agreement_table_counts_each_cell():
    table = report.agreement_table(np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 1, 0, 1], bool))
    assert table.loc["CNN right", "Probe right"] == 2 and table.loc["CNN right", "Probe wrong"] == 1
    assert table.loc["CNN wrong", "Probe right"] == 1 and table.loc["CNN wrong", "Probe wrong"] == 1
    assert table.loc["total", "total"] == 5


def test_convergence_on_a_crafted_history():
    history = pd.DataFrame({"epoch": [1, 2, 3, 4, 5, 6], "val_macro_f1": [0.2, 0.5, 0.88, 0.93, 1.0, 0.97]})
    elapsed = pd.Series([12.0, 22.0, 32.0, 42.0, 52.0, 62.0], index=history["epoch"])
    result = report.convergence(history, elapsed)
    assert result[0.9] == {"epoch": 4, "seconds": 42.0}  # first >= 0.9 * 1.0
    assert result[0.95] == {"epoch": 5, "seconds": 52.0}


def test_most_confused_pairs_on_a_crafted_matrix():
    matrix = np.array([[5, 2, 0], [3, 4, 1], [0, 3, 6]])
    pairs = report.most_confused_pairs(matrix, ["a", "b", "c"], top=3)
    assert list(pairs.itertuples(index=False, name=None)) == [("b", "a", 3), ("c", "b", 3), ("a", "b", 2)]
    np.testing.assert_array_equal(report.confusion_counts(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), 3),
                                  [[1, 1, 0], [0, 1, 0], [1, 0, 0]])


def test_per_class_spread_hardest_classes_and_species_errors():
    per_class = pd.DataFrame({"class": ["a", "b", "c", "d"], "f1": [0.5, 0.25, 1.0, 0.25]})
    assert list(report.hardest_classes(per_class, top=3)["class"]) == ["b", "d", "a"]
    spread = report.f1_spread(per_class)
    assert (spread["min"], spread["median"], spread["max"]) == (0.25, 0.375, 1.0)
    # classes 0, 1 cats, 2 dog; errors: 0->1 (within), 1->2 (across), 2->0 (across)
    errors = report.species_errors(np.array([0, 1, 2, 2]), np.array([1, 2, 0, 2]), ["cat", "cat", "dog"])
    assert errors == {"errors": 3, "across_species": 2, "within_species": 1, "species_accuracy": 0.5}


def test_generalisation_gaps_at_the_selected_epoch():
    history = pd.DataFrame({"epoch": [1, 2], "train_accuracy": [0.5, 0.9], "val_accuracy": [0.4, 0.7],
                            "train_macro_f1": [0.5, 0.8], "val_macro_f1": [0.4, 0.6]})
    gaps = report.generalisation_gaps(history, 2, {"accuracy": 0.6, "macro_f1": 0.65})
    assert gaps == pytest.approx({"train_val_accuracy": 0.2, "train_val_macro_f1": 0.2,
                                  "val_test_accuracy": 0.1, "val_test_macro_f1": -0.05})


def test_generalisation_gaps_of_the_lbfgs_probe_at_its_kept_c():
    sweep = pd.DataFrame({"c": [0.1, 1.0, 10.0], "train_accuracy": [0.6, 0.9, 1.0], "val_accuracy": [0.5, 0.7, 0.65],
                          "val_macro_f1": [0.45, 0.6, 0.6]})
    gaps = report.sweep_gaps(sweep, 1.0, {"accuracy": 0.6, "macro_f1": 0.65})
    assert gaps == pytest.approx({"train_val_accuracy": 0.2, "train_val_macro_f1": None,  # no train macro-F1
                                  "val_test_accuracy": 0.1, "val_test_macro_f1": -0.05})
    both = {"cnn": {"train_val_macro_f1": 0.1, "train_val_accuracy": 0.1}, "vit": gaps}
    assert report.compared_gap(both) == ("accuracy", "accuracy")


def test_stage_shares_and_bottleneck_thresholds():
    shares = report.stage_shares({"a": 30.0, "b": 10.0})
    assert list(shares["share"]) == [0.75, 0.25]
    assert [report.bottleneck(s) for s in (0.6, 0.5, 0.3, 0.09)] == ["data-bound", "data-bound", "partly data-bound",
                                                                   "compute-bound"]


def conclusions_for(difference, mcnemar_p=0.01, cnn_seconds=100.0, vit_seconds=10.0, caveats=()):
    results = {m: {"difference": difference} for m in ("macro_f1", "accuracy")}
    speed = {"cnn": {"epoch": 8, "seconds": cnn_seconds}, "vit": {"epoch": 3, "seconds": vit_seconds}}
    gaps = {"cnn": {"train_val_macro_f1": 0.2}, "vit": {"train_val_macro_f1": 0.05}}
    return report.conclusions(results, {"only_a": 3, "only_b": 20, "p_value": mcnemar_p}, speed,
                              {"cnn": ("data-bound", 0.6), "vit": ("compute-bound", 0.02)}, gaps, ["vit"],
                              list(caveats))


def test_a_probe_kept_at_the_edge_of_its_c_grid_is_called_possibly_under_tuned():
    results = {m: {"difference": (0.1, 0.05, 0.15)} for m in ("macro_f1", "accuracy")}
    speed = {"cnn": {"epoch": 8, "seconds": 100.0}, "vit": {"epoch": None, "seconds": 10.0}}
    gaps = {"cnn": {"train_val_accuracy": 0.2}, "vit": {"train_val_accuracy": 0.05}}
    args = (results, {"only_a": 3, "only_b": 20, "p_value": 0.01}, speed,
            {"cnn": ("compute-bound", 0.02), "vit": ("compute-bound", 0.02)}, gaps, [], [])
    assert not any("under-tuned" in s for s in report.conclusions(*args))
    edge = report.conclusions(*args, c_edge="largest")[-1]
    assert edge.startswith("The probe kept the largest C of its grid") and "under-tuned" in edge


def test_conclusions_follow_the_numbers():
    probe_better = conclusions_for((0.12, 0.05, 0.2))
    assert probe_better[0].startswith("The probe is better than the CNN on test macro-F1 by 12.0 points")
    assert "95% CI [+5.0, +20.0]" in probe_better[0] and "McNemar p = 0.01" in probe_better[1]
    assert "the probe converges 10.0 times faster in wall time" in probe_better[2]
    assert "CNN's training step is data-bound" in probe_better[3]
    assert "probe's step from images (backbone forward + update of what it trains) is compute-bound" in probe_better[4]
    assert probe_better[5].startswith("The CNN generalises less well than the probe")
    assert "probe's best val macro-F1 came in its last epoch" in probe_better[6]

    cnn_better = conclusions_for((-0.12, -0.2, -0.05), cnn_seconds=10.0, vit_seconds=11.0)
    assert cnn_better[0].startswith("The CNN is better than the probe on test macro-F1 by 12.0 points")
    assert "CNN - probe: 95% CI [+5.0, +20.0]" in cnn_better[0]
    assert "about as fast in wall time" in cnn_better[2]

    tie = conclusions_for((0.02, -0.03, 0.07), mcnemar_p=0.4, cnn_seconds=10.0, vit_seconds=30.0)
    assert tie[0].startswith("No significant difference on test macro-F1") and "holds zero" in tie[0]
    assert "better" not in tie[0] and "borderline" not in tie[1]
    assert "the CNN converges 3.0 times faster" in tie[2]


def test_speed_sentence_of_a_probe_without_epochs_quotes_its_whole_fit():
    sentence = report.speed_sentence({"epoch": 8, "seconds": 100.0}, {"epoch": None, "seconds": 20.0}, 0.95)
    assert "the probe, fitted by L-BFGS without epochs, took 20.0 s in all" in sentence
    assert "the probe converges 5.0 times faster" in sentence and "None" not in sentence


def test_generalisation_sentence_follows_the_gaps():
    assert report.gap_sentence(0.05, 0.2).startswith("The probe generalises less well than the CNN")
    assert report.gap_sentence(0.10, 0.11).startswith("Both models have similar")
    assert report.gap_sentence(-0.01, -0.02).startswith("Neither model")


def test_conclusions_say_when_the_two_tests_disagree_and_repeat_the_caveats():
    interval_only = conclusions_for((0.1, 0.01, 0.2), mcnemar_p=0.2, caveats=["random backbone weights"])
    assert "borderline" in interval_only[1] and "borderline" not in interval_only[0]
    assert all("Caveats: random backbone weights." in s for s in interval_only[:3])
    assert "Caveats" not in interval_only[3]
    mcnemar_only = conclusions_for((0.02, -0.01, 0.05), mcnemar_p=0.03)
    assert mcnemar_only[1].startswith("No significant difference") and "borderline" in mcnemar_only[1]
