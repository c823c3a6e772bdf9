"""reports/study.md, its figures and metrics/study.json, from the cells' JSON files (study/pipeline.yaml).

Every number comes from the cells; every conclusion from one rule of petlab.study_stats or petlab.verdict.
"""

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
from petlab.metrics import per_class_rows
from petlab.models import weights_label
from petlab.outputs import save_figure
from petlab.params import ALL_IMAGES, Params
from petlab.report_document import figure, table
from petlab.runtime import PipelineError
from petlab.study import (FEATURES_RECORD, MODELS, PIPELINE, TIMING, cell_path, decode_predictions, decode_values,
                          long_path, probe_tune_path, size_name)
from petlab.study_stats import (LEVEL, POWER, REFERENCE_DIFFERENCE, Comparison, compare, compute_to_target, crossing,
                                detectable, seeds_needed, undertrained, verdict)

REFERENCE_BACKBONE = "vit_tiny_patch16_224"  # the backbone the question is about; any other is a stand-in
METRICS = {"macro_f1": "macro-F1", "accuracy": "accuracy"}
SHORT_NAMES = {"cnn": "CNN", "probe": "probe"}  # in sentences; the report names both in full at its top
VERDICT_WORDS = {"probe": "probe better", "cnn": "CNN better", "undecided": "no conclusion"}
MIN_CALIBRATION_VAL = 30  # selection images below which a fitted temperature is not quoted as a finding


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run the study's cells first (dvc repro {PIPELINE})")
    return json.loads(path.read_text())


@dataclass
class Study:
    """Every cell of the ladder, read back, with what the report needs about the data and the backbone."""

    seeds: list[int]
    sizes: list  # the sizes that are points of their own, smallest first: integers and "all"
    cells: dict  # (model, seed, size) -> the cell's JSON; model "cnn", "probe"
    long: dict  # (seed, size) -> the budget check's cell (cnn_long)
    probe_tuning: dict  # size -> the probe's tuning cell (probe_tune)
    labels: np.ndarray  # test labels, in the order of the cells' predictions
    class_names: list[str]
    prepared: dict  # data/oxford_pets/report.json
    features: dict  # study/cells/features.json
    species: dict | None = None  # class -> cat or dog (Oxford-IIIT Pet)
    same_as: dict | None = None  # a requested size -> the larger size whose subsets it equals (not a point)
    timing: dict | None = None  # stage -> its timing record

    @classmethod
    def load(cls, params: Params, data_dir: Path) -> "Study":
        data = PreparedData.open(data_dir)
        labels = np.array([label for _, label in data.items("test")])
        seeds = list(params.study.seeds)
        sizes = sorted(params.study.images_per_class, key=lambda n: float("inf") if n == ALL_IMAGES else n)
        paths = {(m, s, n): cell_path(m, s, n) for m in MODELS for s in seeds for n in sizes}
        long_paths = {(s, n): long_path(s, n) for s in seeds for n in sizes}
        tune_paths = {n: probe_tune_path(n) for n in sizes}
        missing = [str(p) for p in [*paths.values(), *long_paths.values(), *tune_paths.values(), FEATURES_RECORD]
                   if not p.is_file()]
        if missing:
            raise PipelineError(f"{len(missing)} cells missing ({', '.join(missing[:6])}"
                                f"{', ...' if len(missing) > 6 else ''}); run them first (dvc repro {PIPELINE})")
        cells = {key: json.loads(path.read_text()) for key, path in paths.items()}
        for s in seeds:
            for n in sizes:
                cnn, probe = cells["cnn", s, n], cells["probe", s, n]
                if (cnn["subset"], cnn["val_subset"]) != (probe["subset"], probe["val_subset"]):
                    raise PipelineError(f"{paths['cnn', s, n]} and {paths['probe', s, n]} trained or selected on "
                                        f"different images; re-run the study (dvc repro {PIPELINE})")
                for m in MODELS:
                    if len(cells[m, s, n]["test_predicted"].split()) != len(labels):
                        raise PipelineError(f"{paths[m, s, n]} scored another test split than {data_dir}; re-run "
                                            f"the study (dvc repro {PIPELINE})")
        # A size whose subsets are those of the next larger one for every seed (no class holds that many images) is
        # that larger size again: not a point of its own on the curves, nor a conclusion of its own.
        same_as, kept = {}, []
        for n, larger in zip(sizes, sizes[1:] + [None]):
            if larger is not None and all(cells["cnn", s, n]["subset"] == cells["cnn", s, larger]["subset"]
                                          for s in seeds):
                same_as[n] = larger
            else:
                kept.append(n)
        for n, larger in list(same_as.items()):  # 10 -> 25 -> all: name the last
            while larger in same_as:
                larger = same_as[larger]
            same_as[n] = larger
        species_file = data_dir / "species.json"
        timing = {p.stem: json.loads(p.read_text()) for p in sorted(TIMING.glob("*.json"))} if TIMING.is_dir() else {}
        return cls(seeds, kept, cells, {k: json.loads(p.read_text()) for k, p in long_paths.items()},
                   {n: json.loads(p.read_text()) for n, p in tune_paths.items()}, labels,
                   data.class_names, read_json(data_dir / "report.json"), read_json(FEATURES_RECORD),
                   json.loads(species_file.read_text()) if species_file.is_file() else None, same_as, timing)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def cell(self, model: str, seed: int, size) -> dict:
        return self.cells[model, seed, size]

    def values(self, model: str, size, key: str, split: str = "test") -> np.ndarray:
        """A metric of each seed's cell at one size."""
        return np.array([self.cells[model, s, size][split][key] for s in self.seeds], dtype=float)

    def predictions(self, model: str, size) -> np.ndarray:
        return np.stack([decode_predictions(self.cells[model, s, size]["test_predicted"]) for s in self.seeds])

    def per_class(self, size, key: str = "train_images") -> float:
        """Images per class a cell used at a size (for "all": the mean over classes)."""
        return float(np.mean([self.cells["cnn", s, size][key] for s in self.seeds])) / self.num_classes

    def labelled(self, size) -> float:
        """Labelled images per class a cell used: its training and its selection images."""
        return self.per_class(size) + self.per_class(size, "val_images")

    def probe_gflops(self, seed: int, size) -> float:
        """The L-BFGS probe's training compute at a cell: its own train and selection images through the backbone
        once, and its fit (the C sweep)."""
        cell = self.cells["probe", seed, size]
        images = cell["train_images"] + cell["val_images"]
        return self.features["forward_gflops_per_image"] * images + cell["compute"]["fit_gflops"]


