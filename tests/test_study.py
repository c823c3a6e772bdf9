"""The study: its subsets, the CNN's budget, its statistics and rules, and the study end to end under DVC."""

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import f1_score

from conftest import REPO, dvc, run
from petlab.params import TrainCNNParams
from petlab.runtime import PipelineError
from petlab.study import cnn_budget, decode_predictions, draw_subset, encode_predictions, late_gain, parse_cell, \
    steps_per_epoch
from petlab.study_stats import Comparison, beats, compare, crossing, time_to_target, verdict

# ---------------------------------------------------------------- subsets

LABELS = [0] * 12 + [1] * 7 + [2] * 20  # classes of different sizes, in the train split's order


def test_subsets_are_stratified_nested_and_seeded():
    for seed in (0, 1):
        subsets = {n: draw_subset(LABELS, n, seed) for n in (1, 3, 5, 10, "all")}
        for n, chosen in subsets.items():
            counts = np.bincount(np.array(LABELS)[chosen], minlength=3).tolist()
            assert counts == ([12, 7, 20] if n == "all" else [min(n, 12), min(n, 7), min(n, 20)])  # a small class: all
            assert chosen == sorted(set(chosen))
        for small, large in [(1, 3), (3, 5), (5, 10), (10, "all")]:
            assert set(subsets[small]) <= set(subsets[large])  # each smaller one inside the larger
    assert draw_subset(LABELS, 5, 0) == draw_subset(LABELS, 5, 0)  # seeded: the same draw again
    assert draw_subset(LABELS, 5, 0) != draw_subset(LABELS, 5, 1)  # another seed, another subset
    assert draw_subset(LABELS, "all", 0) == draw_subset(LABELS, "all", 1) == list(range(len(LABELS)))


def test_a_class_draw_does_not_depend_on_the_other_classes():
    alone = draw_subset([0] * 12, 4, 3)
    assert [i for i in draw_subset(LABELS, 4, 3) if LABELS[i] == 0] == alone


def test_cell_arguments():
    assert parse_cell("cnn", ["3", "25"]) == (3, 25)
    assert parse_cell("probe", ["0", "all"]) == (0, "all")
    for bad in (["3"], ["x", "5"], ["1", "0"], ["1", "All"], ["1", "5", "6"]):
        with pytest.raises(PipelineError, match="usage: python -m stages.study_cnn SEED IMAGES_PER_CLASS"):
            parse_cell("cnn", bad)


@pytest.mark.parametrize("study, message", [
    ({"images_per_class": [5, "al"]}, r"study\.images_per_class\[1\] must be an integer or 'all', got 'al'"),
    ({"images_per_class": [2.5]}, r"study\.images_per_class\[0\] must be an integer or 'all', got 2\.5"),
    ({"images_per_class": [5, 5]}, r"study\.images_per_class = \[5, 5\] is out of range"),
    ({"images_per_class": [0, "all"]}, r"study\.images_per_class = \[0, 'all'\] is out of range"),
    ({"seeds": []}, r"study\.seeds = \[\] is out of range"),
    ({"seeds": [1, 1]}, r"study\.seeds = \[1, 1\] is out of range"),
    ({"min_steps": -1}, r"study\.min_steps = -1 is out of range"),
])
def test_study_params_are_checked_by_the_schema(study, message):
    from petlab.params import ParamsError, parse_params

    with pytest.raises(ParamsError, match=message):
        parse_params({"study": study})
    assert parse_params({"study": {"images_per_class": [3, "all"]}}).study.images_per_class == [3, "all"]


def test_cell_stages_refuse_in_one_line(tmp_path):
    """A bad command line or a probe route the study does not run: one line, exit 1, nothing written."""
    from test_stage_refusals import light_project

    project = light_project(tmp_path / "project", {"train_vit": {"solver": "sgd"}})
    for module, args, message in [
            ("study_cnn", ["0", "five"],
             "study_cnn: error: usage: python -m stages.study_cnn SEED IMAGES_PER_CLASS|all; got 0 five"),
            ("study_probe", ["1", "5"],
             "study/probe-1-5: error: the study's probe is the L-BFGS linear probe on cached features")]:
        proc = run([sys.executable, "-m", f"stages.{module}", *args], project, check=False)
        assert proc.returncode == 1 and proc.stderr.strip().startswith(message), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (project / "study").exists() and not (project / "metrics").exists()


