"""End to end: `dvc repro` of the whole pipeline on a tiny generated Oxford-IIIT Pet tree."""

import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import dvc, run
from PIL import Image
from test_probe import check_probe
from test_readme import bash_blocks, commands, section

from petlab.measure.evaluation import confusion_labels


def ran_stages(proc) -> set[str]:
    return set(re.findall(r"Running stage '([\w@]+)'", proc.stdout + proc.stderr))


CNN_SIDE = {"profile@cnn", "evaluate@cnn", "robustness@cnn"}  # the per-model stages of each side
VIT_SIDE = {"profile@vit", "evaluate@vit", "robustness@vit"}


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
    assert report["generated"] is True  # made by petlab.prepare.synthetic, and every later report must say so
    assert load_json(root / "species.json") == {
        "Abyssinian": "cat",
        "American Bulldog": "dog",
        "Bengal": "cat",
        "Beagle": "dog",
    }
    # A clean tree: nothing left out, rotated or resized, and the same counts in the sanity metrics.
    assert (report["left_out_count"], report["exif_rotated"], report["resized_to_fit_jpeg"]) == (0, 0, 0)
    sanity = load_json(project / "metrics/sanity.json")["prepare"]
    assert (sanity["left_out_count"], sanity["exif_rotated"], sanity["resized_to_fit_jpeg"]) == (0, 0, 0)


def check_metrics(project: Path) -> None:
    sanity = load_json(project / "metrics/sanity.json")
    assert sanity["passed"] and sanity["cross_split_duplicates"]["count"] == 0
    assert sanity["counts"]["test"]["min_per_class"] == sanity["counts"]["test"]["max_per_class"] == 5
    assert 1 <= sanity["overfit_cnn"]["steps_to_100pct"] <= 200
    assert 1 <= sanity["overfit_probe"]["steps_to_100pct"] <= 200

    vit = load_json(project / "metrics/train_vit.json")
    run_record = load_json(project / "plots/train_vit/run.json")  # the run in words, beside the metrics
    assert vit["pretrained"] is False and "random" in run_record["weights_source"]  # never mistaken for the real one
    assert run_record["route"] == "cached_features" and run_record["solver"] == "lbfgs"
    for model in ("cnn", "vit"):  # `dvc metrics show` and `diff` are about the models: no text in the metrics
        assert not [k for k, v in load_json(project / f"metrics/train_{model}.json").items() if isinstance(v, str)]
        assert not [
            k for k, v in load_json(project / f"metrics/evaluate/{model}.json")[model].items() if isinstance(v, str)
        ]
    assert vit["parameters"]["trainable"] < vit["parameters"]["total"]
    cnn = load_json(project / "metrics/train_cnn.json")
    assert cnn["last_epoch"] == 3 and 1 <= cnn["best_epoch"] <= 3 and cnn["steps_per_epoch"] == 36 // 8
    assert "selection" not in cnn  # the rule's wording: in the checkpoint, not among the compared metrics
    checkpoint = torch.load(project / "models/cnn.pt", weights_only=True)
    assert "ties broken by lower val loss" in checkpoint["selection"]["selection"]

    evaluation = per_model(project, "metrics/evaluate")
    for model in ("cnn", "vit"):
        for split in ("train", "val", "test"):  # every split scored alike, the train split too
            m = evaluation[model][split]
            assert 0 <= m["macro_f1"] <= 1 and 0 <= m["accuracy"] <= 1
            assert "top5_accuracy" not in m  # 4 classes: every label is among any model's 5 best
    assert evaluation["vit"]["pretrained"] is False
    for model in ("cnn", "vit"):  # calibration on test: 20 images are too few to fit a temperature on
        calibration = evaluation[model]["calibration"]
        assert calibration["temperature"] is None and calibration["test_scaled"] is None
        c = calibration["test"]
        assert c["ece_bins"] == 2 and c["nll"] >= 0 and 0 <= c["brier"] <= 2 and 0 < c["ece_p"] <= 1
        assert c["ece_debiased"] == pytest.approx(max(0.0, c["ece"] - c["ece_reference"]), abs=2e-6)
        with open(project / f"plots/evaluate/reliability_{model}.csv") as f:
            bins = list(csv.DictReader(f))
        assert sum(int(b["images"]) for b in bins) == 20
    robustness = per_model(project, "metrics/robustness")
    for model in ("cnn", "vit"):
        r = robustness[model]
        assert r["test_images"] == 8 and r["test_per_class"] == 2
        assert 0 <= r["corrupted_accuracy"] <= 1 and r["relative_drop_accuracy"] == pytest.approx(
            1 - r["corrupted_accuracy"] / r["clean_accuracy"], abs=1e-5
        )
    for model in ("cnn", "vit"):
        with open(project / f"plots/robustness/scores_{model}.csv") as f:
            assert len(list(csv.DictReader(f))) == 16  # clean, then 5 corruptions x 3 severities

    profile = per_model(project, "metrics/profile")
    for model in ("cnn", "vit"):
        p = profile[model]
        assert p["steps_timed"] == 3 and 0 < p["step_ms_p50"] <= p["step_ms_p95"]
        assert p["throughput_images_per_s"] > 0 and p["gflops_per_image"] > 0 and "top_ops" not in p
    assert profile["vit"]["trainable_parameters"] < profile["vit"]["total_parameters"]
    assert profile["vit"]["feature_extraction"]["step_ms_mean"] > profile["vit"]["cached_head_step"]["step_ms_mean"]
    for stage in (
        "prepare_oxford_pets",
        "sanity_data",
        "train_cnn",
        "train_vit",
        "profile_cnn",
        "profile_vit",
        "evaluate_cnn",
        "evaluate_vit",
        "robustness_cnn",
        "robustness_vit",
        "report",
    ):
        assert load_json(project / f"metrics/timing/{stage}.json")["seconds"] > 0
    for model in ("cnn", "vit"):
        assert 0 <= profile[model]["data_wait_share"] < 1
    check_epoch_times(project, "cnn", 3)
    check_epoch_times(project, "vit", 0)  # the L-BFGS probe has no epochs: the header only


