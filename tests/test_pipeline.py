"""End to end: `dvc repro` of the whole pipeline on a tiny generated Oxford-IIIT Pet tree."""

import csv
import json
import re
from pathlib import Path

import torch
from PIL import Image

from conftest import dvc, run


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
    assert report["generated"] is True  # made by petlab.synthetic, and every later report must say so
    assert load_json(root / "species.json") == {"Abyssinian": "cat", "American Bulldog": "dog", "Bengal": "cat",
                                                "Beagle": "dog"}


def check_metrics(project: Path) -> None:
    sanity = load_json(project / "metrics/sanity.json")
    assert sanity["passed"] and sanity["cross_split_duplicates"]["count"] == 0
    assert sanity["counts"]["test"]["min_per_class"] == sanity["counts"]["test"]["max_per_class"] == 5
    assert 1 <= sanity["overfit_cnn"]["steps_to_100pct"] <= 200
    assert 1 <= sanity["overfit_probe"]["steps_to_100pct"] <= 200

    vit = load_json(project / "metrics/train_vit.json")
    assert vit["pretrained"] is False and "random" in vit["weights_source"]  # never mistaken for the real result
    assert vit["route"] == "cached_features"
    assert vit["parameters"]["trainable"] < vit["parameters"]["total"]
    cnn = load_json(project / "metrics/train_cnn.json")
    assert cnn["epochs"] == 3 and 1 <= cnn["best_epoch"] <= 3

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
    for stage in ("prepare_oxford_pets", "sanity_data", "train_cnn", "train_vit", "profile", "evaluate", "report"):
        assert load_json(project / f"metrics/timing/{stage}.json")["seconds"] > 0
    for model in ("cnn", "vit"):
        assert 0 <= profile[model]["data_wait_share"] < 1
        with open(project / f"metrics/timing/train_{model}_epochs.csv") as f:
            times = list(csv.DictReader(f))
        assert [int(t["epoch"]) for t in times] == list(range(1, (3 if model == "cnn" else 4) + 1))
        assert float(times[-1]["elapsed_seconds"]) >= sum(float(t["seconds"]) for t in times) > 0


def check_models_and_plots(project: Path) -> None:
    for name in ("cnn", "vit"):
        checkpoint = torch.load(project / f"models/{name}.pt", weights_only=True)
        assert set(checkpoint) >= {"model_state", "model_config", "class_names", "epoch"}
        with open(project / f"plots/evaluate/confusion_{name}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 20 and set(rows[0]) == {"actual", "predicted"}
        accuracy = sum(r["actual"] == r["predicted"] for r in rows) / len(rows)
        assert abs(accuracy - load_json(project / "metrics/evaluate.json")[name]["test"]["accuracy"]) < 1e-6
        with open(project / "plots/evaluate/predictions_test.csv") as f:
            paired = list(csv.DictReader(f))
        assert [(r["actual"], r[f"{name}_predicted"]) for r in paired] == [(r["actual"], r["predicted"]) for r in rows]
        assert all((project / "data/oxford_pets" / r["image"]).is_file() for r in paired)
        for png in (f"confusion_{name}.png", f"confusion_{name}_normalized.png"):
            assert (project / "plots/evaluate" / png).stat().st_size > 1000
        with open(project / f"plots/train_{name}/history.csv") as f:
            assert len(list(csv.DictReader(f))) == (3 if name == "cnn" else 4)
        assert list((project / f"runs/{name}").glob("events.out.tfevents.*"))
        assert list((project / f"runs/profile/{name}").glob("*.pt.trace.json"))
    for png in ("class_counts.png", "samples_train.png", "samples_val.png", "samples_test.png"):
        assert (project / "plots/sanity" / png).is_file()
    assert (project / "plots/profile/comparison.png").is_file()


def check_report(project: Path) -> None:
    """reports/report.md: the warning a random-weights run needs, numbers equal to the metrics, every figure there."""
    text = (project / "reports/report.md").read_text()
    assert "this run cannot answer the question" in text and "**random backbone weights**" in text
    assert "**generated images**" in text and "**few epochs**" in text
    evaluation = load_json(project / "metrics/evaluate.json")
    for label, metric in (("Accuracy", "accuracy"), ("Macro-F1", "macro_f1"), ("Top-5 accuracy", "top5_accuracy")):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} "))
        _, cnn_test, vit_test, difference, cnn_val, vit_val = [c.strip() for c in row.strip("|").split("|")]
        for cell, model, split in ((cnn_test, "cnn", "test"), (vit_test, "vit", "test"), (cnn_val, "cnn", "val"),
                                   (vit_val, "vit", "val")):
            assert cell.split(" ")[0] == f"{evaluation[model][split][metric] * 100:.2f}", (label, model, split)
        expected = evaluation["vit"]["test"][metric] - evaluation["cnn"]["test"][metric]
        assert abs(float(difference.split(" ")[0]) - expected * 100) < 0.006
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert "figures/curves.png" in links and "figures/misclassified_cnn.png" in links
    for target in links:
        assert (project / "reports" / target).resolve().is_file(), target
    assert "## 7. Conclusions" in text and "Caveats: random backbone weights" in text


def test_dvc_repro_end_to_end(tiny_project):
    project = tiny_project
    first = dvc(project, "repro")
    assert ran_stages(first) == {"prepare_oxford_pets", "sanity_data", "train_cnn", "train_vit", "profile",
                                 "evaluate", "report"}
    assert "random backbone weights" in first.stdout
    check_prepared(project)
    check_metrics(project)
    check_models_and_plots(project)
    check_report(project)

    again = dvc(project, "repro")
    assert ran_stages(again) == set() and "up to date" in again.stdout

    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline run"], project)
    before = load_json(project / "metrics/train_vit.json")

    # A train_vit change re-runs train_vit and what depends on it, nothing else.
    experiment = dvc(project, "exp", "run", "-S", "train_vit.lr=0.02")
    assert ran_stages(experiment) == {"train_vit", "profile", "evaluate", "report"}
    assert load_json(project / "metrics/train_vit.json") != before
    metrics_diff = json.loads(dvc(project, "metrics", "diff", "--json").stdout)
    assert "metrics/train_vit.json" in metrics_diff and "metrics/train_cnn.json" not in metrics_diff
    params_diff = json.loads(dvc(project, "params", "diff", "--json").stdout)
    lr_change = params_diff["params.yaml"]["train_vit.lr"]
    assert (lr_change["old"], lr_change["new"]) == (0.001, 0.02)
    shown = dvc(project, "exp", "show", "--json").stdout
    assert "0.02" in shown

    plots_dir = project / "plots_html"
    dvc(project, "plots", "show", "-o", str(plots_dir))
    html = (plots_dir / "index.html").read_text()
    for title in ("Confusion matrix, CNN (test)", "Confusion matrix, ViT probe (test, row-normalised)",
                  "Loss per epoch"):
        assert title in html
    assert "American Bulldog" in html  # the confusion data itself, with class names
