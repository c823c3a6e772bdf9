"""reports/study.md, its figures and metrics/study.json, from the cells' JSON files (study/dvc.yaml)."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from petlab import plots
from petlab import verdict as verdict_rules
from petlab.data import PreparedData
from petlab.models import weights_label
from petlab.outputs import save_figure
from petlab.params import ALL_IMAGES, Params
from petlab.report_document import figure, table
from petlab.runtime import PipelineError
from petlab.study import FEATURES_RECORD, MODELS, cell_path, decode_predictions
from petlab.study_stats import STILL_IMPROVING, Comparison, compare, crossing, time_to_target, verdict

REFERENCE_BACKBONE = "vit_tiny_patch16_224"  # the backbone the question is about; any other is a stand-in
METRICS = {"macro_f1": "macro-F1", "accuracy": "accuracy"}


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run the study's cells first (dvc repro study/dvc.yaml)")
    return json.loads(path.read_text())


@dataclass
class Study:
    """Every cell of the ladder, read back, with what the report needs about the data and the backbone."""

    seeds: list[int]
    sizes: list  # the ladder as in params: integers and "all"
    cells: dict  # (model, seed, size) -> the cell's JSON
    labels: np.ndarray  # test labels, in the order of the cells' predictions
    class_names: list[str]
    val_images: int
    prepared: dict  # data/oxford_pets/report.json
    features: dict  # study/cells/features.json

    @classmethod
    def load(cls, params: Params, data_dir: Path) -> "Study":
        data = PreparedData.open(data_dir)
        labels = np.array([label for _, label in data.items("test")])
        seeds, sizes = list(params.study.seeds), list(params.study.images_per_class)
        sizes.sort(key=lambda n: float("inf") if n == ALL_IMAGES else n)
        cells = {(m, s, n): read_json(cell_path(m, s, n)) for m in MODELS for s in seeds for n in sizes}
        for s in seeds:
            for n in sizes:
                if cells["cnn", s, n]["subset"] != cells["probe", s, n]["subset"]:
                    raise PipelineError(f"{cell_path('cnn', s, n)} and {cell_path('probe', s, n)} trained on different "
                                        "images; re-run the study (dvc repro study/dvc.yaml)")
                for m in MODELS:
                    if len(cells[m, s, n]["test_predicted"].split()) != len(labels):
                        raise PipelineError(f"{cell_path(m, s, n)} scored another test split than {data_dir}; re-run "
                                            "the study (dvc repro study/dvc.yaml)")
        return cls(seeds, sizes, cells, labels, data.class_names, len(data.items("val")),
                   read_json(data_dir / "report.json"), read_json(FEATURES_RECORD))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def values(self, model: str, size, key: str) -> np.ndarray:
        """A test metric (or any top-level number) of each seed's cell at one size."""
        cells = [self.cells[model, s, size] for s in self.seeds]
        return np.array([c["test"][key] if key in METRICS else c[key] for c in cells], dtype=float)

    def predictions(self, model: str, size) -> np.ndarray:
        return np.stack([decode_predictions(self.cells[model, s, size]["test_predicted"]) for s in self.seeds])

    def per_class(self, size) -> float:
        """Training images per class at a size (for "all": the mean over classes)."""
        return float(self.values("cnn", size, "train_images").mean()) / self.num_classes

    def probe_seconds(self, seed: int, size) -> float:
        """The probe's wall time at a cell: its L-BFGS sweep, and its own train and val images' share of the
        shared feature extraction."""
        record, cell = self.features, self.cells["probe", seed, size]
        return cell["seconds"]["fit"] + verdict_rules.share_of_extraction(
            sum(record["seconds"].values()), sum(record["images"].values()), cell["train_images"] + self.val_images)


def size_name(size) -> str:
    return "all" if size == ALL_IMAGES else str(size)


def model_names(study: Study, params: Params) -> dict[str, str]:
    backbone = study.features["timm_model"]
    # Named as the single-run report names it: random weights, or the description a stand-in's weights carry.
    return {"cnn": f"CNN from scratch ({params.train_cnn.arch})",
            "probe": plots.probe_label(backbone, "linear", weights_label(study.features))}