def test_predictions_round_trip():
    assert decode_predictions(encode_predictions([3, 0, 12])).tolist() == [3, 0, 12]


# ---------------------------------------------------------------- the CNN's budget


def test_budget_floors_the_steps_and_scales_the_warmup():
    optim = TrainCNNParams(epochs=30, batch_size=64, warmup_epochs=1.0)
    assert steps_per_epoch(177, 64) == 2 and steps_per_epoch(40, 64) == 1 and steps_per_epoch(128, 64) == 2
    small = cnn_budget(optim, 177, 1000)  # the case: 2 steps an epoch
    assert small.epochs == 500 and small.warmup_epochs == pytest.approx(500 / 30)
    assert small.epochs * steps_per_epoch(177, 64) >= 1000
    assert (small.lr, small.batch_size, small.weight_decay) == (optim.lr, optim.batch_size, optim.weight_decay)
    full = cnn_budget(optim, 2944, 1000)  # 46 steps x 30 epochs already exceed the floor: the main recipe
    assert full == optim
    assert cnn_budget(optim, 177, 0) == optim
    assert cnn_budget(optim, 640, 301).epochs == 31  # ceil(301 / 10)


def test_late_gain():
    assert late_gain([0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]) == 0  # flat over the last quarter
    assert late_gain([0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.35, 0.4]) == pytest.approx(0.1)
    assert late_gain([0.5, 0.4]) == 0


# ---------------------------------------------------------------- statistics


def sklearn_macro_f1(labels, preds, k):
    return f1_score(labels, preds, labels=np.arange(k), average="macro", zero_division=0)


def test_point_estimate_is_the_mean_over_seeds_and_p_counts_paired_seeds():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    cnn = np.array([[0, 1, 2, 0, 1, 2, 0, 1],  # seed 0: all right
                    [1, 1, 1, 1, 1, 1, 1, 1],  # seed 1: always class 1
                    [0, 1, 2, 0, 0, 0, 0, 0]])
    probe = np.array([[0, 1, 2, 0, 1, 2, 0, 0],  # one wrong: the CNN wins seed 0
                      [0, 1, 2, 0, 1, 2, 0, 1],  # the probe wins seed 1
                      [0, 1, 2, 0, 0, 0, 0, 0]])  # a tie on seed 2
    for metric in ("accuracy", "macro_f1"):
        c = compare(labels, cnn, probe, metric, 3, resamples=400, seed=0)
        score = (lambda y, p: (y == p).mean()) if metric == "accuracy" else (lambda y, p: sklearn_macro_f1(y, p, 3))
        expected = np.mean([score(labels, probe[s]) - score(labels, cnn[s]) for s in range(3)])
        assert c.difference == pytest.approx(expected)
        assert c.p_probe_better == pytest.approx((0 + 1 + 0.5) / 3)
        low, high = c.difference_interval
        assert low <= c.difference <= high and low < 0 < high  # seed 0 against seed 1: no clear winner
        assert 0 <= c.p_interval[0] <= c.p_probe_better <= c.p_interval[1] <= 1


def test_the_interval_holds_training_randomness_not_only_test_sampling():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)

    def model(accuracy: float) -> np.ndarray:
        return np.where(rng.random(400) < accuracy, labels, (labels + 1) % 4)

    # The same mean gap, once with seeds that agree and once with seeds that disagree strongly.
    steady = compare(labels, np.stack([model(0.5)] * 3), np.stack([model(0.6)] * 3), "accuracy", 4, 1000, 1)
    cnn = np.stack([model(0.3), model(0.5), model(0.7)])
    scattered = compare(labels, cnn, np.stack([model(0.6)] * 3), "accuracy", 4, 1000, 1)
    width = lambda c: c.difference_interval[1] - c.difference_interval[0]
    assert width(scattered) > 1.5 * width(steady)
    assert steady.difference_interval[0] > 0 and steady.p_interval == (1.0, 1.0)  # a clear, steady win
    assert scattered.p_interval[0] < 0.5  # one seed of three loses: P's interval reaches below a half