def per_model(project: Path, folder: str) -> dict:
    """The per-model stages' files of a folder (metrics/evaluate/cnn.json, ...), each keyed by its model, as one."""
    return {m: load_json(project / folder / f"{m}.json")[m] for m in ("cnn", "vit")}


def check_epoch_times(project: Path, model: str, epochs: int) -> None:
    """Each epoch's wall seconds, apart from the history; elapsed counts from the start of training."""
    with open(project / f"metrics/timing/train_{model}_epochs.csv") as f:
        reader = csv.DictReader(f)
        times = list(reader)
    assert reader.fieldnames == ["epoch", "seconds", "elapsed_seconds"]
    assert [int(t["epoch"]) for t in times] == list(range(1, epochs + 1))
    if times:
        assert float(times[-1]["elapsed_seconds"]) >= sum(float(t["seconds"]) for t in times) - 0.01 > 0


def check_models_and_plots(project: Path) -> None:
    for name in ("cnn", "vit"):
        checkpoint = torch.load(project / f"models/{name}.pt", weights_only=True)
        assert set(checkpoint) >= {"model_state", "model_config", "class_names", "epoch"}
        with open(project / f"plots/evaluate/confusion_{name}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 20 and set(rows[0]) == {"actual", "predicted"}
        accuracy = sum(r["actual"] == r["predicted"] for r in rows) / len(rows)
        assert abs(accuracy - load_json(project / f"metrics/evaluate/{name}.json")[name]["test"]["accuracy"]) < 1e-6
        with open(project / f"plots/evaluate/predictions_test_{name}.csv") as f:
            paired = list(csv.DictReader(f))
        classes = load_json(project / "data/oxford_pets/classes.json")
        numbered = dict(zip(classes, confusion_labels(classes)))  # the confusion rows' "07 Beagle" names
        assert [(numbered[r["actual"]], numbered[r[f"{name}_predicted"]]) for r in paired] == [
            (r["actual"], r["predicted"]) for r in rows
        ]
        assert all((project / "data/oxford_pets" / r["image"]).is_file() for r in paired)
        for png in (f"confusion_{name}.png", f"confusion_{name}_normalized.png"):
            assert (project / "plots/evaluate" / png).stat().st_size > 1000
        with open(project / f"plots/train_{name}/history.csv") as f:
            assert len(list(csv.DictReader(f))) == (3 if name == "cnn" else 0)  # the probe's default has no epochs
        assert list((project / f"runs/{name}").glob("events.out.tfevents.*"))
        assert list((project / f"runs/profile/{name}").glob("*.pt.trace.json"))
    for png in ("class_counts.png", "samples_train.png", "samples_val.png", "samples_test.png"):
        assert (project / "plots/sanity" / png).is_file()
    assert (project / "reports/figures/profile.png").is_file()
    top_ops = {m: load_json(project / f"plots/profile/top_ops_{m}.json")[m] for m in ("cnn", "vit")}
    assert [len(top_ops[m]) for m in ("cnn", "vit")] == [10, 10] and top_ops["cnn"][0]["self_cpu_ms_total"] > 0


def check_metrics_are_scalars(project: Path) -> None:
    """`dvc metrics show` stays readable: no lists in a metrics file (they go to plots/, like the top ops)."""

    def lists_in(value, key=""):
        if isinstance(value, dict):
            return [k for name, v in value.items() for k in lists_in(v, f"{key}.{name}")]
        return [key] if isinstance(value, list) else []

    for path in sorted((project / "metrics").rglob("*.json")):
        assert lists_in(load_json(path)) == [], path


def check_backbone(project: Path) -> None:
    """The probe's backbone is a DVC-tracked file whose record says where it came from, with its SHA-256."""
    import hashlib

    from petlab.models.backbone import backbone_info

    record = load_json(project / "metrics/backbone.json")
    weights = project / "models/backbone.safetensors"
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["model"] == "test_vit" and record["pretrained"] is False and "random" in record["source"]
    assert backbone_info(weights) == {k: v for k, v in record.items() if k not in ("file", "sha256")}
    vit = load_json(project / "plots/train_vit/run.json")
    assert vit["backbone_sha256"] == record["sha256"] and vit["weights_source"] == record["source"]


def check_exp_show_fits_160_columns(project: Path) -> None:
    """The README's suggested `dvc exp show` shows its columns whole in a 160-column terminal."""
    (suggested,) = [c for c in commands(bash_blocks(section("Compare runs"))[0]) if c.startswith("dvc exp show --drop")]
    proc = subprocess.run(
        [sys.executable, "-m", *shlex.split(suggested), "--no-pager"],
        cwd=project,
        text=True,
        capture_output=True,
        env={**os.environ, "COLUMNS": "160", "DVC_NO_ANALYTICS": "1"},
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and max(map(len, lines)) <= 160 and "…" not in proc.stdout, proc.stdout + proc.stderr
    header = next(line for line in lines if "Experiment" in line).split()
    # The selection (val) scores to choose by, test beside them for the record.
    assert header == [
        "Experiment",
        "selected_c",
        "cnn.test.macro_f1",
        "cnn.val.macro_f1",
        "vit.test.macro_f1",
        "vit.val.macro_f1",
        "train_cnn.lr",
        "train_vit.solver",
    ]
    assert any("sgd" in line for line in lines) and any("lbfgs" in line for line in lines)  # experiment, baseline


def chart_rows(node) -> list[dict]:
    """The rows DVC filled a chart's spec with (each with its revision), from every layer."""
    if isinstance(node, list):
        return [row for item in node for row in chart_rows(item)]
    if not isinstance(node, dict):
        return []
    values = node.get("data", {}).get("values") if isinstance(node.get("data"), dict) else None
    own = [row for row in values if isinstance(row, dict) and "rev" in row] if isinstance(values, list) else []
    return own + [row for key, value in node.items() if key != "data" for row in chart_rows(value)]


def check_every_plot_carries_data(project: Path, html: str) -> None:
    """Every chart `dvc plots show` draws on a default run has rows from every file and field it names (no empty
    chart, no legend entry without a line), and every picture it lists is there; the page says its encoding, so a
    browser opening it from disk draws Vega's minus sign as one."""
    plots = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    charts = [(title, spec) for p in plots if isinstance(p, dict) for title, spec in p.items()]
    specs = [json.loads(spec) for spec in re.findall(r"var spec = (\{.*\});\s*$", html, re.M)]
    assert [s.get("title", {}).get("text") for s in specs] == [title for title, _ in charts]
    for (title, chart), spec in zip(charts, specs):
        rows = chart_rows(spec)
        series = {f"{row.get('filename', row.get('filename::field', ''))}|{row.get('field', '')}" for row in rows}
        assert rows, title
        for file, fields in chart["y"].items():
            assert len(chart["y"]) == 1 or any(Path(file).name in s for s in series), (title, file)
            for field in fields if isinstance(fields, list) and len(fields) > 1 else ():
                assert any(s.endswith(f"|{field}") for s in series), (title, field)
    for image in (p for p in plots if isinstance(p, str)):
        assert (project / image).is_file() and (project / image).stat().st_size > 1000, image
    assert '<meta charset="utf-8">' in html


def check_readme_rerun_lists(project: Path) -> None:
    """The README's lists of what a `train_vit.*` and a `train_cnn.*` change re-run are what DVC would run after one
    such change: the stages `dvc status` finds changed, and every stage downstream of them in DVC's graph (`dvc repro
    --dry` lists only the first: the others' inputs change only once those have run)."""
    import networkx as nx
    from dvc.repo import Repo

    text = " ".join(section("Compare runs").split())
    lists = {
        "train_vit": re.search(r"Changing a `train_vit\.\*` parameter re-runs (.*?) and nothing else", text),
        "train_cnn": re.search(r"a `train_cnn\.\*` one (.*?): each stage", text),
    }
    original = (project / "params.yaml").read_text()
    for section_name, change in (("train_vit", {"max_iter": 500}), ("train_cnn", {"dropout": 0.2})):
        printed = set(re.findall(r"`([\w@]+)`", lists[section_name].group(1)))
        params = yaml.safe_load(original)
        params[section_name].update(change)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        changed = set(json.loads(dvc(project, "status", "--json").stdout))
        with Repo(str(project)) as repo:
            graph = repo.index.graph  # an edge from each stage to a stage it depends on
            names = {stage: stage.name for stage in graph}  # as `dvc status` names them (addressing is cwd-relative)
            downstream = {names[s] for s in graph for c in graph if names[c] in changed and nx.has_path(graph, s, c)}
        assert downstream == printed, section_name
    (project / "params.yaml").write_text(original)


def check_printed_exp_show_recipes_keep_what_they_sort_by(project: Path) -> None:
    """Every `dvc exp show` the README and docs/ print runs here, and keeps the column it sorts by, and the columns
    its --keep names."""
    from test_readme import TEXTS

    printed = [
        " ".join(line.split("#")[0].split())
        for text in TEXTS.values()
        for block in re.findall(r"```\w*\n(.*?)```", text, re.S)
        for line in commands(block)
        if line.startswith("dvc exp show")
    ]
    assert len(printed) >= 4, printed
    for command in printed:
        args = shlex.split(command.split(">")[0])
        proc = subprocess.run(
            [sys.executable, "-m", *args, *([] if "--csv" in args else ["--csv"])],
            cwd=project,
            text=True,
            capture_output=True,
            env={**os.environ, "DVC_NO_ANALYTICS": "1"},
        )
        assert proc.returncode == 0, (command, proc.stderr)
        header = proc.stdout.splitlines()[0].split(",")
        if "--sort-by" in args:
            file, _, key = args[args.index("--sort-by") + 1].rpartition(":")
            assert any(column in (key, f"{file}:{key}") for column in header), (command, header)
        if "--keep" in args:
            assert "Experiment" in header and len(header) > 1, (command, header)


def check_report(project: Path) -> None:
    """reports/report.md: the warning a random-weights run needs, numbers equal to the metrics, every figure there."""
    text = (project / "reports/report.md").read_text()
    assert "this run cannot answer the question" in text and "**random backbone weights**" in text
    assert "**generated images**" in text and "**few epochs**" in text
    evaluation = per_model(project, "metrics/evaluate")
    assert "Top-5" not in text and "No top-5 accuracy: with 4 classes" in text
    assert "**one seed**" in text and "**few training images per class**: the train split holds 9 images" in text
    generalisation = text.split("## 4. Generalisation")[1].split("## 5.")[0]
    for model, name in (("cnn", "CNN"), ("vit", "Probe")):  # the gaps from evaluate's train, val and test scores
        row = next(line for line in generalisation.splitlines() if line.startswith(f"| {name} "))
        scores = evaluation[model]
        assert f"| {scores['train']['accuracy'] * 100:.2f} " in row
        assert f"| {(scores['train']['accuracy'] - scores['test']['accuracy']) * 100:+.2f} " in row
        calibration = scores["calibration"]["test"]
        calibration_row = next(
            line
            for line in generalisation.splitlines()[generalisation.splitlines().index(row) + 1 :]
            if line.startswith(f"| {name} ")
        )
        assert [c.strip() for c in calibration_row.split("|")][2:5] == [
            f"{calibration['nll']:.3f}",
            f"{calibration['brier']:.3f}",
            f"{calibration['ece'] * 100:.1f}",
        ]
    robustness = per_model(project, "metrics/robustness")
    together = next(line for line in generalisation.splitlines() if line.startswith("| all together "))
    corrupted = [f"{robustness[m]['corrupted_accuracy'] * 100:.2f}" for m in ("cnn", "vit")]
    assert [c.strip() for c in together.split("|")][2:4] == corrupted  # over all corruptions: the stage's own mean
    assert "no intervals: 8 images are under the 200 an interval needs" in generalisation
    assert "- Who generalises better: " in text and "Calibration: " in text and "Corrupted images: " in text
    for label, metric in (("Accuracy", "accuracy"), ("Macro-F1", "macro_f1")):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} "))
        _, cnn_test, vit_test, difference, cnn_val, vit_val = [c.strip() for c in row.strip("|").split("|")]
        for cell, model, split in (
            (cnn_test, "cnn", "test"),
            (vit_test, "vit", "test"),
            (cnn_val, "cnn", "val"),
            (vit_val, "vit", "val"),
        ):
            assert cell.split(" ")[0] == f"{evaluation[model][split][metric] * 100:.2f}", (label, model, split)
        expected = evaluation["vit"]["test"][metric] - evaluation["cnn"]["test"][metric]
        assert abs(float(difference.split(" ")[0]) - expected * 100) < 0.006
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert "figures/curves.png" in links and "figures/misclassified_cnn.png" in links
    for target in links:
        assert (project / "reports" / target).resolve().is_file(), target
    assert "## 7. Conclusions" in text and "Caveats: random backbone weights" in text
    selected_c = load_json(project / "metrics/train_vit.json").get("selected_c")
    if selected_c is not None:  # the L-BFGS probe: no epochs, its fit time and its sweep with the kept C
        assert "The probe has no epochs" in text and f"(C = {selected_c:g}," in text
        assert f"| **{selected_c:g}** |" in text
        fit = load_json(project / "metrics/timing/train_vit_fit.json")  # wall seconds from the start of training
        assert fit["features_seconds"] > 0 and fit["head_seconds"] > 0
        # Its fit: the train and val images' share of the feature extraction (which covers test too), and the sweep.
        counts = load_json(project / "plots/sanity/report.json")["counts"]
        images = {split: counts[split]["total"] for split in ("train", "val", "test")}
        whole_fit = (
            fit["features_seconds"] * (images["train"] + images["val"]) / sum(images.values()) + fit["head_seconds"]
        )
        assert f"Its whole fit took {whole_fit:.1f} s" in text
        # Its compute to the common target, where it reaches it, is its whole fit's: its train and val images through
        # the backbone once (the profile's GFLOPs an image), and the sweep.
        gflops = per_model(project, "metrics/profile")["vit"]["gflops_per_image"]
        row = next(line for line in text.split("## 3. Convergence")[1].splitlines() if line.startswith("| Probe "))
        assert "| after its whole fit " in row or "| no " in row
        if "| after its whole fit " in row:
            value, unit = row.split("|")[4].split()
            compute = float(value.replace(",", "")) * (1000 if unit == "TFLOPs" else 1)
            assert compute >= round(gflops * (images["train"] + images["val"]), 1)
    else:
        assert "The probe has no epochs" not in text and "| Probe " in text.split("## 3. Convergence")[1]


def check_remote_round_trip(project: Path, tmp: Path) -> None:
    """A colleague clones the repository, pulls data, models and the run-cache: nothing left to compute."""
    dvc(project, "remote", "add", "-d", "shared", str(tmp / "remote"))
    run(["git", "commit", "-qam", "shared remote"], project)
    dvc(project, "push", "--run-cache")
    clone = tmp / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp)
    dvc(clone, "pull", "--run-cache")
    assert ran_stages(dvc(clone, "repro")) == set()  # everything pulled: nothing to run
    check_fetching_a_model_as_printed(project, tmp)
    assert "in sync" in dvc(clone, "status", "-c").stdout
    assert torch.load(clone / "models/cnn.pt", weights_only=True)["epoch"] >= 1
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["evaluate"]["batch_size"] = 8
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # What would run (--dry: the stages whose inputs changed; DVC runs what depends on their outputs after them),
    # and evaluate run for real on the pulled checkpoints and data.
    assert ran_stages(dvc(clone, "repro", "--dry")) == {
        "evaluate@cnn",
        "evaluate@vit",
        "robustness@cnn",
        "robustness@vit",
    }  # both read it
    assert ran_stages(dvc(clone, "repro", "--single-item", "evaluate")) == {"evaluate@cnn", "evaluate@vit"}
    for model in ("cnn", "vit"):
        ours, theirs = (load_json(p / f"metrics/evaluate/{model}.json")[model]["test"] for p in (project, clone))
        assert ours["accuracy"] == theirs["accuracy"], model