def size_label(study: Study, n) -> str:
    """How a size is named in tables: its request, with the labelled images per class it used (train + selection)."""
    train, selection = study.per_class(n), study.per_class(n, "val_images")
    request = "all" if n == ALL_IMAGES else str(n)
    return f"{request} ({train:.0f} + {selection:.0f})" if n == ALL_IMAGES or selection else request


def model_names(study: Study, params: Params) -> dict[str, str]:
    # Named as the single-run report names it: random weights, or the description a stand-in's weights carry.
    return {"cnn": f"CNN from scratch ({params.train_cnn.arch})",
            "probe": plots.probe_label(study.features["timm_model"], "linear", weights_label(study.features))}


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


def comparisons(study: Study) -> dict:
    """(metric, size) -> Comparison of probe - CNN."""
    return {(metric, n): compare(study.labels, study.predictions("cnn", n), study.predictions("probe", n), metric,
                                 study.num_classes)
            for metric in METRICS for n in study.sizes}


def mean_sd(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def budget_check(study: Study, compared: dict) -> dict:
    """size -> the budget check: the first seed's CNN with twice its steps against the same seed's cell."""
    out = {}
    for n in study.sizes:
        normal, long = study.cells["cnn", study.seeds[0], n], study.long[n]
        gain = long["test"]["macro_f1"] - normal["test"]["macro_f1"]
        c = compared["macro_f1", n]
        half = (c.interval[1] - c.interval[0]) / 2
        out[n] = {"steps": normal["steps"], "long_steps": long["steps"], "test_macro_f1": normal["test"]["macro_f1"],
                  "long_test_macro_f1": long["test"]["macro_f1"], "gain": gain, "half_width": half,
                  "undertrained": undertrained(gain, half),
                  "train_accuracy": normal["train"]["accuracy"], "long_train_accuracy": long["train"]["accuracy"]}
    return out


def compute_targets(study: Study) -> dict:
    """(seed, size) -> compute to the fixed target (petlab.study_stats.compute_to_target)."""
    out = {}
    for s in study.seeds:
        for n in study.sizes:
            cnn, probe = study.cells["cnn", s, n], study.cells["probe", s, n]
            per_epoch = verdict_rules.training_gflops(cnn["compute"]["forward_gflops_per_image"],
                                                      cnn["compute"]["train_images_per_epoch"])
            out[s, n] = compute_to_target(cnn["val_curve"]["val_macro_f1"], per_epoch, probe["val"]["macro_f1"],
                                          study.probe_gflops(s, n), study.num_classes)
    return out


def calibration_means(study: Study, size) -> dict:
    """Per model, the mean over seeds of test ECE and NLL as trained and after temperature scaling."""
    out = {}
    for m in MODELS:
        cal = [study.cells[m, s, size]["calibration"] for s in study.seeds]
        out[m] = {f"{key}{suffix}": round(float(np.mean([c[part][key] for c in cal])), 6)
                  for key in ("ece", "nll") for part, suffix in (("test", ""), ("test_scaled", "_scaled"))}
        out[m]["temperature"] = round(float(np.median([c["temperature"] for c in cal])), 6)
    return out


def per_class_f1(study: Study, model: str, size) -> np.ndarray:
    """Each class's test F1, the mean over seeds."""
    rows = [per_class_rows(study.labels, decode_predictions(study.cells[model, s, size]["test_predicted"]),
                           study.class_names) for s in study.seeds]
    return np.mean([[r["f1"] for r in seed_rows] for seed_rows in rows], axis=0)


def class_gains(study: Study) -> pd.DataFrame:
    """probe - CNN test F1 of every class at every size (rows: classes; columns: sizes), the mean over seeds."""
    return pd.DataFrame({size_name(n): per_class_f1(study, "probe", n) - per_class_f1(study, "cnn", n)
                         for n in study.sizes}, index=study.class_names)


def summary(study: Study, compared: dict, budget: dict, targets: dict) -> dict:
    """metrics/study.json: per size, each model's mean and sd over seeds, the comparison, its power, the budget
    check, calibration and compute."""
    sizes = {}
    for n in study.sizes:
        entry = {"train_images_per_class": round(study.per_class(n), 3),
                 "selection_images_per_class": round(study.per_class(n, "val_images"), 3)}
        for m in MODELS:
            entry[m] = {}
            for metric in METRICS:
                mean, sd = mean_sd(study.values(m, n, metric))
                entry[m][f"test_{metric}_mean"] = round(mean, 6)
                entry[m][f"test_{metric}_sd"] = None if np.isnan(sd) else round(sd, 6)  # one seed: no sd
            entry[m]["train_accuracy_mean"] = round(float(study.values(m, n, "accuracy", "train").mean()), 6)
        for metric in METRICS:
            c: Comparison = compared[metric, n]
            entry[f"probe_minus_cnn_{metric}"] = [round(v, 6) for v in (c.difference, *c.interval)]
            entry[f"probe_wins_{metric}"] = {"seeds": c.probe_wins, "of": c.seeds, "ties": c.ties,
                                             "interval": [round(v, 6) for v in c.wins_interval]}
            entry[f"verdict_{metric}"] = verdict(c)
        c = compared["macro_f1", n]
        entry["power_macro_f1"] = {
            "seed_sd": None if c.seed_sd is None else round(c.seed_sd, 6), "test_se": round(c.test_se, 6),
            "detectable": round(detectable(c.seed_sd, c.test_se, c.seeds), 6),
            "seeds_for_2_points": seeds_needed(REFERENCE_DIFFERENCE, c.seed_sd, c.test_se)}
        entry["budget_check"] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in budget[n].items()}
        entry["calibration"] = calibration_means(study, n)
        reached = [targets[s, n]["reached"] for s in study.seeds]
        entry["compute_to_target"] = {
            "target": round(targets[study.seeds[0], n]["target"], 6),
            **{f"{m}_gflops_median": (round(float(np.median([r[k]["gflops"] for r in reached])), 3)
                                      if all(r[k] for r in reached) else None)
               for m, k in (("cnn", "cnn"), ("probe", "vit"))},
            "cnn_reaches": sum(r["cnn"] is not None for r in reached),
            "probe_reaches": sum(r["vit"] is not None for r in reached)}
        sizes[size_name(n)] = entry
    return {"seeds": study.seeds, "sizes": sizes, "caveats": [f"{k}: {v}" for k, v in caveats(study).items()],
            "same_subset_as": {size_name(n): size_name(m) for n, m in (study.same_as or {}).items()},
            "crossing": crossing([size_name(n) for n in study.sizes],
                                 [verdict(compared["macro_f1", n]) for n in study.sizes])}