def test_one_seed_gives_a_test_sampling_interval_like_the_single_run_report():
    labels = np.arange(200) % 5
    cnn = np.where(np.arange(200) % 3 == 0, labels, (labels + 1) % 5)[None, :]
    probe = np.where(np.arange(200) % 4 != 0, labels, (labels + 2) % 5)[None, :]
    c = compare(labels, cnn, probe, "macro_f1", 5, 1000, 0)
    assert c.difference == pytest.approx(sklearn_macro_f1(labels, probe[0], 5) - sklearn_macro_f1(labels, cnn[0], 5))
    assert 0 < c.difference_interval[0] < c.difference < c.difference_interval[1]
    assert c.p_probe_better == 1.0


def test_beats_counts_ties_half():
    assert beats(np.array([0.1, 0.0, -0.2])).tolist() == [1.0, 0.5, 0.0]


# ---------------------------------------------------------------- rules


def comparison(low: float, high: float, p_low: float, p_high: float) -> Comparison:
    return Comparison((low + high) / 2, (low, high), (p_low + p_high) / 2, (p_low, p_high))


def test_verdict_needs_both_the_difference_and_the_probability():
    assert verdict(comparison(0.02, 0.10, 0.67, 1.0)) == "probe"
    assert verdict(comparison(-0.10, -0.02, 0.0, 0.33)) == "cnn"
    assert verdict(comparison(-0.01, 0.10, 0.67, 1.0)) == "undecided"  # the interval holds a tie
    assert verdict(comparison(0.02, 0.10, 0.33, 1.0)) == "undecided"  # the mean from one lucky seed
    assert verdict(comparison(-0.10, -0.02, 0.0, 0.67)) == "undecided"


def test_crossing_rule():
    sizes = ["5", "10", "25", "50", "all"]
    assert crossing(sizes, ["probe"] * 5) == ("The curves do not cross within the sizes tried: the probe is ahead "
                                              "at every size.")
    assert crossing(sizes, ["probe", "probe", "undecided", "cnn", "cnn"]) == (
        "The curves cross between 10 and 50 images per class: the probe is ahead at 10, the CNN at 50.")
    assert crossing(sizes, ["cnn", "undecided", "undecided", "undecided", "probe"]).startswith(
        "The curves cross between 5 and all images per class: the CNN is ahead at 5")
    partial = crossing(sizes, ["probe", "probe", "probe", "undecided", "undecided"])
    assert partial.startswith("No crossing is shown: the probe is ahead at 5, 10, 25") and "50, all" in partial
    assert "cannot say" in crossing(sizes, ["undecided"] * 5)


def test_time_to_a_common_target():
    curve, elapsed = [0.1, 0.3, 0.5, 0.55], [10.0, 20.0, 30.0, 40.0]
    t = time_to_target(curve, elapsed, probe_best=0.5, probe_seconds=4.0, num_classes=10)
    assert t == {"target": 0.5, "cnn_seconds": 30.0, "probe_seconds": 4.0, "cnn_reaches_probe_best": True,
                 "probe_reaches_cnn_best": False}
    t = time_to_target(curve, elapsed, probe_best=0.9, probe_seconds=4.0, num_classes=10)  # the CNN is weaker
    assert (t["target"], t["cnn_seconds"], t["cnn_reaches_probe_best"], t["probe_reaches_cnn_best"]) == \
        (0.55, 40.0, False, True)
    # A CNN that never learns (verdict.learned: under 19% val macro-F1 with 10 classes) gets no time compared.
    t = time_to_target([0.05, 0.1, 0.15], [1.0, 2.0, 3.0], probe_best=0.9, probe_seconds=60.0, num_classes=10)
    assert t["cnn_seconds"] is None and t["probe_seconds"] is None and t["target"] == 0.15
    t = time_to_target([0.05, 0.1, 0.2], [1.0, 2.0, 3.0], probe_best=0.9, probe_seconds=60.0, num_classes=10)
    assert (t["cnn_seconds"], t["probe_seconds"]) == (3.0, 60.0)  # 20% is learned: the same rule as the report