def check_fetching_a_model_as_printed(project: Path, tmp: Path) -> None:
    """docs/outputs.md's recipe: a registered version, then `dvc artifacts get`; `dvc get` without one."""
    from test_readme import REPO, TEXTS

    block = (
        TEXTS[REPO / "docs/outputs.md"].split("## Fetching a trained model")[1].split("```bash\n")[1].split("```")[0]
    )
    tag, artifacts_get, get = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    run(shlex.split(tag.split(" && ")[0]), project)  # the push goes to origin, which this repository has none of
    fetched = tmp / "fetched"
    fetched.mkdir()
    for command in (artifacts_get, get):
        dvc(fetched, *shlex.split(command.replace("<repo>", str(project)))[1:])
    assert (fetched / "vit.pt").read_bytes() == (project / "models/vit.pt").read_bytes()
    assert (fetched / "cnn.pt").read_bytes() == (project / "models/cnn.pt").read_bytes()


def check_queued_experiments(project: Path) -> None:
    """Two experiments queued as a grid run side by side in two workers, each with its own metrics."""
    dvc(project, "exp", "run", "--queue", "train_cnn", "-S", "train_cnn.lr=0.001,0.01")
    # The workers outlive `dvc queue start`; holding its output open would wait for them.
    subprocess.run(
        ["env", "PETLAB_JOBS=2", sys.executable, "-m", "dvc", "queue", "start", "-j", "2"],
        cwd=project,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )
    deadline = time.monotonic() + 600
    while re.search(r"\b(Queued|Running)\b", status := dvc(project, "queue", "status").stdout):
        assert time.monotonic() < deadline, status
        time.sleep(3)
    assert status.count("Success") == 2, status
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    experiments = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            data = exp["revs"][0]["data"]
            lr = data["params"]["params.yaml"]["data"]["train_cnn"]["lr"]
            experiments[lr] = data["metrics"]["metrics/train_cnn.json"]["data"]
    assert {0.001, 0.01} <= set(experiments)  # beside any experiment run before (at the default lr)
    assert experiments[0.001]["val_loss"] != experiments[0.01]["val_loss"]


