"""The report's quantities on hand-worked cases, and its conclusions following the numbers."""

import numpy as np
import pandas as pd
import pytest

from petlab.report import comparison as report
from petlab.report import verdict


def predictions(labels, cnn, vit, num_classes=3, top5=None) -> report.TestPredictions:
    labels, cnn, vit = (np.asarray(a) for a in (labels, cnn, vit))
    top5 = top5 or {m: np.ones(len(labels), bool) for m in report.MODELS}
    return report.TestPredictions(labels, {"cnn": cnn, "vit": vit}, top5, num_classes)


def test_bootstrap_is_seeded_and_its_intervals_hold_the_estimates():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 60)
    cnn = np.where(rng.random(60) < 0.7, labels, (labels + 1) % 3)
    vit = np.where(rng.random(60) < 0.5, labels, (labels + 2) % 3)
    data = predictions(labels, cnn, vit, num_classes=6)  # over 5 classes: top-5 reported
    first = report.bootstrap_results(data, resamples=500, seed=3)
    assert first == report.bootstrap_results(data, resamples=500, seed=3)
    assert first != report.bootstrap_results(data, resamples=500, seed=4)
    assert first["accuracy"]["cnn"][0] == pytest.approx(np.mean(cnn == labels))
    assert first["accuracy"]["difference"][0] == pytest.approx(np.mean(vit == labels) - np.mean(cnn == labels))
    assert set(first) == set(report.METRICS)
    for metric in report.METRICS:
        for key in ("cnn", "vit", "difference"):
            estimate, low, high = first[metric][key]
            assert low <= estimate <= high, (metric, key)
    assert first["accuracy"]["cnn"][2] - first["accuracy"]["cnn"][1] > 0.1  # 60 images: not a point
    assert first["top5_accuracy"]["difference"] == (0.0, 0.0, 0.0)  # both always right: no difference at all


def test_top5_is_not_reported_with_5_classes_or_fewer():
    labels = np.array([0, 1, 2, 0, 1, 2])
    three = report.bootstrap_results(predictions(labels, labels, (labels + 1) % 3, num_classes=3, top5={}), 200, 0)
    assert set(three) == {"accuracy", "macro_f1"}
    assert list(report.reported_metrics(5)) == ["accuracy", "macro_f1"]
    assert list(report.reported_metrics(6)) == ["accuracy", "macro_f1", "top5_accuracy"]
    frame = pd.DataFrame({"actual": ["a", "b"], "cnn_predicted": ["a", "a"], "vit_predicted": ["b", "b"]})
    assert report.TestPredictions.from_frame(frame, ["a", "b", "c"]).top5 == {}  # no top-5 columns needed


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
    np.testing.assert_array_equal(
        report.confusion_counts(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), 3), [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    )


def test_per_class_spread_hardest_classes_and_species_errors():
    per_class = pd.DataFrame({"class": ["a", "b", "c", "d"], "f1": [0.5, 0.25, 1.0, 0.25]})
    assert list(report.hardest_classes(per_class, top=3)["class"]) == ["b", "d", "a"]
    spread = report.f1_spread(per_class)
    assert (spread["min"], spread["median"], spread["max"]) == (0.25, 0.375, 1.0)
    # classes 0, 1 cats, 2 dog; errors: 0->1 (within), 1->2 (across), 2->0 (across)
    errors = report.species_errors(np.array([0, 1, 2, 2]), np.array([1, 2, 0, 2]), ["cat", "cat", "dog"])
    assert errors == {"errors": 3, "across_species": 2, "within_species": 1, "species_accuracy": 0.5}


def test_gaps_come_from_the_splits_scored_alike():
    scores = {
        "train": {"accuracy": 0.9, "macro_f1": 0.8},
        "val": {"accuracy": 0.7, "macro_f1": 0.6},
        "test": {"accuracy": 0.6, "macro_f1": 0.65},
    }
    assert report.split_gaps(scores) == pytest.approx(
        {"train_val_accuracy": 0.2, "train_val_macro_f1": 0.2, "val_test_accuracy": 0.1, "val_test_macro_f1": -0.05}
    )