# ---------------------------------------------------------------- end to end under DVC

STUDY = {"seeds": [0, 1], "images_per_class": [2, "all"], "min_steps": 8, "bootstrap": 200}
CELLS = {f"study/dvc.yaml:{model}@{seed}-{size}" for model in ("cnn", "probe") for seed in (0, 1)
         for size in (2, "all")}


def ran_stages(proc) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", proc.stdout + proc.stderr)


def add_study(project: Path) -> None:
    """The study's pipeline and a 2 seeds x 2 sizes ladder, committed, with a local folder as the shared remote."""
    (project / "study").mkdir()
    shutil.copy2(REPO / "study/dvc.yaml", project / "study/dvc.yaml")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["study"] = STUDY
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(project, "remote", "add", "-d", "shared", str(project.parent / "remote"))
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "study"], project)


def test_study_end_to_end(tiny_project, tmp_path):
    project = tiny_project
    add_study(project)

    # Another machine runs one cell and shares it through the remote (run cache and outputs) ...
    other = tmp_path / "other"
    run(["git", "clone", "-q", str(project), str(other)], tmp_path)
    assert "study/dvc.yaml:cnn@1-all" in ran_stages(dvc(other, "repro", "study/dvc.yaml:cnn@1-all"))
    dvc(other, "push", "--run-cache")
    # ... and the study here takes that cell from the remote and runs every other one.
    # The whole study in one command: on a busy machine it may take longer than one dvc call is usually given.
    first = run([sys.executable, "-m", "dvc", "repro", "--pull", "study/dvc.yaml"], project, timeout=1800)
    ran = ran_stages(first)
    assert "Stage 'study/dvc.yaml:cnn@1-all' is cached - skipping run" in first.stdout + first.stderr
    assert set(ran) >= CELLS - {"study/dvc.yaml:cnn@1-all"} | {"study/dvc.yaml:study_features",
                                                                "study/dvc.yaml:study_report"}
    assert "study/dvc.yaml:cnn@1-all" not in ran
    assert ran.count("study/dvc.yaml:study_features") == 1  # one feature extraction serves every probe cell
    check_cells(project)
    check_report(project)
    # The default `dvc repro` is the main pipeline only: it would run no stage of study/dvc.yaml. (The dry run
    # stops with an error at profile, whose input models/cnn.pt does not exist yet; the stages before it are named.)
    dry = ran_stages(dvc(project, "repro", "--dry", check=False))
    assert "train_cnn" in dry and not [s for s in dry if s.startswith("study/")]

    # Nothing changed: nothing of the study would run again (backbone_weights always checks its params, in seconds).
    assert set(ran_stages(dvc(project, "repro", "--dry", "study/dvc.yaml"))) <= {"backbone_weights"}

    # A CNN param changed: the CNN cells would run, nothing of the probe. (--dry names the stages whose own inputs
    # changed; the report, which reads the cells, runs after them.)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train_cnn"]["dropout"] = 0.2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = set(ran_stages(dvc(project, "repro", "--dry", "study/dvc.yaml")))
    assert changed - {"backbone_weights"} == {s for s in CELLS if ":cnn@" in s}


