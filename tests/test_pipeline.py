"""End to end: `dvc repro` of the whole pipeline on a tiny generated Oxford-IIIT Pet tree."""

import csv
import json
import re
from pathlib import Path

import torch
from PIL import Image

from conftest import dvc, run
from test_probe import check_probe


def ran_stages(proc) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", proc.stdout + proc.stderr))


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def check_prepared(project: Path) -> None:
    root = project / "data/oxford_pets"
    classes = load_json(root / "classes.json")
    assert classes == ["Abyssinian", "American Bulldog", "Bengal", "Beagle"]  # label order, torchvision's naming
    counts = {s: len(list((root / s).glob("*/*.jpg"))) for s in ("train", "val", "test")}
    assert counts == {"train": 36, "val": 12, "test": 20}  # 4 x 12 trainval split 3:1, 4 x 5 official test
    for path in root.glob("*/*/*.jpg"):
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and min(image.size) <= 256
    report = load_json(root / "report.json")
    assert report["converted_to_rgb"] == {"JPEG CMYK": 1, "JPEG L": 1, "PNG RGBA": 1}


def check_metrics(project: Path) -> None:
    sanity = load_json(project / "metrics/sanity.json")
    assert sanity["passed"] and sanity["cross_split_duplicates"]["count"] == 0
    assert sanity["counts"]["test"]["min_per_class"] == sanity["counts"]["test"]["max_per_class"] == 5
    assert 1 <= sanity["overfit_cnn"]["steps_to_100pct"] <= 200
    assert 1 <= sanity["overfit_probe"]["steps_to_100pct"] <= 200

    vit = load_json(project / "metrics/train_vit.json")
    assert vit["pretrained"] is False and "random" in vit["weights_source"]  # never mistaken for the real result
    assert vit["route"] == "cached_features" and vit["solver"] == "lbfgs"
    assert vit["parameters"]["trainable"] < vit["parameters"]["total"]
    cnn = load_json(project / "metrics/train_cnn.json")
    assert cnn["last_epoch"] == 3 and 1 <= cnn["best_epoch"] <= 3 and cnn["steps_per_epoch"] == 36 // 8
    assert "ties broken by lower val loss" in cnn["selection"]

    evaluation = load_json(project / "metrics/evaluate.json")
    for model in ("cnn", "vit"):
        for split in ("val", "test"):
            m = evaluation[model][split]
            assert 0 <= m["macro_f1"] <= 1 and 0 <= m["accuracy"] <= m["top5_accuracy"] <= 1
    assert evaluation["vit"]["pretrained"] is False

    profile = load_json(project / "metrics/profile.json")
    for model in ("cnn", "vit"):
        p = profile[model]
        assert p["steps_timed"] == 3 and 0 < p["step_ms_p50"] <= p["step_ms_p95"]
        assert p["throughput_images_per_s"] > 0 and p["gflops_per_image"] > 0 and len(p["top_ops"]) == 10
    assert profile["vit"]["trainable_parameters"] < profile["vit"]["total_parameters"]
    assert profile["vit"]["feature_extraction"]["step_ms_mean"] > profile["vit"]["cached_head_step"]["step_ms_mean"]
    for stage in ("prepare_oxford_pets", "sanity_data", "train_cnn", "train_vit", "profile", "evaluate"):
        assert load_json(project / f"metrics/timing/{stage}.json")["seconds"] > 0


def check_models_and_plots(project: Path) -> None:
    for name in ("cnn", "vit"):
        checkpoint = torch.load(project / f"models/{name}.pt", weights_only=True)
        assert set(checkpoint) >= {"model_state", "model_config", "class_names", "epoch"}
        with open(project / f"plots/evaluate/confusion_{name}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 20 and set(rows[0]) == {"actual", "predicted"}
        accuracy = sum(r["actual"] == r["predicted"] for r in rows) / len(rows)
        assert abs(accuracy - load_json(project / "metrics/evaluate.json")[name]["test"]["accuracy"]) < 1e-6
        for png in (f"confusion_{name}.png", f"confusion_{name}_normalized.png"):
            assert (project / "plots/evaluate" / png).stat().st_size > 1000
        with open(project / f"plots/train_{name}/history.csv") as f:
            assert len(list(csv.DictReader(f))) == (3 if name == "cnn" else 0)  # the probe's default has no epochs
        assert list((project / f"runs/{name}").glob("events.out.tfevents.*"))
        assert list((project / f"runs/profile/{name}").glob("*.pt.trace.json"))
    for png in ("class_counts.png", "samples_train.png", "samples_val.png", "samples_test.png"):
        assert (project / "plots/sanity" / png).is_file()
    assert (project / "plots/profile/comparison.png").is_file()


def test_dvc_repro_end_to_end(tiny_project):
    project = tiny_project
    first = dvc(project, "repro")
    assert ran_stages(first) == {"prepare_oxford_pets", "sanity_data", "train_cnn", "train_vit", "profile",
                                 "evaluate"}
    assert "random backbone weights" in first.stdout
    check_prepared(project)
    check_metrics(project)
    check_models_and_plots(project)
    check_probe(project)

    again = dvc(project, "repro")
    assert ran_stages(again) == set() and "up to date" in again.stdout

    plots_dir = project.parent / "plots_html"
    dvc(project, "plots", "show", "-o", str(plots_dir))
    html = (plots_dir / "index.html").read_text()
    for title in ("Confusion matrix, CNN (test)", "Confusion matrix, ViT probe (test, row-normalised)",
                  "Loss per epoch", "Linear probe, val score over C"):
        assert title in html
    assert "American Bulldog" in html  # the confusion data itself, with class names
    assert "log10_c" in html  # the probe's sweep, drawn over log10(C)

    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline run"], project)
    before = load_json(project / "metrics/train_vit.json")

    # A train_vit change re-runs train_vit and what depends on it, nothing else; here the training loop's
    # route for the head, which writes per-epoch history instead of the sweep.
    experiment = dvc(project, "exp", "run", "-S", "train_vit.solver=sgd", "-S", "train_vit.lr=0.02")
    assert ran_stages(experiment) == {"train_vit", "profile", "evaluate"}
    after = load_json(project / "metrics/train_vit.json")
    assert after != before and after["solver"] == "sgd" and after["last_epoch"] == 4 and "selected_c" not in after
    with open(project / "plots/train_vit/history.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    metrics_diff = json.loads(dvc(project, "metrics", "diff", "--json").stdout)
    assert "metrics/train_vit.json" in metrics_diff and "metrics/train_cnn.json" not in metrics_diff
    params_diff = json.loads(dvc(project, "params", "diff", "--json").stdout)
    lr_change = params_diff["params.yaml"]["train_vit.lr"]
    assert (lr_change["old"], lr_change["new"]) == (0.001, 0.02)
    shown = dvc(project, "exp", "show", "--json").stdout
    assert "0.02" in shown