def test_progress_counts_the_training_compute_of_each_epoch():
    history = pd.DataFrame({"epoch": [1, 2], "elapsed_seconds": [3.0, 5.5], "val_macro_f1": [0.25, 0.5]})
    assert report.progress(history, 10.0, 4.0) == [(1, 14.0, 0.25), (2, 18.0, 0.5)]


def test_robustness_per_corruption_and_its_intervals_come_from_the_images():
    rows = [
        {
            "image": f"{i}.jpg",
            "label": i % 2,
            "corruption": c,
            "severity": s,
            "cnn": i % 2 if c == "clean" or (c == "blur" and i < 2) else 1 - i % 2,
            "vit": i % 2,
        }
        for c, s in [("clean", 0), ("blur", 1), ("blur", 2), ("jpeg", 1)]
        for i in range(8)
    ]
    out = report.robustness_by_corruption(pd.DataFrame(rows), 2, 200, 0)
    assert out["clean"] == {"cnn": 1.0, "vit": 1.0} and out["images"] == 8
    blur, jpeg, both = (out["corruptions"][c] for c in ("blur", "jpeg", "all"))
    assert blur["accuracy"] == {"cnn": 0.25, "vit": 1.0} and jpeg["accuracy"] == {"cnn": 0.0, "vit": 1.0}
    # Two classes: chance 50%, so a CNN at 25% lost all its skill above chance and more: (1 - 0.25) / (1 - 0.5).
    assert blur["skill_lost"] == {"cnn": pytest.approx(1.5), "vit": 0.0}
    assert both["accuracy"]["cnn"] == pytest.approx(4 / 24)  # all conditions of every image together
    estimate, low, high = blur["ahead"]
    assert estimate == pytest.approx(0.75) and 0 < low <= estimate <= high
    estimate, low, high = blur["lost_difference"]
    assert estimate == pytest.approx(-1.5) and low <= estimate <= high < 0
    # Two corruptions: each at the Bonferroni level of their family, all together at 95%.
    assert out["family_level"] == blur["level"] == pytest.approx(0.975) and both["level"] == 0.95
    # A CNN right on 5 of 8 clean images of two classes: most resamples leave it at or under chance, so its share of
    # skill lost has no interval.
    near = pd.DataFrame(
        [
            {
                **row,
                "cnn": row["label"] if row["corruption"] != "clean" or int(row["image"][0]) < 5 else 1 - row["label"],
            }
            for row in rows
        ]
    )
    assert report.robustness_by_corruption(near, 2, 200, 0)["corruptions"]["blur"]["lost_difference"] is None


def test_a_proper_scores_difference_is_paired_over_the_images():
    labels = np.zeros(50, int)
    scores = {
        "cnn": {"nll": np.full(50, 0.9), "brier": np.full(50, 0.4)},
        "vit": {"nll": np.linspace(0.2, 0.6, 50), "brier": np.full(50, 0.1)},
    }
    data = report.TestPredictions(labels, {"cnn": labels, "vit": labels}, {}, 3, None, scores)
    estimate, low, high = report.score_difference(data, "nll", 300, 0)
    assert estimate == pytest.approx(0.4 - 0.9) and low <= estimate <= high < 0
    assert report.score_difference(data, "brier", 300, 0) == pytest.approx((-0.3, -0.3, -0.3))


def test_stage_shares_and_bottleneck_thresholds():
    shares = report.stage_shares({"a": 30.0, "b": 10.0})
    assert list(shares["share"]) == [0.75, 0.25]
    assert [report.bottleneck(s) for s in (0.6, 0.5, 0.3, 0.09)] == [
        "data-bound",
        "data-bound",
        "partly data-bound",
        "compute-bound",
    ]


FITTED = {"cnn": (0.95, 0.85), "vit": (1.0, 0.82)}  # both fit: the CNN's gap +10, the probe's +18