def check_train_cnn_on_two_ranks(project: Path) -> None:
    """train_cnn as 2 gloo ranks through dvc (with another dropout, a train_cnn param, whose calibration and robustness
    `dvc metrics diff` shows); its checkpoint, evaluated by one process, gives what it recorded."""
    from torch import nn

    from petlab.core.params import load_params
    from petlab.data.dataset import PreparedData
    from petlab.train.loop import validate
    from petlab.train.run import image_loader, load_trained, make_context, transform_spec

    proc = dvc(
        project, "exp", "run", "evaluate", "robustness", "-S", "dist.nproc_per_node=2", "-S", "train_cnn.dropout=0.2"
    )
    # train_cnn's upstream is cached; train_vit reads `dist` too (its image routes use the ranks) and runs again,
    # alone, to the same probe.
    # The probe's side stays: train_vit's outputs are unchanged, so its evaluation and robustness are kept.
    assert ran_stages(proc) == {"train_cnn", "train_vit", "evaluate@cnn", "robustness@cnn"}
    assert "2 ranks" in proc.stdout
    # A train_cnn param changed: the CNN's calibration and its robustness move, and `dvc metrics diff` shows them.
    metrics_diff = json.loads(dvc(project, "metrics", "diff", "--json").stdout)
    assert any(k.startswith("cnn.calibration.test.") for k in metrics_diff["metrics/evaluate/cnn.json"])
    assert any(k.startswith("cnn.") for k in metrics_diff["metrics/robustness/cnn.json"])
    recorded = load_json(project / "metrics/train_cnn.json")
    assert recorded["ranks"] == 2
    checkpoint = torch.load(project / "models/cnn.pt", weights_only=True)
    params = load_params(project / "params.yaml")
    spec = transform_spec(checkpoint["model_config"])
    ctx = make_context(params.device, params.train_cnn.amp, params.train_cnn.channels_last, spec)
    data = PreparedData.open(project / "data/oxford_pets")
    loader = image_loader(
        data, "val", spec, params.train_cnn.batch_size, False, ctx.device, seed=params.seed, loader=params.loader
    )
    model = load_trained(checkpoint).to(ctx.device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    again = validate(model, loader, nn.CrossEntropyLoss(), ctx, data.num_classes)
    for key in ("accuracy", "macro_f1", "loss"):
        assert abs(again[key] - recorded[f"val_{key}"]) < 1e-5, key
    assert "val_top5_accuracy" not in recorded  # 4 classes


def check_benchmark_row(project: Path, seconds: float) -> None:
    """The benchmark's whole-pipeline row, from this run: every stage of dvc.yaml ran and timed itself, and dvc's
    own work comes on top."""
    from benchmarks.bench import pipeline_line, pipeline_summary
    from petlab.core.outputs import stage_names

    summary = pipeline_summary(project, seconds)
    stages = stage_names(project / "dvc.yaml")
    assert (
        len(stages) == 12
        and set(summary["stage_seconds"]) == set(stages)
        and all(s > 0 for s in summary["stage_seconds"].values())
    )
    assert summary["dvc_repro_seconds"] > summary["stages_total_seconds"] > 0
    assert set(summary["probe_fit_seconds"]) == {"features_seconds", "head_seconds"}
    # The line prints the summary's wall time (rounded to 0.01 s, then to 0.1 s), which is this run's.
    assert abs(summary["dvc_repro_seconds"] - seconds) <= 0.005
    assert pipeline_line(summary).startswith(f"dvc repro: {summary['dvc_repro_seconds']:.1f} s wall (backbone_weights ")


def check_main_views_are_the_pipelines_own(project: Path) -> None:
    """After a plain `dvc repro`, in a project that ships the study's pipeline (not added): `dvc status` says the
    pipeline is up to date, and `dvc metrics show` lists only files that exist, without a warning."""
    assert (project / "study/pipeline.yaml").is_file() and not (project / "study/dvc.yaml").exists()
    assert json.loads(dvc(project, "status", "--json").stdout) == {}
    assert "Data and pipelines are up to date." in dvc(project, "status").stdout
    shown = dvc(project, "metrics", "show", "--json")
    assert "WARNING" not in shown.stderr and "failed to load" not in shown.stdout + shown.stderr, shown.stderr
    files = json.loads(shown.stdout)[""]["data"]  # the workspace's files
    assert files and all("error" not in entry and (project / path).is_file() for path, entry in files.items()), files
    assert not any(path.startswith(("metrics/study", "study/")) for path in files)


def test_dvc_repro_end_to_end(tiny_project):
    project = tiny_project
    start = time.perf_counter()
    first = dvc(project, "repro")
    check_benchmark_row(project, time.perf_counter() - start)
    assert ran_stages(first) == {
        "backbone_weights",
        "prepare_oxford_pets",
        "sanity_data",
        "train_cnn",
        "train_vit",
        *CNN_SIDE,
        *VIT_SIDE,
        "report",
    }
    assert "random backbone weights" in first.stdout
    # TINY_PARAMS shortens the probe's loop, which its default L-BFGS route never runs: the stage says so.
    assert (
        "train_vit: WARNING: train_vit.epochs, train_vit.batch_size, train_vit.warmup_epochs changed but not used "
        "by the L-BFGS probe" in first.stdout
    )
    assert "Memory block of unknown size" not in first.stdout + first.stderr
    check_prepared(project)
    check_metrics(project)
    check_metrics_are_scalars(project)
    check_models_and_plots(project)
    check_report(project)
    check_probe(project)
    check_backbone(project)

    # A second `dvc repro` with nothing changed runs nothing and changes no file.
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline run"], project)
    assert ran_stages(dvc(project, "repro")) == set()
    assert run(["git", "status", "--porcelain"], project).stdout == ""
    check_main_views_are_the_pipelines_own(project)

    plots_dir = project.parent / "plots_html"
    dvc(project, "plots", "show", "-o", str(plots_dir))
    html = (plots_dir / "index.html").read_text()
    for title in (
        "Confusion matrix, CNN (test)",
        "Confusion matrix, linear probe (test, normalised per actual class)",
        "Loss per epoch",
        "Linear probe, val score over C",
        "Reliability on the test split",
        "Test accuracy under corruption",
    ):
        assert title in html
    assert "American Bulldog" in html  # the confusion data itself, with class names
    assert "log10_c" in html  # the probe's sweep, drawn over log10(C)
    check_every_plot_carries_data(project, html)

    check_readme_rerun_lists(project)
    check_remote_round_trip(project, project.parent)
    before = load_json(project / "metrics/train_vit.json")

    # A train_vit change re-runs train_vit and what depends on it, nothing else; here the training loop's
    # route for the head, which writes per-epoch history instead of the sweep.
    experiment = dvc(project, "exp", "run", "-S", "train_vit.solver=sgd", "-S", "train_vit.lr=0.02")
    assert ran_stages(experiment) == {"train_vit", *VIT_SIDE, "report"}  # the CNN's side stays
    after = load_json(project / "metrics/train_vit.json")
    assert after != before and after["last_epoch"] == 4 and "selected_c" not in after
    assert load_json(project / "plots/train_vit/run.json")["solver"] == "sgd"
    with open(project / "plots/train_vit/history.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    check_epoch_times(project, "vit", 4)
    check_report(project)
    metrics_diff = json.loads(dvc(project, "metrics", "diff", "--json").stdout)
    assert "metrics/train_vit.json" in metrics_diff and "metrics/train_cnn.json" not in metrics_diff
    # The probe's calibration and robustness changed with it; `dvc metrics diff` shows them.
    assert any(k.startswith("vit.calibration.") for k in metrics_diff["metrics/evaluate/vit.json"])
    assert any(k.startswith("vit.") for k in metrics_diff["metrics/robustness/vit.json"])
    assert "metrics/evaluate/cnn.json" not in metrics_diff and "metrics/comparison.json" in metrics_diff
    assert not any(path.startswith("metrics/timing/") or path == "metrics/profile" for path in metrics_diff)
    params_diff = json.loads(dvc(project, "params", "diff", "--json").stdout)
    lr_change = params_diff["params.yaml"]["train_vit.lr"]
    assert (lr_change["old"], lr_change["new"]) == (0.001, 0.02)
    shown = dvc(project, "exp", "show", "--json").stdout
    assert "0.02" in shown
    check_exp_show_fits_160_columns(project)
    check_printed_exp_show_recipes_keep_what_they_sort_by(project)

    # The scaling flows, on the CNN's branch: a queued grid in two workers, then train_cnn as two ranks.
    check_queued_experiments(project)
    check_train_cnn_on_two_ranks(project)
    # Last, as it leaves the training stages without their TensorBoard logs: a disk that fills up in each stage.
    check_a_full_disk_in_any_stage_is_one_line_naming_the_file(project)


def test_backbone_weights_are_resolved_once_and_missing_ones_stop_the_first_stage(tmp_path, test_vit_weights):
    """A local file in weights/ is data DVC hashes: unchanged, nothing runs; new weights at the same path re-run the
    stage. A file elsewhere is refused unless its SHA-256 is pinned; without weights the first stage stops, before
    any data work."""
    import hashlib

    import timm
    from conftest import make_project, write_params
    from safetensors.torch import save_file

    project = make_project(
        tmp_path / "project", {"train_vit": {"model": "test_vit", "weights": "weights/test_vit.safetensors"}}
    )
    weights = project / "weights/test_vit.safetensors"
    weights.write_bytes(test_vit_weights.read_bytes())
    assert ran_stages(dvc(project, "repro", "backbone_weights")) == {"backbone_weights"}
    first = load_json(project / "metrics/backbone.json")
    assert first["source"] == "file weights/test_vit.safetensors" and first["pretrained"] is True  # as a clone has it
    assert ran_stages(dvc(project, "repro", "backbone_weights")) == set()  # unchanged: nothing runs, no network
    assert load_json(project / "metrics/backbone.json") == first

    save_file(timm.create_model("test_vit", pretrained=False).state_dict(), str(weights))  # replaced in place
    assert ran_stages(dvc(project, "repro", "backbone_weights")) == {"backbone_weights"}
    second = load_json(project / "metrics/backbone.json")
    assert second["source_sha256"] != first["source_sha256"] and second["sha256"] != first["sha256"]

    # Tracked by DVC (weights/README.md), the file reaches a temporary workspace, as it does a queue worker's.
    dvc(project, "add", "weights/test_vit.safetensors")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "the weights, tracked"], project)
    temp = dvc(project, "exp", "run", "--temp", "backbone_weights", "-S", "seed=7")
    assert ran_stages(temp) == {"backbone_weights"} and "Ran experiment" in temp.stdout + temp.stderr

    # A file outside weights/: DVC cannot see it change, so only a pinned one is taken.
    stage = [sys.executable, "-m", "stages.backbone_weights"]
    write_params(project, {"train_vit": {"model": "test_vit", "weights": str(test_vit_weights)}})
    refused = run(stage, project, check=False)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        f"backbone_weights: error: train_vit.weights = '{test_vit_weights}' is outside weights/, where DVC cannot "
        "see it change; put it in weights/ (and `dvc add` it: weights/README.md), or pin its bytes with "
        "train_vit.weights_sha256"
    )
    digest = hashlib.sha256(test_vit_weights.read_bytes()).hexdigest()
    write_params(
        project, {"train_vit": {"model": "test_vit", "weights": str(test_vit_weights), "weights_sha256": digest}}
    )
    run(stage, project)
    assert load_json(project / "metrics/backbone.json")["source_sha256"] == digest

    (project / "models/backbone.safetensors").unlink()
    write_params(project, {"train_vit": {"model": "test_vit", "weights": None, "weights_sha256": None}})
    failed = dvc(project, "repro", check=False)
    assert failed.returncode != 0 and ran_stages(failed) == {"backbone_weights"}
    (message,) = [line for line in failed.stderr.splitlines() if line.startswith("backbone_weights: error:")]
    assert "train_vit.weights" in message and "HF_HUB_OFFLINE=1" in message
    assert not (project / "data").exists() and not (project / "runs").exists()