# ---------------------------------------------------------------- figures


def log_axis(ax, study: Study, x: np.ndarray) -> None:
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{size_name(n)}\n({v:.0f})" for n, v in zip(study.sizes, x)])
    ax.minorticks_off()
    ax.set_xlabel("training images per class\n(in brackets, labelled: train + selection; log scale)", fontsize=9)


def learning_curves_figure(study: Study, names: dict[str, str], note: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array([study.labelled(n) for n in study.sizes])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, metric in zip(axes, METRICS):
        for m, colour in zip(MODELS, ("tab:blue", "tab:orange")):
            per_seed = np.stack([study.values(m, n, metric) for n in study.sizes])  # (sizes, seeds)
            ax.fill_between(x, per_seed.min(1), per_seed.max(1), color=colour, alpha=0.2, linewidth=0)
            ax.plot(x, per_seed.mean(1), "o-", color=colour, label=f"{names[m]}: mean, band min-max")
            for column in per_seed.T:
                ax.plot(x, column, ".", color=colour, alpha=0.6, markersize=4)
        ax.axhline(1 / study.num_classes if metric == "accuracy" else 0, color="grey", linestyle=":", linewidth=1)
        log_axis(ax, study, x)
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

    x = np.array([study.labelled(n) for n in study.sizes])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for offset, (metric, colour) in zip((0.97, 1.03), zip(METRICS, ("tab:green", "tab:purple"))):
        c = [compared[metric, n] for n in study.sizes]
        mid = np.array([v.difference for v in c])
        err = np.array([[v.difference - v.interval[0], v.interval[1] - v.difference] for v in c]).T
        ax.errorbar(x * offset, mid, yerr=err, fmt="o-", capsize=3, color=colour, label=f"test {METRICS[metric]}")
    ax.axhline(0, color="grey", linewidth=1)
    log_axis(ax, study, x)
    ax.set_ylabel(f"probe - CNN, with its {LEVEL:.0%} interval")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Probe minus CNN" + (f"\n({note})" if note else ""), fontsize=10)
    fig.tight_layout()
    return fig


def calibration_figure(study: Study, names: dict[str, str], note: str):
    """Test ECE and NLL of both models against labelled images per class: as trained (solid) and after temperature
    scaling on the selection subset (dashed), the mean over seeds."""
    import matplotlib.pyplot as plt

    x = np.array([study.labelled(n) for n in study.sizes])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in zip(axes, ("ece", "nll"), ("test ECE (equal-mass bins)", "test NLL")):
        for m, colour in zip(MODELS, ("tab:blue", "tab:orange")):
            means = [calibration_means(study, n)[m] for n in study.sizes]
            ax.plot(x, [v[key] for v in means], "o-", color=colour, label=f"{names[m]}: as trained")
            ax.plot(x, [v[f"{key}_scaled"] for v in means], "o--", color=colour, alpha=0.7,
                    label=f"{names[m]}: temperature-scaled")
        log_axis(ax, study, x)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle("Calibration over training-set sizes (mean over seeds)" + (f"\n({note})" if note else ""),
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    return fig


def class_gains_figure(study: Study, gains: pd.DataFrame, note: str, top: int = 6):
    """probe - CNN test F1 against size for the classes whose gain changes most from the smallest size to the
    largest."""
    import matplotlib.pyplot as plt

    x = np.array([study.labelled(n) for n in study.sizes])
    change = (gains.iloc[:, -1] - gains.iloc[:, 0]).abs().sort_values(ascending=False, kind="stable")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, name in enumerate(change.index[:top]):
        ax.plot(x, gains.loc[name].to_numpy(), "o-", color=f"C{i}", label=name)
    ax.axhline(0, color="grey", linewidth=1)
    log_axis(ax, study, x)
    ax.set_ylabel("probe - CNN test F1 of the class (mean over seeds)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    ax.set_title(f"Per-class gain of the probe: the {min(top, len(change))} classes whose gain changes most"
                 + (f"\n({note})" if note else ""), fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- the document


def points(v: float) -> str:
    return f"{v * 100:+.1f}"


def pct_sd(mean: float, sd: float) -> str:
    return f"{mean * 100:.1f} ± {sd * 100:.1f}" if not np.isnan(sd) else f"{mean * 100:.1f}"


def wins_text(c: Comparison) -> str:
    ties = f", {c.ties} tied" if c.ties else ""
    return f"{c.probe_wins} of {c.seeds}{ties} [{c.wins_interval[0]:.2f}, {c.wins_interval[1]:.2f}]"


def sizes_table(study: Study, compared: dict, metric: str) -> str:
    rows = []
    for n in study.sizes:
        c: Comparison = compared[metric, n]
        rows.append({
            "train per class (+ selection)": size_label(study, n),
            f"CNN test {METRICS[metric]} (%)": pct_sd(*mean_sd(study.values("cnn", n, metric))),
            f"probe test {METRICS[metric]} (%)": pct_sd(*mean_sd(study.values("probe", n, metric))),
            f"probe - CNN (points) [{LEVEL:.0%}]": f"{points(c.difference)} [{points(c.interval[0])}, "
                                                  f"{points(c.interval[1])}]",
            "seeds the probe wins [exact 95%]": wins_text(c),
            "by the rule": VERDICT_WORDS[verdict(c)],
        })
    return table(pd.DataFrame(rows))


def power_table(study: Study, compared: dict) -> str:
    rows = []
    for n in study.sizes:
        c = compared["macro_f1", n]
        needed = seeds_needed(REFERENCE_DIFFERENCE, c.seed_sd, c.test_se)
        rows.append({
            "train per class": size_name(n),
            "seed sd of probe - CNN (points)": "-" if c.seed_sd is None else f"{c.seed_sd * 100:.1f}",
            "test-sampling se (points)": f"{c.test_se * 100:.1f}",
            f"detectable at {POWER:.0%} power with {c.seeds} seeds (points)":
                f"{detectable(c.seed_sd, c.test_se, c.seeds) * 100:.1f}",
            f"seeds for {REFERENCE_DIFFERENCE * 100:.0f} points": (
                "unknown (one seed)" if c.seed_sd is None else str(needed) if needed
                else "none up to 100: test sampling alone hides it"),
        })
    return table(pd.DataFrame(rows))


def tuning_table(study: Study, params: Params) -> str:
    rows = []
    for n in study.sizes:
        recipe = study.cells["cnn", study.seeds[0], n]["recipe"]
        cnn_scores = [t["val_macro_f1"] for t in recipe["tried"]]
        probe_sweeps = [study.cells["probe", s, n]["sweep_val_macro_f1"] for s in study.seeds]
        probe_c = sorted({study.cells["probe", s, n]["selected_c"] for s in study.seeds})
        rows.append({
            "train per class": size_name(n),
            "CNN recipe kept (lr, weight decay)": f"{recipe['lr']:g}, {recipe['weight_decay']:g}",
            "CNN selection macro-F1 over its recipes (%)": f"{min(cnn_scores) * 100:.1f} to {max(cnn_scores) * 100:.1f}",
            "probe C kept (over seeds)": ", ".join(f"{c:g}" for c in probe_c),
            "probe selection macro-F1 over its Cs (%, mean range over seeds)":
                f"{np.mean([min(v) for v in probe_sweeps]) * 100:.1f} to {np.mean([max(v) for v in probe_sweeps]) * 100:.1f}",
        })
    return table(pd.DataFrame(rows))


def budget_table(study: Study, budget: dict) -> str:
    rows = []
    for n in study.sizes:
        b = budget[n]
        rows.append({
            "train per class": size_name(n),
            "CNN steps (2x)": f"{b['steps']} ({b['long_steps']})",
            "test macro-F1, seed 0 (%)": f"{b['test_macro_f1'] * 100:.1f}",
            "with 2x steps (%)": f"{b['long_test_macro_f1'] * 100:.1f}",
            "gain (points)": points(b["gain"]),
            "interval half-width (points)": f"{b['half_width'] * 100:.1f}",
            "under-trained": "yes" if b["undertrained"] else "no",
            "CNN train accuracy (2x) (%)": f"{b['train_accuracy'] * 100:.1f} ({b['long_train_accuracy'] * 100:.1f})",
        })
    return table(pd.DataFrame(rows))


def generalisation_table(study: Study) -> str:
    """Each model's fit of its own training subset and its train - test gap: test images played no part in any
    choice (the selection subset chose the epoch, C, recipe and temperature), so the gap is not biased by them."""
    rows = []
    for n in study.sizes:
        row = {"train per class": size_name(n)}
        for m in MODELS:
            train, test = study.values(m, n, "accuracy", "train"), study.values(m, n, "accuracy")
            regimes = [verdict_rules.regime(a, b, study.num_classes) for a, b in zip(train, test)]
            row[f"{SHORT_NAMES[m]} train / test accuracy (%)"] = f"{train.mean() * 100:.1f} / {test.mean() * 100:.1f}"
            row[f"{SHORT_NAMES[m]} by the fit rule"] = ", ".join(f"{regimes.count(r)} {r}" for r in
                                                                 dict.fromkeys(regimes))
        rows.append(row)
    return table(pd.DataFrame(rows))


def calibration_table(study: Study) -> str:
    rows = []
    for n in study.sizes:
        means = calibration_means(study, n)
        row = {"train per class": size_name(n)}
        for m in MODELS:
            v = means[m]
            row[f"{SHORT_NAMES[m]} ECE (scaled)"] = f"{v['ece'] * 100:.1f} ({v['ece_scaled'] * 100:.1f})"
            row[f"{SHORT_NAMES[m]} NLL (scaled)"] = f"{v['nll']:.3f} ({v['nll_scaled']:.3f})"
            row[f"{SHORT_NAMES[m]} T"] = f"{v['temperature']:.2f}"
        row["selection images"] = f"{study.per_class(n, 'val_images') * study.num_classes:.0f}"
        rows.append(row)
    return table(pd.DataFrame(rows))


def compute_table(study: Study, targets: dict) -> str:
    rows = []
    for n in study.sizes:
        reached = [targets[s, n]["reached"] for s in study.seeds]
        row = {"train per class": size_name(n),
               "target (val macro-F1, %)": f"{targets[study.seeds[0], n]['target'] * 100:.1f}",
               "seeds reaching it (CNN / probe)": f"{sum(r['cnn'] is not None for r in reached)} / "
                                                  f"{sum(r['vit'] is not None for r in reached)} of {len(reached)}"}
        for m, k in (("CNN", "cnn"), ("probe", "vit")):
            got = [r[k]["gflops"] for r in reached if r[k] is not None]
            row[f"{m} GFLOPs to it (median)"] = f"{np.median(got):,.1f}" if got else "-"
        both = [r["cnn"]["gflops"] / r["vit"]["gflops"] for r in reached if r["cnn"] and r["vit"]]
        row["CNN / probe (median of seeds)"] = f"{np.median(both):.2g}x" if both else "-"
        rows.append(row)
    return table(pd.DataFrame(rows))


def cost_table(study: Study) -> str:
    rows = []
    for n in study.sizes:
        for s in study.seeds:
            stem = lambda kind: f"{kind}-{s}-{size_name(n)}"  # noqa: E731
            seconds = {k: (study.timing or {}).get(stem(k), {}).get("seconds") for k in MODELS}
            rows.append({"train per class": size_name(n), "seed": s,
                         "train images": study.cells["cnn", s, n]["train_images"],
                         **{f"{SHORT_NAMES[k]} cell (s)": "-" if v is None else f"{v:.1f}" for k, v in seconds.items()}})
    return table(pd.DataFrame(rows))


def conclusions(study: Study, compared: dict) -> list[str]:
    """One sentence per size, by the rule of petlab.study_stats.verdict on macro-F1."""
    out = []
    for n in study.sizes:
        c = compared["macro_f1", n]
        v = verdict(c)
        labelled = (f"{study.per_class(n):.0f} training and {study.per_class(n, 'val_images'):.0f} selection images "
                    f"per class")
        where = (f"At {size_name(n)} training images per class ({labelled})" if n != ALL_IMAGES
                 else f"With all training images ({labelled})")
        diff = (f"probe - CNN {points(c.difference)} points of test macro-F1 [{points(c.interval[0])}, "
                f"{points(c.interval[1])}], the probe ahead on {c.probe_wins} of {c.seeds} seeds")
        if v == "undecided":
            out.append(f"{where}, no conclusion: {diff}; the interval does not exclude a tie.")
        else:
            out.append(f"{where}, the {SHORT_NAMES[v]} is better: {diff}.")
    return out


def budget_sentences(study: Study, budget: dict) -> list[str]:
    under = [size_name(n) for n in study.sizes if budget[n]["undertrained"]]
    if not under:
        return ["Twice the optimiser steps moved the CNN's test macro-F1 by less than the interval's half-width at "
                "every size: more training alone would not change the comparison by more than its uncertainty."]
    return [f"The CNN was under-trained at {', '.join(under)} training images per class: twice its optimiser steps "
            "raised its test macro-F1 by more than the half-width of that size's interval, so the comparison there "
            "understates what the CNN can do (raise study.min_steps or train_cnn.epochs)."]


def build(study: Study, params: Params, figures: Path, out_dir: Path, git_state: str) -> tuple[str, dict]:
    """The report's markdown and metrics/study.json's content; the figures are written on the way."""
    names = model_names(study, params)
    notes = caveats(study)
    note = figure_note(notes)
    compared = comparisons(study)
    budget = budget_check(study, compared)
    targets = compute_targets(study)
    gains = class_gains(study)
    save_figure(learning_curves_figure(study, names, note), figures / "learning_curves.png")
    save_figure(difference_figure(study, compared, note), figures / "difference.png")
    save_figure(calibration_figure(study, names, note), figures / "calibration.png")
    save_figure(class_gains_figure(study, gains, note), figures / "class_gains.png")
    results = summary(study, compared, budget, targets)
    sizes = ", ".join(size_name(n) for n in study.sizes)
    banner = "".join(f"> **{name}**: {why}\n>\n" for name, why in notes.items())
    grid = params.study.cnn_grid
    merged = "".join(f"- {size_name(n)} per class is the same subset as {size_name(m)} (no class holds {n} training "
                     f"images): not a point of its own.\n" for n, m in (study.same_as or {}).items())
    lines = [
        "# Study: CNN from scratch vs linear probe, over seeds and training-set sizes\n\n",
        (banner.rstrip(">\n") + "\n\n") if banner else "",
        f"{names['cnn']} against {names['probe']}, on {study.prepared.get('source', 'the prepared data')} "
        f"({study.num_classes} classes; test {len(study.labels)} images, the same for every cell). Seeds "
        f"{', '.join(map(str, study.seeds))}; training images per class {sizes}, each with selection (val) images "
        f"drawn with it (study.val_per_class = {params.study.val_per_class}); each cell one DVC stage of "
        f"{PIPELINE}. Made with {git_state}.\n",
        ("\n" + merged) if merged else "",
        "\nBoth models are tuned alike, on the selection images only: the CNN's recipe at each size from "
        f"{len(grid.lr) * len(grid.weight_decay)} (lr {', '.join(f'{v:g}' for v in grid.lr)} x weight decay "
        f"{', '.join(f'{v:g}' for v in grid.weight_decay)}, at seed {study.seeds[0]}, the one kept then trained at "
        f"every seed), and its epoch in every cell; the probe's C in every cell from {len(params.study.probe_c_grid)} "
        f"({', '.join(f'{c:g}' for c in params.study.probe_c_grid)}). Every size is named with the labelled images "
        "per class a cell used: train + selection.\n",
        "\n## Learning curves\n\n",
        figure(figures / "learning_curves.png", out_dir, "Test macro-F1 and accuracy against labelled images per class"),
        "\nEach line: the mean over seeds; the band: the lowest to the highest seed; dots: the seeds. The grey line: "
        "chance accuracy (left: macro-F1 0).\n",
        "\n## At each size\n\n",
        f"Mean ± sd over seeds. The {LEVEL:.0%} interval of probe - CNN holds training randomness and test sampling: "
        "the per-seed paired differences' variance over the seeds (the seed part, on seeds - 1 degrees of freedom) "
        "plus the test split's sampling variance of their mean (delta method over the test images, which every seed "
        "shares), with Student's t on seeds - 1 degrees of freedom (docs/study.md; conservative, and checked by "
        "simulation of studies like this one to cover at least 93% of the time). Seeds won: the paired seeds where the probe scored higher, with the exact "
        "(Clopper-Pearson) interval of that share.\n\n",
        "Test macro-F1:\n\n", sizes_table(study, compared, "macro_f1"),
        "\nTest accuracy:\n\n", sizes_table(study, compared, "accuracy"),
        "\n", figure(figures / "difference.png", out_dir, "Probe minus CNN with 95% intervals"),
        "\n## Conclusions\n\n",
        f"By one rule, on test macro-F1: a model is better at a size only when the {LEVEL:.0%} interval of probe - CNN "
        "excludes 0; otherwise no conclusion at that size.\n\n",
        "".join(f"- {sentence}\n" for sentence in conclusions(study, compared)),
        f"\n{results['crossing']}\n",
        "\n## What the study could detect\n\n",
        f"Per size, on test macro-F1: the two parts of the variance, the smallest true difference these "
        f"{len(study.seeds)} seeds detect with {POWER:.0%} probability by the rule above, and how many seeds a "
        f"{REFERENCE_DIFFERENCE * 100:.0f}-point difference would need.\n\n",
        power_table(study, compared),
        "\n## Tuning: both models alike\n\n",
        tuning_table(study, params),
        "\n## Is the CNN trained enough? The budget check\n\n",
        f"At every size, seed {study.seeds[0]}'s CNN trained again with twice its optimiser steps (same recipe, "
        "warmup scaled): the CNN counts as under-trained where that raised its test macro-F1 by more than the "
        "half-width of the size's interval. Train accuracy: the kept model, in eval mode, on its un-augmented "
        "training subset.\n\n",
        budget_table(study, budget),
        "\n" + "".join(f"{s}\n" for s in budget_sentences(study, budget)),
        "\n## Generalisation: on images no choice saw\n\n",
        "Train and test accuracy (test images played no part in any choice: the selection images chose epochs, C, "
        "recipes and temperatures), and each model's fit by the single-run report's rule "
        f"({verdict_rules.FITTED_SKILL:.0%} of the way from chance for a fitted model, a train - test gap over "
        f"{verdict_rules.OVERFIT_GAP * 100:.0f} points for overfitting).\n\n",
        generalisation_table(study),
        "\nCalibration on test (mean over seeds; ECE in points, equal-mass bins; after temperature scaling fitted "
        f"on the selection images in brackets; T the median temperature). A temperature fitted on fewer than "
        f"{MIN_CALIBRATION_VAL} selection images is itself noisy.\n\n",
        calibration_table(study),
        "\n", figure(figures / "calibration.png", out_dir, "Test ECE and NLL against labelled images per class"),
        "\n## Per-class gains\n\n",
        figure(figures / "class_gains.png", out_dir, "Per-class probe - CNN F1 against labelled images per class"),
        "\n## Training compute to a fixed target\n\n",
        "Per seed, the target is fixed before any curve: val macro-F1 half the way from chance to 1. The CNN reaches "
        "it at the first epoch at or above it, its compute the training passes so far (3 forward passes an image, "
        "counted FLOPs; validation apart); the L-BFGS probe, which has no curve, at the end of its fit: its own "
        "train and selection images through the backbone once, and its C sweep. Compute does not depend on the "
        "machine or its load.\n\n",
        compute_table(study, targets),
        "\n## Cost of each cell\n\n",
        f"Wall seconds of each cell as it ran (study/timing/), on {study.cells['cnn', study.seeds[0], study.sizes[0]]['device']}; "
        f"the shared feature extraction: {sum(study.features['seconds'].values()):.1f} s for "
        f"{sum(study.features['images'].values())} images.\n\n",
        cost_table(study),
        "\n## What a seed changes\n\n",
        "- CNN: its initialisation, the order of its batches, its augmentation, and the training and selection "
        "subsets drawn.\n"
        "- Probe: the subsets drawn only (L-BFGS on fixed features starts from zero and draws nothing).\n"
        "- Not the test split, made once by the prepare stage with the main `seed`.\n",
    ]
    return "".join(lines), results


def verdict_paragraph(summary: dict) -> str:
    """A study's verdict in a few sentences, from its metrics/study.json alone: the sizes where each model is better
    by the rule, with the difference and its interval, those where the interval holds a tie, and the seeds won.
    The README and the example study's page quote it, and a test checks the quotes against the file."""
    sizes = summary["sizes"]
    order = sorted(sizes, key=lambda n: float("inf") if n == "all" else int(n))

    def name(n: str) -> str:
        return f"all {sizes[n]['train_images_per_class']:.0f}" if n == "all" else n

    def diff(n: str) -> str:
        estimate, low, high = sizes[n]["probe_minus_cnn_macro_f1"]
        return f"{estimate * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}]"

    def listed(items: list[str]) -> str:
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    parts = []
    for model, words in (("probe", "the probe is better"), ("cnn", "the CNN from scratch is better")):
        won = [n for n in order if sizes[n]["verdict_macro_f1"] == model]
        if won:
            parts.append(f"{words} at {listed([name(n) for n in won])} training images per class "
                         f"({'; '.join(diff(n) for n in won)} points of test macro-F1, probe - CNN with its 95% "
                         "interval)")
    tied = [n for n in order if sizes[n]["verdict_macro_f1"] == "undecided"]
    if tied:
        parts.append(f"at {listed([name(n) for n in tied])} the interval does not exclude a tie "
                     f"({'; '.join(diff(n) for n in tied)})")
    wins = [sizes[n]["probe_wins_macro_f1"] for n in order]
    seeds = (f"The probe scored higher on {wins[0]['seeds']} of {wins[0]['of']} seeds at every size."
             if len({(w["seeds"], w["of"]) for w in wins}) == 1 else
             "Seeds on which the probe scored higher: " + ", ".join(f"{w['seeds']} of {w['of']} at {name(n)}"
                                                                     for n, w in zip(order, wins)) + ".")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + ". " + seeds