def conclusions_for(
    difference,
    mcnemar_p=0.01,
    cnn_gflops=100.0,
    vit_gflops=10.0,
    caveats=(),
    fit=FITTED,
    cnn_best=0.6,
    num_classes=37,
    c_edge=None,
    generalisation=("Train - test: ...",),
):
    results = {m: {"difference": difference} for m in ("macro_f1", "accuracy")}
    target = verdict.compute_to_target(
        {"cnn": [(4, cnn_gflops / 2, cnn_best / 2), (8, cnn_gflops, cnn_best)], "vit": [(None, vit_gflops, 0.8)]},
        num_classes,
    )
    return report.conclusions(
        results,
        {"only_a": 3, "only_b": 20, "p_value": mcnemar_p},
        target,
        fit,
        num_classes,
        {"cnn": ("data-bound", 0.6), "vit": ("compute-bound", 0.02)},
        ["vit"],
        list(caveats),
        c_edge,
        list(generalisation),
    )


def test_a_probe_kept_at_the_edge_of_its_c_grid_is_called_possibly_under_tuned():
    assert not any("under-tuned" in s for s in conclusions_for((0.1, 0.05, 0.15)))
    edge = conclusions_for((0.1, 0.05, 0.15), c_edge="largest")[-1]
    assert edge.startswith("The probe kept the largest C of its grid") and "under-tuned" in edge


def test_conclusions_follow_the_numbers():
    probe_better = conclusions_for((0.12, 0.05, 0.2))
    assert probe_better[0].startswith("The probe is better than the CNN on test macro-F1 by 12.0 points")
    assert "95% CI [+5.0, +20.0]" in probe_better[0] and "McNemar p = 0.01" in probe_better[1]
    assert "the probe gets there with 10.0 times less compute" in probe_better[2]
    assert probe_better[3].startswith("The CNN fits its training data") and probe_better[4].startswith(
        "The probe overfits"
    )
    assert probe_better[5] == "Train - test: ..."  # the generalisation sentences, as given, in their place
    assert "CNN's training step is data-bound" in probe_better[6]
    assert "probe's step from images (backbone forward + update of what it trains) is compute-bound" in probe_better[7]
    assert "probe's best val macro-F1 came in its last epoch" in probe_better[8]

    cnn_better = conclusions_for(
        (-0.12, -0.2, -0.05), cnn_gflops=10.0, vit_gflops=11.0, fit={"cnn": (1.0, 0.8), "vit": (0.9, 0.85)}
    )
    assert cnn_better[0].startswith("The CNN is better than the probe on test macro-F1 by 12.0 points")
    assert "CNN - probe: 95% CI [+5.0, +20.0]" in cnn_better[0]
    assert "about the same compute" in cnn_better[2]

    tie = conclusions_for((0.02, -0.03, 0.07), mcnemar_p=0.4, cnn_gflops=10.0, vit_gflops=30.0)
    assert tie[0].startswith("No significant difference on test macro-F1") and "holds zero" in tie[0]
    assert "better" not in tie[0] and "borderline" not in tie[1]
    assert "the CNN gets there with 3.0 times less compute" in tie[2]


def test_an_underfitting_cnn_that_never_learned_gets_no_speed_claim():
    # The real run's shape: the CNN at 19% of its training images, best val macro-F1 3%, after 2 quick epochs.
    out = conclusions_for(
        (0.7, 0.65, 0.75),
        cnn_gflops=5.0,
        vit_gflops=45.0,
        cnn_best=0.03,
        fit={"cnn": (0.19, 0.089), "vit": (1.0, 0.82)},
    )
    assert out[2].startswith("Only the probe reaches the common target") and "less compute" not in " ".join(out)
    assert out[3].startswith("The CNN underfits")


def test_conclusions_say_when_the_two_tests_disagree_and_repeat_the_caveats():
    interval_only = conclusions_for((0.1, 0.01, 0.2), mcnemar_p=0.2, caveats=["random backbone weights"])
    assert "borderline" in interval_only[1] and "borderline" not in interval_only[0]
    assert all("Caveats: random backbone weights." in s for s in interval_only[:3])
    assert "Caveats" not in interval_only[3]
    mcnemar_only = conclusions_for((0.02, -0.01, 0.05), mcnemar_p=0.03)
    assert mcnemar_only[1].startswith("No significant difference") and "borderline" in mcnemar_only[1]


# ---------------------------------------------------------------- the whole document from a crafted run


