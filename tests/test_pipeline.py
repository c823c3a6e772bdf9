"""End to end: `dvc repro` of the whole pipeline on a tiny generated Oxford-IIIT Pet tree."""

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
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
            assert len(list(csv.DictReader(f))) == (3 if name == "cnn" else 4)
        assert list((project / f"runs/{name}").glob("events.out.tfevents.*"))
        assert list((project / f"runs/profile/{name}").glob("*.pt.trace.json"))
    for png in ("class_counts.png", "samples_train.png", "samples_val.png", "samples_test.png"):
        assert (project / "plots/sanity" / png).is_file()
    assert (project / "plots/profile/comparison.png").is_file()


def check_remote_round_trip(project: Path, tmp: Path) -> None:
    """A colleague clones the repository, pulls data, models and the run-cache: nothing left to compute."""
    dvc(project, "remote", "add", "-d", "shared", str(tmp / "remote"))
    run(["git", "commit", "-qam", "shared remote"], project)
    dvc(project, "push", "--run-cache")
    clone = tmp / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp)
    dvc(clone, "pull", "--run-cache")
    assert ran_stages(dvc(clone, "repro")) == set()
    assert "in sync" in dvc(clone, "status", "-c").stdout
    assert torch.load(clone / "models/cnn.pt", weights_only=True)["epoch"] >= 1
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["evaluate"]["batch_size"] = 8
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(dvc(clone, "repro")) == {"evaluate"}


def check_queued_experiments(project: Path) -> None:
    """Two experiments queued as a grid run side by side in two workers, each with its own metrics."""
    dvc(project, "exp", "run", "--queue", "train_cnn", "-S", "train_cnn.lr=0.001,0.01")
    # The workers outlive `dvc queue start`; holding its output open would wait for them.
    subprocess.run(["env", "PETLAB_JOBS=2", sys.executable, "-m", "dvc", "queue", "start", "-j", "2"], cwd=project,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    deadline = time.monotonic() + 600
    while re.search(r"\b(Queued|Running)\b", status := dvc(project, "queue", "status").stdout):
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status.count("Success") == 2, status
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    experiments = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            data = exp["revs"][0]["data"]
            lr = data["params"]["params.yaml"]["data"]["train_cnn"]["lr"]
            experiments[lr] = data["metrics"]["metrics/train_cnn.json"]["data"]
    assert set(experiments) == {0.001, 0.01}
    assert experiments[0.001]["val_loss"] != experiments[0.01]["val_loss"]


def check_train_cnn_on_two_ranks(project: Path) -> None:
    """train_cnn as 2 gloo ranks through dvc; its checkpoint, evaluated by one process, gives what it recorded."""
    from torch import nn

    from petlab.data import PreparedData
    from petlab.experiments import image_loader, load_trained, make_context, transform_spec
    from petlab.params import load_params
    from petlab.train import validate

    proc = dvc(project, "exp", "run", "train_cnn", "-S", "dist.nproc_per_node=2")
    assert ran_stages(proc) == {"train_cnn"} and "2 ranks" in proc.stdout
    recorded = load_json(project / "metrics/train_cnn.json")
    assert recorded["ranks"] == 2
    checkpoint = torch.load(project / "models/cnn.pt", weights_only=True)
    params = load_params(project / "params.yaml")
    spec = transform_spec(checkpoint["model_config"])
    ctx = make_context(params, params.train_cnn.amp, params.train_cnn.channels_last, spec)
    data = PreparedData.open(project / "data/oxford_pets")
    loader = image_loader(data, "val", spec, params.train_cnn.batch_size, False, params, ctx.device)
    model = load_trained(checkpoint).to(ctx.device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    again = validate(model, loader, nn.CrossEntropyLoss(), ctx, data.num_classes)
    for key in ("accuracy", "macro_f1", "top5_accuracy", "loss"):
        assert abs(again[key] - recorded[f"val_{key}"]) < 1e-5, key


def test_dvc_repro_end_to_end(tiny_project):
    project = tiny_project
    first = dvc(project, "repro")
    assert ran_stages(first) == {"prepare_oxford_pets", "sanity_data", "train_cnn", "train_vit", "profile",
                                 "evaluate"}
    assert "random backbone weights" in first.stdout
    check_prepared(project)
    check_metrics(project)
    check_models_and_plots(project)

    again = dvc(project, "repro")
    assert ran_stages(again) == set() and "up to date" in again.stdout

    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline run"], project)
    check_remote_round_trip(project, project.parent)
    check_queued_experiments(project)
    before = load_json(project / "metrics/train_vit.json")

    # A train_vit change re-runs train_vit and what depends on it, nothing else.
    experiment = dvc(project, "exp", "run", "-S", "train_vit.lr=0.02")
    assert ran_stages(experiment) == {"train_vit", "profile", "evaluate"}
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

    check_train_cnn_on_two_ranks(project)