FAULTS = Path(__file__).parent / "faults"  # sitecustomize.py: a full disk under $PETLAB_TEST_FULL_DISK
# Each stage that writes, in the order a run takes them (a per-model stage with one of its models: the other runs
# the same code).
WRITING_STAGES = (
    ("backbone_weights",),
    ("prepare_oxford_pets",),
    ("sanity_data",),
    ("train_cnn",),
    ("train_vit",),
    ("evaluate", "vit"),
    ("profile", "cnn"),
    ("robustness", "cnn"),
    ("report",),
)


def check_a_full_disk_in_any_stage_is_one_line_naming_the_file(project: Path) -> None:
    """Every stage run on a disk that fills up (each write the kernel is asked for under the project fails with
    ENOSPC, with no file name in Python's error) stops in one line naming what it could not write, with no
    traceback, and leaves its previous outputs as they were (the atomic writes), besides its own live logs."""
    from petlab.core.outputs import stage_outputs

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dist"]["nproc_per_node"] = 1  # one process: under torchrun the launcher adds its own line
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(FAULTS), "PETLAB_TEST_FULL_DISK": str(project), "HF_HUB_OFFLINE": "1"}
    for stage, *model in WRITING_STAGES:
        name = "@".join([stage, *model])
        outputs = [project / p for p in stage_outputs(name, project / "dvc.yaml") if not p.parts[0] == "runs"]
        before = {
            p: p.read_bytes()
            for out in outputs
            for p in ([out] if out.is_file() else sorted(out.rglob("*")))
            if p.is_file()
        }
        proc = subprocess.run(
            [sys.executable, "-m", f"stages.{stage}", *model],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = [line for line in proc.stderr.splitlines() if not line.startswith(f"{stage}: WARNING:")]
        assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stdout, (name, proc.stderr)
        named = re.fullmatch(
            rf"{name}: error: (\S+?):? (No space left on device \(errno ENOSPC\)|disk full .*)", lines[0]
        )
        assert named, lines[0]
        path = (project / named.group(1)).resolve()
        assert any(
            path == out.resolve() or out.resolve() in path.parents or path in out.resolve().parents
            for out in [*outputs, project / "runs", project / "resume"]
        ), (name, lines[0])
        assert {p: p.read_bytes() for p in before if p.is_file()} == before, name
        assert not list(project.rglob(".*.tmp")), name