def caveats(study: Study) -> dict[str, str]:
    """What these numbers are not, short name -> why: every figure and the report's first lines carry it."""
    out = {}
    if not study.features.get("pretrained", True):
        out["random backbone weights"] = "the probe's numbers say nothing about a pretrained backbone"
    if study.features["timm_model"] != REFERENCE_BACKBONE:
        described = weights_label(study.features)
        out["stand-in backbone"] = (f"the probe's backbone is {study.features['timm_model']}, not ViT-Tiny"
                                    + (f" ({described})" if described else ""))
    if study.prepared.get("generated"):
        out["generated images"] = "shapes on noise made by petlab.synthetic, not photographs"
    dataset = study.prepared.get("source", "oxford_pets").split(" ")[0]
    if dataset != "oxford_pets":
        out[f"{dataset}, not Oxford-IIIT Pet"] = "another dataset than the one the question is about"
    if len(study.seeds) == 1:
        out["one seed"] = "the intervals hold test sampling only, not training randomness"
    largest = study.per_class(study.sizes[-1])
    if largest < verdict_rules.MIN_TRAIN_PER_CLASS:
        out[f"about {largest:.0f} training images per class at the largest size"] = (
            f"below the {verdict_rules.MIN_TRAIN_PER_CLASS} a CNN from scratch is usually given; the curves show "
            "the small-data regime only")
    return out


def figure_note(notes: dict[str, str]) -> str:
    """The caveats' short names, wrapped to fit under a figure's title."""
    return "\n".join(textwrap.wrap("; ".join(notes), 90))


# ---------------------------------------------------------------- the numbers


def comparisons(study: Study, resamples: int, seed: int) -> dict:
    """(metric, size) -> Comparison of probe - CNN."""
    return {(metric, n): compare(study.labels, study.predictions("cnn", n), study.predictions("probe", n), metric,
                                 study.num_classes, resamples, seed)
            for metric in METRICS for n in study.sizes}