def crafted_run(
    root,
    num_classes=3,
    train_per_class=4,
    test_per_class=4,
    cnn_f1=(0.2, 0.3),
    cnn_fit=(0.4, 0.3),
    probe_fit=(1.0, 0.9),
    probe_f1=0.9,
    cnn_seconds_per_epoch=10.0,
    probe_seconds=(20.0, 5.0),
    cnn_wrong_every=2,
    vit_wrong_every=5,
    vit_gflops=0.1,
):
    """A Run as the report stage would load it, from crafted numbers (no pipeline run): the CNN trained by
    epochs with val macro-F1 `cnn_f1`, the probe fitted by L-BFGS to `probe_f1`; `*_fit`: (train, val) accuracy."""
    from petlab.report import document as report_document

    classes = [f"class {i}" for i in range(num_classes)]
    labels = np.repeat(np.arange(num_classes), test_per_class)
    cnn_preds, vit_preds = labels.copy(), labels.copy()
    # By default the CNN wrong on every other test image, the probe on every fifth.
    cnn_preds[::cnn_wrong_every] = (labels[::cnn_wrong_every] + 1) % num_classes
    vit_preds[::vit_wrong_every] = (labels[::vit_wrong_every] + 1) % num_classes
    per_class = {
        m: pd.DataFrame(report_metrics_rows(labels, preds, classes))
        for m, preds in (("cnn", cnn_preds), ("vit", vit_preds))
    }
    epochs = len(cnn_f1)
    cnn_history = pd.DataFrame(
        {
            "epoch": range(1, epochs + 1),
            "train_loss": np.linspace(2, 1, epochs),
            "val_loss": np.linspace(2.1, 1.2, epochs),
            "val_accuracy": cnn_f1,
            "val_macro_f1": cnn_f1,
            "seconds": cnn_seconds_per_epoch,
            "elapsed_seconds": cnn_seconds_per_epoch * np.arange(1, epochs + 1),
        }
    )
    empty = pd.DataFrame(columns=cnn_history.columns)
    sweep = pd.DataFrame(
        {
            "c": [0.1, 1.0, 10.0],
            "log10_c": [-1, 0, 1],
            "train_loss": [1.0, 0.5, 0.3],
            "train_accuracy": [0.8, probe_fit[0], 1.0],
            "val_loss": [1.0, 0.6, 0.7],
            "val_accuracy": [0.7, probe_fit[1], 0.85],
            "val_macro_f1": [0.6, probe_f1, 0.8],
            "iterations": [20, 40, 80],
            "converged": [True, True, True],
        }
    )

    def scores(fit, test):
        top5 = {"top5_accuracy": 1.0} if num_classes > 5 else {}
        calibration = {
            "test": {
                "ece": 0.05,
                "ece_reference": 0.03,
                "ece_debiased": 0.02,
                "ece_p": 0.2,
                "nll": 0.5,
                "brier": 0.3,
                "ece_bins": 1,
            },
            "test_scaled": None,
            "temperature": None,
            "scaling": "too few images: under 150 a half",
        }
        return {
            **{
                split: {"accuracy": value, "macro_f1": value, **top5}
                for split, value in (("train", fit[0]), ("val", fit[1]), ("test", test))
            },
            "calibration": calibration,
        }

    counts = {"train": train_per_class, "val": 2, "test": test_per_class}
    profile = {
        "step_ms_mean": 10.0,
        "step_ms_p95": 12.0,
        "throughput_images_per_s": 100.0,
        "peak_rss_rise_mb": 50.0,
        "gflops_per_image": 0.1,
        "trainable_parameters": 1000,
        "total_parameters": 5000,
        "data_wait_share": 0.05,
        "device": "cpu",
        "batch_size": 8,
    }
    overfit = {"images": 8, "steps_to_100pct": 20, "max_steps": 200}
    return report_document.Run(
        root=root,
        class_names=classes,
        species=None,
        prepared={"source": "oxford_pets (crafted)"},
        sanity={
            "counts": {
                s: {"total": n * num_classes, "min_per_class": n, "max_per_class": n} for s, n in counts.items()
            },
            "unreadable": {"count": 0},
            "cross_split_duplicates": {"count": 0},
            "prepare": {
                "converted_to_rgb": {},
                "skipped_count": 0,
                "left_out_count": 0,
                "exif_rotated": 0,
                "resized_to_fit_jpeg": 0,
            },
            "overfit_cnn": overfit,
            "overfit_probe": overfit,
            "passed": True,
        },
        trained={
            "cnn": {
                "best_epoch": int(np.argmax(cnn_f1)) + 1,
                "last_epoch": epochs,
                "device": "cpu",
                "precision": "fp32",
                "steps_per_epoch": max(1, train_per_class * num_classes // 8),
            },
            "vit": {
                "selected_c": 1.0,
                "iterations": 40,
                "converged": True,
                "c_at_grid_edge": False,
                "route": "cached_features",
                "device": "cpu",
                "precision": "fp32",
                "pretrained": True,
                "weights_source": "crafted",
                "parameters": {"trainable": 11 * num_classes},
            },
        },
        histories={"cnn": cnn_history, "vit": empty},
        setup_seconds={"cnn": 0.0},
        sweep=sweep,
        probe_fit={"features_seconds": probe_seconds[0], "head_seconds": probe_seconds[1]},
        evaluation={
            "cnn": scores(cnn_fit, float(np.mean(cnn_preds == labels))),
            "vit": {**scores(probe_fit, float(np.mean(vit_preds == labels))), "pretrained": True},
        },
        per_class=per_class,
        predictions=pd.DataFrame(
            {
                "image": [f"test/{i}.jpg" for i in range(len(labels))],
                "actual": [classes[i] for i in labels],
                "cnn_predicted": [classes[i] for i in cnn_preds],
                "vit_predicted": [classes[i] for i in vit_preds],
                "cnn_confidence": 0.9,
                "vit_confidence": 0.8,
                "cnn_nll": np.where(cnn_preds == labels, 0.1, 2.3),
                "vit_nll": np.where(vit_preds == labels, 0.2, 1.6),
                "cnn_brier": 0.3,
                "vit_brier": 0.2,
                # wrong by one class: always among the 5 best where top-5 counts
                **({"cnn_top5": 1, "vit_top5": 1} if num_classes > 5 else {}),
            }
        ),
        profile={"cnn": profile, "vit": {**profile, "trainable_parameters": 2000, "gflops_per_image": vit_gflops}},
        top_ops={},
        stage_seconds={s: 1.0 for s in report_document.STAGES},
        batch_size={"cnn": 8, "vit": 8},
        robustness={
            m: {"corrupted_accuracy": 0.5, "test_images": len(labels), "test_per_class": test_per_class}
            for m in ("cnn", "vit")
        },
        reliability={m: [{"images": len(labels), "confidence": 0.9, "accuracy": 0.8}] for m in ("cnn", "vit")},
        robustness_scores=pd.DataFrame(
            [
                {"corruption": c, "severity": sev, "model": m, "accuracy": 0.5, "macro_f1": 0.5}
                for c, sev in [("clean", 0), ("jpeg", 1), ("jpeg", 2), ("jpeg", 3)]
                for m in ("cnn", "vit")
            ]
        ),
        robustness_predictions=pd.DataFrame(
            [
                {
                    "image": f"test/{i}.jpg",
                    "label": int(label),
                    "corruption": c,
                    "severity": sev,
                    "cnn": int(cnn_preds[i] if sev < 2 else label),
                    "vit": int(vit_preds[i]),
                }
                for c, sev in [("clean", 0), ("jpeg", 1), ("jpeg", 2), ("jpeg", 3)]
                for i, label in enumerate(labels)
            ]
        ),
    )


def report_metrics_rows(labels, preds, classes):
    from petlab.core.metrics import per_class_rows

    return per_class_rows(labels, preds, classes)


def build_document(tmp_path, **crafted) -> str:
    from petlab.core.params import parse_params
    from petlab.report import document as report_document

    params = parse_params(
        {"train_vit": {"model": "tf_efficientnet_lite0"}, "report": {"bootstrap": 200, "misclassified": 0}}
    )
    run = crafted_run(tmp_path, **crafted)
    return report_document.build(run, params, tmp_path / "reports", tmp_path / "reports/figures", "crafted")[0]


def conclusions_of(text: str) -> str:
    return text.split("## 7. Conclusions")[1].split("How these sentences are made")[0]


def test_a_tiny_three_class_run_is_warned_about_and_reports_no_top5(tmp_path):
    text = build_document(tmp_path)
    top = text.split("## 1. What ran")[0]
    assert "**few training images per class**: the train split holds 4 images per class, fewer than 100" in top
    assert "**one seed**" in top and "test images only" in top and "reports/study.md" in top
    assert "Top-5" not in text and "No top-5 accuracy: with 3 classes" in text
    # Named for what it is, in the title, in section 1 and in the figures' legends.
    assert text.startswith("# Run report: CNN from scratch vs. linear probe on tf_efficientnet_lite0")
    assert "*Probe* the linear probe on tf_efficientnet_lite0" in text
    conclusions = conclusions_of(text)
    # The CNN at 40% of its own training images (3 classes: under 66.7%): no claim from its train - test gap.
    assert "The CNN underfits" in conclusions and "Train - test: no comparison, as the CNN underfits" in conclusions
    assert "generalises better in" not in conclusions
    first = conclusions.strip().splitlines()[0]
    assert "Caveats: " in first and "few training images per class" in first.split("Caveats: ")[1]
    assert "under 66.7%" in text  # the rules text with this run's level


def test_the_report_sentences_turn_with_the_crafted_numbers(tmp_path):
    # 120 test images a class: intervals narrow enough to decide. The CNN right on half the test images, the probe
    # on four in five; the CNN's train - test gap (95 - 50) the larger.
    fitted = build_document(
        tmp_path / "a",
        cnn_f1=(0.5, 0.7, 0.8),
        cnn_fit=(0.95, 0.85),
        probe_fit=(1.0, 0.8),
        probe_f1=0.9,
        train_per_class=120,
        test_per_class=120,
    )
    conclusions = conclusions_of(fitted)
    assert "Train - test: the probe generalises better from its training images to new ones" in conclusions
    # The CNN's val curve stays over 66.7% from epoch 2, but its test macro-F1 is 50%: it does not count as reaching
    # the target (its val split touched it by luck).
    assert "Only the probe reaches the common target" in conclusions and "times less compute" not in conclusions
    assert "**few training images per class**" not in fitted and "**one seed**" in fitted
    assert "Caveat: one seed" in conclusions.split("Train - test: the probe generalises better")[1].split("\n")[0]
    swapped = conclusions_of(
        build_document(
            tmp_path / "b",
            cnn_f1=(0.5, 0.7, 0.8),
            cnn_fit=(0.95, 0.85),
            probe_fit=(1.0, 0.8),
            probe_f1=0.9,
            train_per_class=120,
            test_per_class=120,
            cnn_wrong_every=5,
            vit_wrong_every=2,
        )
    )
    assert "Train - test: the CNN generalises better" in swapped
    # Both at 80% on test: the CNN reaches 66.7% at epoch 2 (2 x 3 x 0.1 GFLOPs x 360 images), the probe at its
    # whole fit (its 366 train and val images through the backbone once, 10 GFLOPs each, and the sweep).
    both = conclusions_of(
        build_document(
            tmp_path / "c",
            cnn_f1=(0.5, 0.7, 0.8),
            cnn_fit=(0.95, 0.85),
            probe_fit=(1.0, 0.8),
            probe_f1=0.9,
            train_per_class=120,
            test_per_class=120,
            cnn_wrong_every=5,
            vit_wrong_every=5,
            vit_gflops=10.0,
        )
    )
    assert "the CNN reaches it at epoch 2 (216.0 GFLOPs)" in both
    assert "the CNN gets there with 16.9 times less compute" in both  # 3,660 GFLOPs of extraction for the probe


def test_a_two_class_run_with_a_cnn_at_chance_gets_no_speed_claim(tmp_path):
    text = build_document(
        tmp_path,
        num_classes=2,
        cnn_f1=(0.45, 0.5),
        cnn_fit=(0.55, 0.5),
        probe_fit=(1.0, 0.95),
        probe_f1=0.95,
        cnn_seconds_per_epoch=1.0,
        probe_seconds=(30.0, 8.0),
    )
    conclusions = conclusions_of(text)
    assert "Only the probe reaches the common target (val macro-F1 75.0%" in conclusions
    assert "times less compute" not in conclusions
    assert "Train - test: no comparison, as the CNN underfits" in conclusions
    assert "Top-5" not in text and "chance: 50.0%" in text