def check_cells(project: Path) -> None:
    cells = {(m, s, n): json.loads((project / f"study/cells/{m}/{s}-{n}.json").read_text())
             for m in ("cnn", "probe") for s in (0, 1) for n in (2, "all")}
    for (m, s, n), cell in cells.items():
        assert (cell["model"], cell["seed"], cell["images_per_class"]) == (m, s, n)
        assert cell["train_images"] == (8 if n == 2 else 36)  # 2 of each of 4 classes; all 9 of each
        assert cell["subset"] == cells["cnn", s, n]["subset"]  # both models of a seed and size: the same images
        assert len(decode_predictions(cell["test_predicted"])) == 20
        assert "top5_accuracy" not in cell["test"]  # 4 classes: top-5 says nothing
        predicted = decode_predictions(cell["test_predicted"])
        labels = np.repeat(np.arange(4), 5)  # the test split's order: class, then file name
        assert cell["test"]["accuracy"] == pytest.approx((predicted == labels).mean())
    assert cells["cnn", 0, 2]["subset"] != cells["cnn", 1, 2]["subset"]  # another seed, another subset
    assert cells["cnn", 0, "all"]["subset"] == cells["cnn", 1, "all"]["subset"]
    small, full = cells["cnn", 0, 2], cells["cnn", 0, "all"]
    # The floor of 8 steps: 8 images at batch 8 take 1 step an epoch, so 8 epochs; all 36 take 4, so 3 epochs do.
    assert (small["epochs"], small["steps"], small["last_epoch"]) == (8, 8, 8)
    assert (full["epochs"], full["steps"]) == (3, 12)
    assert len(small["val_curve"]["elapsed_seconds"]) == 8 and 1 <= small["best_epoch"] <= 8


def check_report(project: Path) -> None:
    text = (project / "reports/study.md").read_text()
    for needed in ("random backbone weights", "generated images", "stand-in backbone", "## Learning curves",
                   "P(probe > CNN)", "## Time to a common target", "## What a seed changes"):
        assert needed in text
    for png in ("learning_curves.png", "difference.png"):
        assert (project / "reports/study_figures" / png).stat().st_size > 1000
    summary = json.loads((project / "metrics/study.json").read_text())
    assert set(summary["sizes"]) == {"2", "all"} and summary["seeds"] == [0, 1]
    for entry in summary["sizes"].values():
        low, estimate, high = sorted(entry["probe_minus_cnn_macro_f1"])
        assert estimate == entry["probe_minus_cnn_macro_f1"][0] and low <= estimate <= high
        assert entry["verdict_macro_f1"] in ("probe", "cnn", "undecided")


def crafted_study(probe_accuracy: dict, cnn_accuracy: dict):
    """A Study of 3 seeds x sizes 5 and all on 4 classes x 25 test images, each cell right on the given share."""
    from petlab.study_report import Study

    labels = np.repeat(np.arange(4), 25)
    rng = np.random.default_rng(0)
    cells = {}
    for model, accuracy in (("probe", probe_accuracy), ("cnn", cnn_accuracy)):
        for size, share in accuracy.items():
            for seed in (0, 1, 2):
                right = rng.random(100) < share
                preds = np.where(right, labels, (labels + 1) % 4)
                cells[model, seed, size] = {
                    "subset": f"{seed}-{size}", "train_images": 20 if size == 5 else 40, "test_predicted":
                    encode_predictions(preds), "test": {"accuracy": float(right.mean()), "macro_f1": 0.0}}
    return Study([0, 1, 2], [5, "all"], cells, labels, ["a", "b", "c", "d"], 40, {"source": "oxford_pets"},
                 {"timm_model": "vit_tiny_patch16_224", "pretrained": True, "seconds": {}, "images": {}})


def test_conclusions_follow_the_intervals_and_flip_with_the_numbers():
    from petlab.study_report import comparisons, conclusions

    study = crafted_study({5: 0.9, "all": 0.6}, {5: 0.4, "all": 0.6})
    sentences = conclusions(study, comparisons(study, 300, 0))
    assert sentences[0].startswith("At 5 training images per class, the probe is better: probe - CNN +")
    assert sentences[1].startswith("With all training images (") and ", no conclusion: " in sentences[1]
    flipped = crafted_study({5: 0.4, "all": 0.6}, {5: 0.9, "all": 0.6})
    assert conclusions(flipped, comparisons(flipped, 300, 0))[0].startswith(
        "At 5 training images per class, the CNN is better: probe - CNN -")