def mean_sd(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def targets(study: Study) -> dict:
    """(seed, size) -> time to the common target of that cell pair (petlab.study_stats.time_to_target)."""
    out = {}
    for s in study.seeds:
        for n in study.sizes:
            cnn, probe = study.cells["cnn", s, n], study.cells["probe", s, n]
            out[s, n] = time_to_target(cnn["val_curve"]["val_macro_f1"], cnn["val_curve"]["elapsed_seconds"],
                                       probe["val"]["macro_f1"], study.probe_seconds(s, n), study.num_classes)
    return out


def summary(study: Study, compared: dict) -> dict:
    """metrics/study.json: per size, each model's mean and sd over seeds and the comparison."""
    sizes = {}
    for n in study.sizes:
        entry = {"train_images_per_class": round(study.per_class(n), 3)}
        for m in MODELS:
            entry[m] = {}
            for metric in METRICS:
                mean, sd = mean_sd(study.values(m, n, metric))
                entry[m][f"test_{metric}_mean"] = round(mean, 6)
                entry[m][f"test_{metric}_sd"] = None if np.isnan(sd) else round(sd, 6)  # one seed: no sd
        for metric in METRICS:
            c: Comparison = compared[metric, n]
            entry[f"probe_minus_cnn_{metric}"] = [round(v, 6) for v in (c.difference, *c.difference_interval)]
            entry[f"p_probe_better_{metric}"] = [round(v, 6) for v in (c.p_probe_better, *c.p_interval)]
            entry[f"verdict_{metric}"] = verdict(c)
        sizes[size_name(n)] = entry
    return {"seeds": study.seeds, "sizes": sizes, "caveats": [f"{k}: {v}" for k, v in caveats(study).items()],
            "crossing": crossing([size_name(n) for n in study.sizes],
                                 [verdict(compared["macro_f1", n]) for n in study.sizes])}


# ---------------------------------------------------------------- figures


def learning_curves_figure(study: Study, names: dict[str, str], note: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array([study.per_class(n) for n in study.sizes])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, METRICS):
        for m, colour in zip(MODELS, ("tab:blue", "tab:orange")):
            per_seed = np.stack([study.values(m, n, metric) for n in study.sizes])  # (sizes, seeds)
            ax.fill_between(x, per_seed.min(1), per_seed.max(1), color=colour, alpha=0.2, linewidth=0)
            ax.plot(x, per_seed.mean(1), "o-", color=colour, label=f"{names[m]}: mean, band min-max")
            for column in per_seed.T:
                ax.plot(x, column, ".", color=colour, alpha=0.6, markersize=4)
        ax.axhline(1 / study.num_classes if metric == "accuracy" else 0, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{size_name(n)}\n({v:.0f})" if n == ALL_IMAGES else size_name(n)
                          for n, v in zip(study.sizes, x)])
        ax.minorticks_off()
        ax.set_xlabel("training images per class (log scale)")
        ax.set_ylabel(f"test {METRICS[metric]}")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    seeds = f"{len(study.seeds)} seed{'s' if len(study.seeds) > 1 else ''}"
    fig.suptitle(f"Learning curves over {seeds}" + (f"\n({note})" if note else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    return fig


def difference_figure(study: Study, compared: dict, note: str):
    import matplotlib.pyplot as plt

    x = np.array([study.per_class(n) for n in study.sizes])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for offset, (metric, colour) in zip((0.97, 1.03), zip(METRICS, ("tab:green", "tab:purple"))):
        c = [compared[metric, n] for n in study.sizes]
        mid = np.array([v.difference for v in c])
        err = np.array([[v.difference - v.difference_interval[0], v.difference_interval[1] - v.difference]
                        for v in c]).T
        ax.errorbar(x * offset, mid, yerr=err, fmt="o-", capsize=3, color=colour, label=f"test {METRICS[metric]}")
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xscale("log")
    ax.set_xticks(x, [size_name(n) for n in study.sizes])
    ax.minorticks_off()
    ax.set_xlabel("training images per class (log scale)")
    ax.set_ylabel("probe - CNN, with its 95% interval")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Probe minus CNN" + (f"\n({note})" if note else ""), fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- the document


def points(v: float) -> str:
    return f"{v * 100:+.1f}"


def pct_sd(mean: float, sd: float) -> str:
    return f"{mean * 100:.1f} ± {sd * 100:.1f}" if not np.isnan(sd) else f"{mean * 100:.1f}"


VERDICT_WORDS = {"probe": "probe better", "cnn": "CNN better", "undecided": "no conclusion"}


def sizes_table(study: Study, compared: dict, metric: str) -> str:
    rows = []
    for n in study.sizes:
        c: Comparison = compared[metric, n]
        rows.append({
            "images per class": size_name(n) if n != ALL_IMAGES else f"all ({study.per_class(n):.0f})",
            f"CNN test {METRICS[metric]} (%)": pct_sd(*mean_sd(study.values("cnn", n, metric))),
            f"probe test {METRICS[metric]} (%)": pct_sd(*mean_sd(study.values("probe", n, metric))),
            "probe - CNN (points) [95%]": f"{points(c.difference)} [{points(c.difference_interval[0])}, "
                                          f"{points(c.difference_interval[1])}]",
            "P(probe > CNN) [95%]": f"{c.p_probe_better:.2f} [{c.p_interval[0]:.2f}, {c.p_interval[1]:.2f}]",
            "by the rule": VERDICT_WORDS[verdict(c)],
        })
    return table(pd.DataFrame(rows))


def training_table(study: Study) -> str:
    """Whether the small cells had enough training: the CNN's steps and epochs, where its best epoch fell, how
    much its last quarter of epochs still gained, and how well each model fits its own training subset."""
    rows = []
    for n in study.sizes:
        cnn = [study.cells["cnn", s, n] for s in study.seeds]
        gains = study.values("cnn", n, "late_gain")
        rows.append({
            "images per class": size_name(n),
            "CNN steps (epochs)": f"{cnn[0]['steps']} ({cnn[0]['epochs']})",
            "CNN best / last epoch, per seed": ", ".join(f"{c['best_epoch']}/{c['last_epoch']}" for c in cnn),
            "CNN val macro-F1 gain in its last quarter (max, points)": f"{gains.max() * 100:.1f}",
            "still improving": f"{int((gains > STILL_IMPROVING).sum())} of {len(cnn)}",
            "CNN train accuracy (%)": pct_sd(*mean_sd(np.array([c["train"]["accuracy"] for c in cnn]))),
            "probe train accuracy (%)": pct_sd(*mean_sd(np.array([study.cells["probe", s, n]["train"]["accuracy"]
                                                                  for s in study.seeds]))),
        })
    return table(pd.DataFrame(rows))


def time_table(study: Study, times: dict) -> str:
    rows = []
    for n in study.sizes:
        pairs = [times[s, n] for s in study.seeds]
        timed = [t for t in pairs if t["cnn_seconds"] is not None]
        row = {"images per class": size_name(n),
               "common target (val macro-F1, mean)": f"{np.mean([t['target'] for t in pairs]) * 100:.1f}",
               "seeds with a target": f"{len(timed)} of {len(pairs)}"}
        if timed:
            cnn_s = np.array([t["cnn_seconds"] for t in timed])
            probe_s = np.array([t["probe_seconds"] for t in timed])
            row.update({"CNN seconds to it (median)": f"{np.median(cnn_s):.1f}",
                        "probe seconds to it (median)": f"{np.median(probe_s):.1f}",
                        "CNN / probe (median of seeds)": f"{np.median(cnn_s / np.maximum(probe_s, 1e-9)):.1f}x"})
        else:
            row.update({"CNN seconds to it (median)": "-", "probe seconds to it (median)": "-",
                        "CNN / probe (median of seeds)": "-"})
        row["CNN reaches the probe's best"] = f"{sum(t['cnn_reaches_probe_best'] for t in pairs)} of {len(pairs)}"
        row["probe reaches the CNN's best"] = f"{sum(t['probe_reaches_cnn_best'] for t in pairs)} of {len(pairs)}"
        rows.append(row)
    return table(pd.DataFrame(rows))


def cost_table(study: Study) -> str:
    rows = []
    for n in study.sizes:
        for s in study.seeds:
            cnn, probe = study.cells["cnn", s, n], study.cells["probe", s, n]
            rows.append({"images per class": size_name(n), "seed": s, "train images": cnn["train_images"],
                         "CNN cell (s)": f"{cnn['seconds']['cell']:.1f}",
                         "CNN training (s)": f"{cnn['seconds']['fit']:.1f}",
                         "probe cell (s)": f"{probe['seconds']['cell']:.1f}",
                         "probe fit + its features (s)": f"{study.probe_seconds(s, n):.1f}"})
    return table(pd.DataFrame(rows))


SHORT_NAMES = {"cnn": "CNN", "probe": "probe"}  # in sentences; the report names both in full at its top


def conclusions(study: Study, compared: dict) -> list[str]:
    """One sentence per size, by the rule of petlab.study_stats.verdict on macro-F1; none where it is undecided."""
    out = []
    for n in study.sizes:
        c = compared["macro_f1", n]
        v = verdict(c)
        where = (f"At {size_name(n)} training images per class" if n != ALL_IMAGES
                 else f"With all training images ({study.per_class(n):.0f} per class)")
        diff = (f"probe - CNN {points(c.difference)} points of test macro-F1 [{points(c.difference_interval[0])}, "
                f"{points(c.difference_interval[1])}], P(probe beats CNN) {c.p_probe_better:.2f} "
                f"[{c.p_interval[0]:.2f}, {c.p_interval[1]:.2f}]")
        if v == "undecided":
            out.append(f"{where}, no conclusion: {diff}; the intervals do not exclude a tie.")
        else:
            out.append(f"{where}, the {SHORT_NAMES[v]} is better: {diff}.")
    return out


def build(study: Study, params: Params, figures: Path, out_dir: Path, git_state: str) -> tuple[str, dict]:
    """The report's markdown and metrics/study.json's content; the figures are written on the way."""
    names = model_names(study, params)
    notes = caveats(study)
    note = figure_note(notes)
    compared = comparisons(study, params.study.bootstrap, seed=params.seed)
    save_figure(learning_curves_figure(study, names, note), figures / "learning_curves.png")
    save_figure(difference_figure(study, compared, note), figures / "difference.png")
    times = targets(study)
    results = summary(study, compared)
    sizes = ", ".join(size_name(n) for n in study.sizes)
    banner = "".join(f"> **{name}**: {why}\n>\n" for name, why in notes.items())
    lines = [
        "# Study: CNN from scratch vs linear probe, over seeds and training-set sizes\n\n",
        (banner.rstrip(">\n") + "\n\n") if banner else "",
        f"{names['cnn']} against {names['probe']}, on {study.prepared.get('source', 'the prepared data')} "
        f"({study.num_classes} classes; val {study.val_images} and test {len(study.labels)} images, the same for "
        f"every cell). Seeds {', '.join(map(str, study.seeds))}; training images per class {sizes}; each cell "
        f"one DVC stage of study/dvc.yaml. Made with {git_state}.\n",
        "\n## Learning curves\n\n",
        figure(figures / "learning_curves.png", out_dir,
               "Test macro-F1 and accuracy against training images per class"),
        "\nEach line: the mean over seeds; the band: the lowest to the highest seed; dots: the seeds. The grey line: "
        "chance accuracy (left: macro-F1 0).\n",
        "\n## At each size\n\n",
        "Mean ± sd over seeds. The 95% interval of probe - CNN comes from a hierarchical bootstrap (seeds drawn with "
        "replacement, then test images drawn with replacement, both models of a seed scored on the same drawn "
        f"images; {params.study.bootstrap} resamples): it holds training randomness and test sampling. P(probe > CNN) "
        "is the share of paired seeds (same subset) where the probe scores higher, ties counting half, with its "
        "interval from the same resamples.\n\n",
        "Test macro-F1:\n\n", sizes_table(study, compared, "macro_f1"),
        "\nTest accuracy:\n\n", sizes_table(study, compared, "accuracy"),
        "\n", figure(figures / "difference.png", out_dir, "Probe minus CNN with 95% intervals"),
        "\n## Conclusions\n\n",
        "By one rule, on test macro-F1: a model is better at a size only when the 95% interval of probe - CNN "
        "excludes 0 and the interval of P(probe beats CNN) lies wholly on its side of 0.5; otherwise no conclusion "
        "at that size.\n\n",
        "".join(f"- {sentence}\n" for sentence in conclusions(study, compared)),
        f"\n{results['crossing']}\n",
        "\n## Is the CNN trained enough at every size?\n\n",
        f"Every CNN cell trains for at least study.min_steps = {params.study.min_steps} optimiser steps: epochs = "
        f"max(train_cnn.epochs = {params.train_cnn.epochs}, ceil(min_steps / steps per epoch)), warmup scaled in the "
        "same ratio. A cell is *still improving* when its best val macro-F1 over the last quarter of its epochs "
        f"beats the best before them by more than {STILL_IMPROVING * 100:.0f} points. Train accuracy: the model "
        "kept, in eval mode, on its un-augmented training subset (both models alike).\n\n",
        training_table(study),
        "\n## Time to a common target\n\n",
        "Per seed, the target is the weaker model's best val macro-F1 (DAWNBench/MLPerf-style time to train). The "
        "CNN reaches it at the first epoch at or above it (seconds of training, validation included); the L-BFGS "
        "probe has no curve over time and reaches any level it reaches when its fit ends (its C sweep, plus the "
        "extraction of its own train and val images at the shared stage's seconds per image). No time is compared "
        f"where either model never learned (best val macro-F1 under "
        f"{verdict_rules.pct(verdict_rules.level_at(verdict_rules.LEARNED_SKILL, study.num_classes))}, the single-run "
        "report's "
        "rule): a level near chance is reached by learning nothing.\n\n",
        time_table(study, times),
        "\n## Cost of each cell\n\n",
        f"Wall seconds on {study.cells['cnn', study.seeds[0], study.sizes[0]]['device']} (the CNN's cells) and the "
        f"feature extraction, once for all probe cells: {sum(study.features['seconds'].values()):.1f} s for "
        f"{sum(study.features['images'].values())} images on {study.features.get('device', 'its device')}.\n\n",
        cost_table(study),
        "\n## What a seed changes\n\n",
        "- CNN: its initialisation, the order of its batches, its augmentation, and the training subset drawn.\n"
        "- Probe: the training subset drawn only (L-BFGS on fixed features starts from zero and draws nothing).\n"
        "- Not the train/val/test split: val (model selection) and test are the same images in every cell, made by "
        "the prepare stage with the main `seed`.\n"
        "- At `all`, every seed trains on the whole train split: only the CNN's randomness differs.\n",
    ]
    return "".join(lines), results
