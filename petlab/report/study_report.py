"""reports/study.md, its figures and metrics/study.json, from the cells' JSON files (study/pipeline.yaml).

Every number comes from the cells; every conclusion from one rule of petlab.report.study_stats or petlab.report.verdict.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from petlab.core import paths
from petlab.core.calibration import MIN_TEMPERATURE_IMAGES
from petlab.core.errors import PipelineError
from petlab.core.metrics import per_class_rows
from petlab.core.outputs import save_figure
from petlab.core.params import ALL_IMAGES, Params
from petlab.core.records import weights_label
from petlab.data.dataset import PreparedData
from petlab.figures import plots
from petlab.report import verdict as verdict_rules
from petlab.report.document import figure, table
from petlab.report.formats import percent, points
from petlab.report.study_stats import (
    EQUIVALENCE_LEVEL,
    LEVEL,
    POWER,
    REFERENCE_DIFFERENCE,
    TRAINED,
    UNDERTRAINED,
    Comparison,
    better_model,
    budget_verdict,
    compare,
    compare_scores,
    crossing,
    equivalence_power,
    family_level,
    power_summary,
)
from petlab.study.cells import (
    FEATURES_RECORD,
    MODELS,
    cell_path,
    decode_predictions,
    decode_values,
    long_path,
    probe_tune_path,
    size_name,
)

REFERENCE_BACKBONE = "vit_tiny_patch16_224"  # the backbone the question is about; any other is a stand-in
METRICS = {"macro_f1": "macro-F1", "accuracy": "accuracy"}
SHORT_NAMES = {"cnn": "CNN", "probe": "probe"}  # in sentences; the report names both in full at its top
VERDICT_WORDS = {"probe": "probe better", "cnn": "CNN better", "undecided": "no conclusion"}


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run the study's cells first (dvc repro {paths.STUDY_PIPELINE})")
    return json.loads(path.read_text())


def require(files: list[Path]) -> None:
    """Refuse, naming the first few, when any of the study's cell files is missing."""
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise PipelineError(
            f"{len(missing)} cells missing ({', '.join(missing[:6])}"
            f"{', ...' if len(missing) > 6 else ''}); run them first (dvc repro {paths.STUDY_PIPELINE})"
        )


def check_same_images(
    cells: dict, long: dict, cell_paths: dict, long_paths: dict, test_images: int, data_dir: Path
) -> None:
    """The cells paired in the report trained and selected on the same images (both models, and the CNN's budget
    check), and every cell scored the same test split."""
    for (s, n), longer in long.items():
        cnn, probe = cells["cnn", s, n], cells["probe", s, n]
        if (cnn["subset"], cnn["val_subset"]) != (probe["subset"], probe["val_subset"]):
            raise PipelineError(
                f"{cell_paths['cnn', s, n]} and {cell_paths['probe', s, n]} trained or selected on "
                f"different images; re-run the study (dvc repro {paths.STUDY_PIPELINE})"
            )
        if longer.get("subset") != cnn["subset"] or len(longer["test_predicted"].split()) != test_images:
            raise PipelineError(
                f"{long_paths[s, n]} trained on other images than {cell_paths['cnn', s, n]} or "
                f"scored another test split; re-run the study (dvc repro {paths.STUDY_PIPELINE})"
            )
        for m in MODELS:
            if len(cells[m, s, n]["test_predicted"].split()) != test_images:
                raise PipelineError(
                    f"{cell_paths[m, s, n]} scored another test split than {data_dir}; re-run "
                    f"the study (dvc repro {paths.STUDY_PIPELINE})"
                )


def repeated_sizes(cells: dict, seeds: list[int], sizes: list) -> tuple[dict, list]:
    """A size whose subsets are those of the next larger one for every seed (no class holds that many images) is
    that larger size again: not a point of its own on the curves, nor a conclusion of its own. Returns each such
    size with the largest size it repeats, and the sizes kept."""
    same_as, kept = {}, []
    for n, larger in zip(sizes, sizes[1:] + [None]):
        if larger is not None and all(cells["cnn", s, n]["subset"] == cells["cnn", s, larger]["subset"] for s in seeds):
            same_as[n] = larger
        else:
            kept.append(n)
    for n, larger in list(same_as.items()):  # 10 -> 25 -> all: name the last
        while larger in same_as:
            larger = same_as[larger]
        same_as[n] = larger
    return same_as, kept


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
    def load(cls, params: Params, data_dir: Path) -> Study:
        data = PreparedData.open(data_dir)
        labels = np.array([label for _, label in data.items("test")])
        seeds = list(params.study.seeds)
        sizes = sorted(params.study.images_per_class, key=lambda n: float("inf") if n == ALL_IMAGES else n)
        cell_paths = {(m, s, n): cell_path(m, s, n) for m in MODELS for s in seeds for n in sizes}
        long_paths = {(s, n): long_path(s, n) for s in seeds for n in sizes}
        tune_paths = {n: probe_tune_path(n) for n in sizes}
        require([*cell_paths.values(), *long_paths.values(), *tune_paths.values(), FEATURES_RECORD])
        cells = {key: json.loads(path.read_text()) for key, path in cell_paths.items()}
        long = {k: json.loads(p.read_text()) for k, p in long_paths.items()}
        check_same_images(cells, long, cell_paths, long_paths, len(labels), data_dir)
        same_as, kept = repeated_sizes(cells, seeds, sizes)
        species_file = data_dir / "species.json"
        timing = (
            {p.stem: json.loads(p.read_text()) for p in sorted(paths.STUDY_TIMING.glob("*.json"))}
            if paths.STUDY_TIMING.is_dir()
            else {}
        )
        return cls(
            seeds,
            kept,
            cells,
            long,
            {n: json.loads(p.read_text()) for n, p in tune_paths.items()},
            labels,
            data.class_names,
            read_json(data_dir / "report.json"),
            read_json(FEATURES_RECORD),
            json.loads(species_file.read_text()) if species_file.is_file() else None,
            same_as,
            timing,
        )

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
    return {
        "cnn": f"CNN from scratch ({params.train_cnn.arch})",
        "probe": plots.probe_label(study.features["timm_model"], "linear", weights_label(study.features)),
    }


def caveats(study: Study) -> dict[str, str]:
    """What these numbers are not, short name -> why: every figure and the report's first lines carry it."""
    out = {}
    if not study.features.get("pretrained", True):
        out["random backbone weights"] = "the probe's numbers say nothing about a pretrained backbone"
    if study.features["timm_model"] != REFERENCE_BACKBONE:
        described = weights_label(study.features)
        out["stand-in backbone"] = f"the probe's backbone is {study.features['timm_model']}, not ViT-Tiny" + (
            f" ({described})" if described else ""
        )
    if study.prepared.get("generated"):
        out["generated images"] = "shapes on noise made by petlab.prepare.synthetic, not photographs"
    dataset = study.prepared.get("source", "oxford_pets").split(" ")[0]
    if dataset != "oxford_pets":
        out[f"{dataset}, not Oxford-IIIT Pet"] = "another dataset than the one the question is about"
    if len(study.seeds) == 1:
        out["one seed"] = "the intervals hold test sampling only, not training randomness"
    largest = study.per_class(study.sizes[-1])
    if largest < verdict_rules.MIN_TRAIN_PER_CLASS:
        out[f"about {largest:.0f} training images per class at the largest size"] = (
            f"below the {verdict_rules.MIN_TRAIN_PER_CLASS} a CNN from scratch is usually given; the curves show "
            "the small-data regime only"
        )
    return out


def figure_note(notes: dict[str, str]) -> str:
    """The caveats' short names, wrapped to fit under a figure's title."""
    return "\n".join(textwrap.wrap("; ".join(notes), 90))


# ---------------------------------------------------------------- the numbers

PRIMARY = "macro_f1"  # the metric the verdicts rest on; accuracy is shown beside it, for reading only


def comparisons(study: Study) -> dict:
    """(metric, size) -> Comparison of probe - CNN: on the primary metric at the family level over sizes (each size
    one member of a Bonferroni family), on accuracy at LEVEL, for reading only."""
    family = family_level(len(study.sizes))
    return {
        (metric, n): compare(
            study.labels,
            study.predictions("cnn", n),
            study.predictions("probe", n),
            metric,
            study.num_classes,
            level=family if metric == PRIMARY else LEVEL,
        )
        for metric in METRICS
        for n in study.sizes
    }


def mean_sd(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def budget_check(study: Study, tolerance: float) -> dict:
    """size -> the budget check: every seed's CNN with twice its steps against the same seed's cell, paired over
    seeds and test images (long - normal, test macro-F1), read by petlab.report.study_stats.budget_verdict."""
    out = {}
    for n in study.sizes:
        long = np.stack([decode_predictions(study.long[s, n]["test_predicted"]) for s in study.seeds])
        gain = compare(study.labels, study.predictions("cnn", n), long, "macro_f1", study.num_classes)
        first = study.cells["cnn", study.seeds[0], n]
        out[n] = {
            "steps": first["steps"],
            "long_steps": study.long[study.seeds[0], n]["steps"],
            "test_macro_f1_mean": float(study.values("cnn", n, "macro_f1").mean()),
            "long_test_macro_f1_mean": float(np.mean([study.long[s, n]["test"]["macro_f1"] for s in study.seeds])),
            "gain": gain.difference,
            "interval": list(gain.interval),
            "upper_bound": gain.bounds(EQUIVALENCE_LEVEL)[1],
            "tolerance": tolerance,
            "verdict": budget_verdict(gain, tolerance),
            "power": equivalence_power(gain, tolerance),
            "seeds_gaining": gain.probe_wins,
            "seeds": gain.seeds,
            "train_accuracy_mean": float(study.values("cnn", n, "accuracy", "train").mean()),
            "long_train_accuracy_mean": float(np.mean([study.long[s, n]["train"]["accuracy"] for s in study.seeds])),
        }
    return out


def training_compute(study: Study, seed: int, size) -> dict:
    """Each model's training GFLOPs at a cell, tuning charged to both alike: {"cnn" | "probe": {"tuning", "own",
    "per_epoch" (the CNN's)}}. The CNN's tuning is every recipe of its size's grid trained as long as the cell (the
    recipes share the subset, the model and the budget); the probe's is its C sweep at the first seed; its own
    compute is its train and selection images through the backbone once and its fit. Validation is not counted."""
    cnn, probe = study.cells["cnn", seed, size], study.cells["probe", seed, size]
    per_epoch = verdict_rules.training_gflops(
        cnn["compute"]["forward_gflops_per_image"], cnn["compute"]["train_images_per_epoch"]
    )
    features = study.features["forward_gflops_per_image"] * (probe["train_images"] + probe["val_images"])
    return {
        "cnn": {
            "tuning": len(cnn["recipe"]["tried"]) * cnn["epochs"] * per_epoch,
            "own": cnn["epochs"] * per_epoch,
            "per_epoch": per_epoch,
        },
        "probe": {
            "tuning": study.probe_tuning[size]["compute"]["fit_gflops"],
            "own": features + probe["compute"]["fit_gflops"],
        },
    }


def total_compute(study: Study, model: str, size) -> np.ndarray:
    """Per seed, a model's whole training compute at a size, tuning included."""
    return np.array(
        [sum(v for k, v in training_compute(study, s, size)[model].items() if k != "per_epoch") for s in study.seeds]
    )


def compute_targets(study: Study) -> dict:
    """(seed, size) -> compute to the fixed target (petlab.report.verdict.compute_to_target), tuning charged to both and
    a model counted as reaching it only where its val curve stays at or above it and its test macro-F1 is too."""
    out = {}
    for s in study.seeds:
        for n in study.sizes:
            cnn, probe = study.cells["cnn", s, n], study.cells["probe", s, n]
            compute = training_compute(study, s, n)
            c, p = compute["cnn"], compute["probe"]
            curve = [
                (e + 1, c["tuning"] + (e + 1) * c["per_epoch"], float(f))
                for e, f in enumerate(cnn["val_curve"]["val_macro_f1"])
            ]
            out[s, n] = verdict_rules.compute_to_target(
                {"cnn": curve, "vit": [(None, p["tuning"] + p["own"], float(probe["val"]["macro_f1"]))]},
                study.num_classes,
                {"cnn": cnn["test"]["macro_f1"], "vit": probe["test"]["macro_f1"]},
            )
    return out


def per_image(study: Study, model: str, size, key: str) -> np.ndarray:
    """(seeds, images) of a per-image score a cell keeps: test_nll, test_brier."""
    return np.stack([decode_values(study.cells[model, s, size][key]) for s in study.seeds])


def calibration_comparisons(study: Study) -> dict:
    """(score, size) -> Comparison of probe - CNN of test NLL and Brier score, as trained (proper scores: lower is
    better), paired over seeds and test images, at the family level over sizes as the verdicts are."""
    family = family_level(len(study.sizes))
    return {
        (key, n): compare_scores(
            per_image(study, "cnn", n, f"test_{key}"), per_image(study, "probe", n, f"test_{key}"), family
        )
        for key in ("nll", "brier")
        for n in study.sizes
    }


def calibration_means(study: Study, size) -> dict:
    """Per model, the mean over seeds of test NLL, Brier, ECE (plug-in and debiased) as trained and after
    temperature scaling where it was fitted, the median temperature, and the seeds where scaling made NLL worse or
    its temperature sat at a search bound."""
    out = {}
    for m in MODELS:
        cal = [study.cells[m, s, size]["calibration"] for s in study.seeds]
        entry = {
            key: round(float(np.mean([c["test"][key] for c in cal])), 6)
            for key in ("nll", "brier", "ece", "ece_debiased", "ece_reference")
        }
        fitted = [c for c in cal if c["test_scaled"] is not None]
        entry["scaled_seeds"] = len(fitted)
        if fitted:
            entry.update(
                {
                    f"{key}_scaled": round(float(np.mean([c["test_scaled"][key] for c in fitted])), 6)
                    for key in ("nll", "ece")
                }
            )
            entry["temperature"] = round(float(np.median([c["temperature"] for c in fitted])), 6)
            entry["scaling_worsened_nll"] = sum(bool(c["scaling_worsened_nll"]) for c in fitted)
            entry["temperature_at_bound"] = sum(bool(c["temperature_at_bound"]) for c in fitted)
        out[m] = entry
    return out


def per_class_f1(study: Study, model: str, size) -> np.ndarray:
    """Each class's test F1, the mean over seeds."""
    rows = [
        per_class_rows(
            study.labels, decode_predictions(study.cells[model, s, size]["test_predicted"]), study.class_names
        )
        for s in study.seeds
    ]
    return np.mean([[r["f1"] for r in seed_rows] for seed_rows in rows], axis=0)


def class_gains(study: Study) -> pd.DataFrame:
    """probe - CNN test F1 of every class at every size (rows: classes; columns: sizes), the mean over seeds."""
    return pd.DataFrame(
        {size_name(n): per_class_f1(study, "probe", n) - per_class_f1(study, "cnn", n) for n in study.sizes},
        index=study.class_names,
    )


def rounded_list(values) -> list:
    return [None if v is None else round(float(v), 6) for v in values]


def power_entry(c: Comparison) -> dict:
    """metrics/study.json's power of one size: at the estimated seed sd and at the ends of its 95% interval."""
    power = power_summary(c, level=c.level)
    return {
        "seed_sd": None if c.seed_sd is None else round(c.seed_sd, 6),
        "seed_sd_range": None if power["seed_sd_range"] is None else rounded_list(power["seed_sd_range"]),
        "test_se": round(c.test_se, 6),
        "detectable": rounded_list(power["detectable"]),
        "seeds_for_2_points": power["seeds_for_reference"],
    }


def size_summary(study: Study, n, compared: dict, calibrated: dict, budget: dict, targets: dict) -> dict:
    """metrics/study.json's entry of one size."""
    entry = {
        "train_images_per_class": round(study.per_class(n), 3),
        "selection_images_per_class": round(study.per_class(n, "val_images"), 3),
    }
    for m in MODELS:
        entry[m] = {}
        for metric in METRICS:
            mean, sd = mean_sd(study.values(m, n, metric))
            entry[m][f"test_{metric}_mean"] = round(mean, 6)
            entry[m][f"test_{metric}_sd"] = None if np.isnan(sd) else round(sd, 6)  # one seed: no sd
        entry[m]["train_accuracy_mean"] = round(float(study.values(m, n, "accuracy", "train").mean()), 6)
        entry[m]["training_gflops_mean"] = round(float(total_compute(study, m, n).mean()), 3)
    for metric in METRICS:
        c: Comparison = compared[metric, n]
        entry[f"probe_minus_cnn_{metric}"] = [round(v, 6) for v in (c.difference, *c.interval)]
        entry[f"interval_level_{metric}"] = round(c.level, 6)
        entry[f"probe_wins_{metric}"] = {
            "seeds": c.probe_wins,
            "of": c.seeds,
            "ties": c.ties,
            "interval": [round(v, 6) for v in c.wins_interval],
        }
    entry[f"verdict_{PRIMARY}"] = better_model(compared[PRIMARY, n])
    entry["power_macro_f1"] = power_entry(compared[PRIMARY, n])
    entry["budget_check"] = {
        k: (round(v, 6) if isinstance(v, float) else rounded_list(v) if isinstance(v, list) else v)
        for k, v in budget[n].items()
    }
    entry["calibration"] = calibration_means(study, n)
    for key in ("nll", "brier"):
        c = calibrated[key, n]
        entry["calibration"][f"probe_minus_cnn_{key}"] = [round(v, 6) for v in (c.difference, *c.interval)]
        entry["calibration"][f"verdict_{key}"] = lower_verdict(c)
    reached = [targets[s, n]["reached"] for s in study.seeds]
    entry["compute_to_target"] = {
        "target": round(targets[study.seeds[0], n]["target"], 6),
        "tuning": "charged to both",
        **{
            f"{m}_gflops_median": (
                round(float(np.median([r[k]["gflops"] for r in reached])), 3) if all(r[k] for r in reached) else None
            )
            for m, k in (("cnn", "cnn"), ("probe", "vit"))
        },
        "cnn_reaches": sum(r["cnn"] is not None for r in reached),
        "probe_reaches": sum(r["vit"] is not None for r in reached),
    }
    return entry


def summary(study: Study, compared: dict, calibrated: dict, budget: dict, targets: dict) -> dict:
    """metrics/study.json: per size, each model's mean and sd over seeds, the comparison, its power, the budget
    check, calibration and compute; the family's level and the crossing."""
    return {
        "seeds": study.seeds,
        "primary_metric": PRIMARY,
        "family": {
            "sizes": len(study.sizes),
            "level_each": round(family_level(len(study.sizes)), 6),
            "family_level": LEVEL,
        },
        "sizes": {size_name(n): size_summary(study, n, compared, calibrated, budget, targets) for n in study.sizes},
        "caveats": [f"{k}: {v}" for k, v in caveats(study).items()],
        "same_subset_as": {size_name(n): size_name(m) for n, m in (study.same_as or {}).items()},
        "crossing": crossing(
            [size_name(n) for n in study.sizes], [better_model(compared[PRIMARY, n]) for n in study.sizes]
        ),
    }


def lower_verdict(c: Comparison) -> str:
    """Of a score where lower is better (NLL, Brier), probe - CNN: 'probe' where the interval is under 0, 'cnn'
    over it, 'undecided' else."""
    return {"probe": "cnn", "cnn": "probe", "undecided": "undecided"}[better_model(c)]


# ---------------------------------------------------------------- figures


def log_axis(ax, study: Study, x: np.ndarray) -> None:
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{size_name(n)}\n({v:.0f})" for n, v in zip(study.sizes, x)])
    ax.minorticks_off()
    ax.set_xlabel("training images per class\n(in brackets, labelled: train + selection; log scale)", fontsize=9)


def learning_curves_figure(study: Study, names: dict[str, str], note: str):
    plt = plots.pyplot()

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
    plt = plots.pyplot()

    x = np.array([study.labelled(n) for n in study.sizes])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for offset, (metric, colour) in zip((0.97, 1.03), zip(METRICS, ("tab:green", "tab:purple"))):
        c = [compared[metric, n] for n in study.sizes]
        mid = np.array([v.difference for v in c])
        err = np.array([[v.difference - v.interval[0], v.interval[1] - v.difference] for v in c]).T
        ax.errorbar(x * offset, mid, yerr=err, fmt="o-", capsize=3, color=colour, label=f"test {METRICS[metric]}")
    ax.axhline(0, color="grey", linewidth=1)
    log_axis(ax, study, x)
    level = compared[PRIMARY, study.sizes[0]].level
    ax.set_ylabel(f"probe - CNN: macro-F1 at {level_text(level)} (family), accuracy at {level_text(LEVEL)}", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Probe minus CNN" + (f"\n({note})" if note else ""), fontsize=10)
    fig.tight_layout()
    return fig


def calibration_figure(study: Study, names: dict[str, str], note: str):
    """Test NLL, Brier score and debiased ECE of both models against labelled images per class, the mean over seeds:
    as trained (solid), NLL also after temperature scaling cross-fitted on test halves (dashed, where fitted)."""
    plt = plots.pyplot()

    x = np.array([study.labelled(n) for n in study.sizes])
    means = [calibration_means(study, n) for n in study.sizes]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    panels = (
        ("nll", "test NLL (proper score)"),
        ("brier", "test Brier score (proper score)"),
        ("ece_debiased", "test ECE, debiased (points)"),
    )
    for ax, (key, label) in zip(axes, panels):
        for m, colour in zip(MODELS, ("tab:blue", "tab:orange")):
            scale = 100 if key.startswith("ece") else 1
            ax.plot(x, [v[m][key] * scale for v in means], "o-", color=colour, label=f"{names[m]}: as trained")
            if key == "nll":
                scaled = [v[m].get("nll_scaled", np.nan) for v in means]
                ax.plot(x, scaled, "o--", color=colour, alpha=0.7, label=f"{names[m]}: temperature cross-fitted")
        log_axis(ax, study, x)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle("Calibration over training-set sizes (mean over seeds)" + (f"\n({note})" if note else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    return fig


def compute_figure(study: Study, names: dict[str, str], note: str):
    """Test macro-F1 against whole training compute (tuning included, both models alike), one point per size: the
    mean over seeds, with the lowest and highest seed as bars."""
    plt = plots.pyplot()

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for m, colour in zip(MODELS, ("tab:blue", "tab:orange")):
        gflops = np.array([total_compute(study, m, n).mean() for n in study.sizes])
        scores = np.stack([study.values(m, n, "macro_f1") for n in study.sizes])  # (sizes, seeds)
        mid = scores.mean(1)
        ax.errorbar(
            gflops,
            mid,
            yerr=[mid - scores.min(1), scores.max(1) - mid],
            fmt="o-",
            capsize=3,
            color=colour,
            label=names[m],
        )
        for g, y, n in zip(gflops, mid, study.sizes):
            ax.annotate(size_name(n), (g, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color=colour)
    ax.set_xscale("log")
    ax.set_xlabel("training compute, tuning included (GFLOPs, log scale; validation not counted)", fontsize=9)
    ax.set_ylabel("test macro-F1 (mean over seeds, bars min-max)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(
        "Level reached against compute; labels: training images per class" + (f"\n({note})" if note else ""),
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def class_gains_figure(study: Study, gains: pd.DataFrame, note: str, top: int = 6):
    """probe - CNN test F1 against size for the classes whose gain changes most from the smallest size to the
    largest."""
    plt = plots.pyplot()

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
    ax.set_title(
        f"Per-class gain of the probe: the {min(top, len(change))} classes whose gain changes most"
        + (f"\n({note})" if note else ""),
        fontsize=10,
    )
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- the document


def pct_sd(mean: float, sd: float) -> str:
    return f"{percent(mean)} ± {percent(sd)}" if not np.isnan(sd) else f"{percent(mean)}"


def wins_text(c: Comparison) -> str:
    ties = f", {c.ties} tied" if c.ties else ""
    return f"{c.probe_wins} of {c.seeds}{ties} [{c.wins_interval[0]:.2f}, {c.wins_interval[1]:.2f}]"


def level_text(level: float) -> str:
    return f"{percent(level, None)}%"


def interval_text(c: Comparison) -> str:
    return f"{points(c.difference)} [{points(c.interval[0])}, {points(c.interval[1])}]"


def sizes_table(study: Study, compared: dict, metric: str) -> str:
    rows = []
    for n in study.sizes:
        c: Comparison = compared[metric, n]
        row = {
            "train per class (+ selection)": size_label(study, n),
            f"CNN test {METRICS[metric]} (%)": pct_sd(*mean_sd(study.values("cnn", n, metric))),
            f"probe test {METRICS[metric]} (%)": pct_sd(*mean_sd(study.values("probe", n, metric))),
            f"probe - CNN (points) [{level_text(c.level)}]": interval_text(c),
            "seeds the probe wins [exact 95%]": wins_text(c),
        }
        if metric == PRIMARY:
            row["by the rule"] = VERDICT_WORDS[better_model(c)]
        rows.append(row)
    return table(pd.DataFrame(rows))


def power_table(study: Study, compared: dict) -> str:
    """Power with its uncertainty: at the seed sd estimated from these seeds, and at the ends of its 95% interval."""

    def ranged(values: list, unit: str = "") -> str:
        text = [
            ("none up to 100" if v is None else f"{v}") if isinstance(v, (int, type(None))) else f"{percent(v)}"
            for v in values
        ]
        if all(v is None for v in values):
            return "none up to 100: test sampling alone hides it"
        return (
            text[0]
            if len(text) == 1 or values[1] is None and values[2] is None
            else f"{text[0]}{unit} ({text[1]} to {text[2]})"
        )

    rows = []
    for n in study.sizes:
        c = compared[PRIMARY, n]
        power = power_summary(c, level=c.level)
        if c.seed_sd is None:
            rows.append(
                {
                    "train per class": size_name(n),
                    "seed sd of probe - CNN (points)": "- (one seed)",
                    "test-sampling se (points)": f"{percent(c.test_se)}",
                }
            )
            continue
        low, high = power["seed_sd_range"]
        rows.append(
            {
                "train per class": size_name(n),
                "seed sd of probe - CNN (points) (95%)": f"{percent(c.seed_sd)} ({percent(low)} to {percent(high)})",
                "test-sampling se (points)": f"{percent(c.test_se)}",
                f"detectable at {POWER:.0%} power with {c.seeds} seeds (points)": ranged(power["detectable"]),
                f"seeds for {percent(REFERENCE_DIFFERENCE, 0)} points": ranged(power["seeds_for_reference"]),
            }
        )
    return table(pd.DataFrame(rows))


def tied_best(scores: list[float]) -> int:
    return sum(v == max(scores) for v in scores)


def tuning_table(study: Study) -> str:
    rows = []
    for n in study.sizes:
        recipe = study.cells["cnn", study.seeds[0], n]["recipe"]
        cnn_scores = [t["val_macro_f1"] for t in recipe["tried"]]
        probe = study.probe_tuning[n]
        rows.append(
            {
                "train per class": size_name(n),
                "selection images": f"{study.per_class(n, 'val_images') * study.num_classes:.0f}",
                "CNN recipe kept (lr, weight decay)": f"{recipe['lr']:g}, {recipe['weight_decay']:g}",
                "CNN selection macro-F1 over its recipes (%)": f"{percent(min(cnn_scores))} to {percent(max(cnn_scores))}",
                "CNN recipes tied best": f"{tied_best(cnn_scores)} of {len(cnn_scores)}",
                "probe C kept": f"{probe['selected_c']:g}"
                + (
                    " (grid edge)"
                    if len(probe["c_grid"]) > 1 and probe["selected_c"] in (min(probe["c_grid"]), max(probe["c_grid"]))
                    else ""
                ),
                "probe selection macro-F1 over its Cs (%)": f"{percent(min(probe['sweep_val_macro_f1']))} to "
                f"{percent(max(probe['sweep_val_macro_f1']))}",
                "probe Cs tied best": f"{tied_best(probe['sweep_val_macro_f1'])} of {len(probe['c_grid'])}",
            }
        )
    return table(pd.DataFrame(rows))


def budget_table(study: Study, budget: dict) -> str:
    rows = []
    for n in study.sizes:
        b = budget[n]
        low, high = b["interval"]
        rows.append(
            {
                "train per class": size_name(n),
                "CNN steps (2x)": f"{b['steps']} ({b['long_steps']})",
                "test macro-F1, mean (2x) (%)": f"{percent(b['test_macro_f1_mean'])} ({percent(b['long_test_macro_f1_mean'])})",
                f"gain (points) [{LEVEL:.0%}]": f"{points(b['gain'])} [{points(low)}, {points(high)}]",
                "one-sided 95% upper bound (points)": points(b["upper_bound"]),
                "seeds gaining": f"{b['seeds_gaining']} of {b['seeds']}",
                "by the check": b["verdict"],
                f"power to show {percent(b['tolerance'], None)} points (%)": f"{percent(b['power'], 0)}",
                "CNN train accuracy (2x) (%)": f"{percent(b['train_accuracy_mean'])} "
                f"({percent(b['long_train_accuracy_mean'])})",
            }
        )
    return table(pd.DataFrame(rows))


def generalisation_table(study: Study) -> str:
    """Each model's fit of its own training subset and its train - test gap: test images played no part in any
    choice (the selection subset chose the epoch, C and recipe), so the gap is not biased by them."""
    rows = []
    for n in study.sizes:
        row = {"train per class": size_name(n)}
        for m in MODELS:
            train, test = study.values(m, n, "accuracy", "train"), study.values(m, n, "accuracy")
            regimes = [verdict_rules.regime(a, b, study.num_classes) for a, b in zip(train, test)]
            row[f"{SHORT_NAMES[m]} train / test accuracy (%)"] = f"{percent(train.mean())} / {percent(test.mean())}"
            row[f"{SHORT_NAMES[m]} by the fit rule"] = ", ".join(
                f"{regimes.count(r)} {r}" for r in dict.fromkeys(regimes)
            )
        rows.append(row)
    return table(pd.DataFrame(rows))


def calibration_table(study: Study, calibrated: dict) -> str:
    rows = []
    for n in study.sizes:
        means = calibration_means(study, n)
        row = {"train per class": size_name(n)}
        for key in ("nll", "brier"):
            c = calibrated[key, n]
            row[f"probe - CNN {key.upper() if key == 'nll' else 'Brier'} [{level_text(c.level)}]"] = (
                f"{c.difference:+.3f} [{c.interval[0]:+.3f}, {c.interval[1]:+.3f}]"
            )
        for m in MODELS:
            v = means[m]
            scaled = f" ({v['nll_scaled']:.3f})" if v["scaled_seeds"] == len(study.seeds) else ""
            row[f"{SHORT_NAMES[m]} NLL (scaled)"] = f"{v['nll']:.3f}{scaled}"
            row[f"{SHORT_NAMES[m]} ECE: plug-in / debiased"] = f"{percent(v['ece'])} / {percent(v['ece_debiased'])}"
            if v["scaled_seeds"]:
                flags = [
                    f"{v['scaling_worsened_nll']} worse NLL" if v["scaling_worsened_nll"] else "",
                    f"{v['temperature_at_bound']} at bound" if v["temperature_at_bound"] else "",
                ]
                row[f"{SHORT_NAMES[m]} T"] = f"{v['temperature']:.2f}" + "".join(f"; {f}" for f in flags if f)
            else:
                row[f"{SHORT_NAMES[m]} T"] = "not fitted"
        rows.append(row)
    return table(pd.DataFrame(rows))


def compute_table(study: Study, targets: dict) -> str:
    rows = []
    for n in study.sizes:
        reached = [targets[s, n]["reached"] for s in study.seeds]
        cnn, probe = total_compute(study, "cnn", n), total_compute(study, "probe", n)
        tuning = np.mean([training_compute(study, s, n)["cnn"]["tuning"] for s in study.seeds]) / cnn.mean()
        row = {
            "train per class": size_name(n),
            "CNN GFLOPs, tuning included (tuning share)": f"{cnn.mean():,.1f} ({tuning:.0%})",
            "probe GFLOPs, tuning included": f"{probe.mean():,.1f}",
            "CNN / probe": f"{cnn.mean() / probe.mean():.2g}x",
            "target (val macro-F1, %)": f"{percent(targets[study.seeds[0], n]['target'])}",
            "seeds reaching it (CNN / probe)": f"{sum(r['cnn'] is not None for r in reached)} / "
            f"{sum(r['vit'] is not None for r in reached)} of {len(reached)}",
        }
        for m, k in (("CNN", "cnn"), ("probe", "vit")):
            got = [r[k]["gflops"] for r in reached if r[k] is not None]
            row[f"{m} GFLOPs to it (median)"] = f"{np.median(got):,.1f}" if got else "-"
        rows.append(row)
    return table(pd.DataFrame(rows))


def cost_table(study: Study) -> str:
    rows = []
    for n in study.sizes:
        for s in study.seeds:
            seconds = {k: (study.timing or {}).get(f"{k}-{s}-{size_name(n)}", {}).get("seconds") for k in MODELS}
            rows.append(
                {
                    "train per class": size_name(n),
                    "seed": s,
                    "train images": study.cells["cnn", s, n]["train_images"],
                    **{f"{SHORT_NAMES[k]} cell (s)": "-" if v is None else f"{v:.1f}" for k, v in seconds.items()},
                }
            )
    return table(pd.DataFrame(rows))


def where(study: Study, n) -> str:
    labelled = (
        f"{study.per_class(n):.0f} training and {study.per_class(n, 'val_images'):.0f} selection images per class"
    )
    return (
        f"At {size_name(n)} training images per class ({labelled})"
        if n != ALL_IMAGES
        else f"With all training images ({labelled})"
    )


def conclusions(study: Study, compared: dict) -> list[str]:
    """One sentence per size, by the rule of petlab.report.study_stats.better_model on the primary metric's family interval."""
    out = []
    for n in study.sizes:
        c = compared[PRIMARY, n]
        v = better_model(c)
        diff = (
            f"probe - CNN {points(c.difference)} points of test macro-F1 [{points(c.interval[0])}, "
            f"{points(c.interval[1])}] ({level_text(c.level)}, one of the family), the probe ahead on {c.probe_wins} of "
            f"{c.seeds} seeds"
        )
        if v == "undecided":
            out.append(f"{where(study, n)}, no conclusion: {diff}; the interval does not exclude a tie.")
        else:
            out.append(f"{where(study, n)}, the {SHORT_NAMES[v]} is better: {diff}.")
    return out


def budget_sentences(study: Study, budget: dict) -> list[str]:
    """What the budget check says, size by size grouped by its three outcomes; a size that is not shown trained
    enough never reads as one that is."""
    by = {
        v: [size_name(n) for n in study.sizes if budget[n]["verdict"] == v]
        for v in (TRAINED, UNDERTRAINED, "inconclusive")
    }
    tolerance = points(budget[study.sizes[0]]["tolerance"], None, signed=False)
    out = []
    if by[TRAINED]:
        out.append(
            f"Trained enough at {', '.join(by[TRAINED])} training images per class: twice the CNN's optimiser "
            f"steps gain less than {tolerance} points of test macro-F1 there (the one-sided 95% upper bound "
            "of the gain is under it)."
        )
    if by[UNDERTRAINED]:
        out.append(
            f"Under-trained at {', '.join(by[UNDERTRAINED])} training images per class: twice the CNN's "
            "optimiser steps raised its test macro-F1 (the gain's 95% interval excludes 0), so the comparison "
            "there understates what the CNN can do (raise study.min_steps or train_cnn.epochs)."
        )
    if by["inconclusive"]:
        out.append(
            f"Inconclusive at {', '.join(by['inconclusive'])} training images per class: the gain from twice "
            f"the steps is neither shown to be under {tolerance} points nor shown to be above 0; the CNN "
            "may be under-trained there (more seeds, or a longer run, would tell)."
        )
    return out


def calibration_sentences(study: Study, calibrated: dict) -> list[str]:
    """Per size, by the single-run report's rule: the lower NLL wins where its interval excludes 0 and Brier's does
    not say the opposite, only between models that learned (the mean over seeds of the best val macro-F1 at least
    LEARNED_SKILL of the way from chance): a model at chance with uniformly low confidence is calibrated and
    useless."""
    out = []
    for n in study.sizes:
        nll, brier = calibrated["nll", n], calibrated["brier", n]
        by_nll, by_brier = lower_verdict(nll), lower_verdict(brier)
        diff = (
            f"probe - CNN test NLL {nll.difference:+.3f} [{nll.interval[0]:+.3f}, {nll.interval[1]:+.3f}], Brier "
            f"{brier.difference:+.3f} [{brier.interval[0]:+.3f}, {brier.interval[1]:+.3f}]"
        )
        idle = [
            SHORT_NAMES[m]
            for m in MODELS
            if not verdict_rules.learned(float(study.values(m, n, "macro_f1", "val").mean()), study.num_classes)
        ]
        if idle:
            out.append(f"{where(study, n)}, no calibration claim: the {' and the '.join(idle)} never learned ({diff}).")
        elif verdict_rules.proper_scores_winner(*(None if v == "undecided" else v for v in (by_nll, by_brier))):
            out.append(
                f"{where(study, n)}, the {SHORT_NAMES[by_nll]}'s probabilities are the better by the proper "
                f"scores: {diff}."
            )
        elif by_nll != "undecided":
            out.append(f"{where(study, n)}, the proper scores disagree, so no calibration claim: {diff}.")
        else:
            out.append(f"{where(study, n)}, NLL does not separate the models: {diff}.")
    return out


def header(study: Study, params: Params, names: dict[str, str], notes: dict[str, str], git_state: str) -> str:
    banner = "".join(f"> **{name}**: {why}\n>\n" for name, why in notes.items())
    merged = "".join(
        f"- {size_name(n)} per class is the same subset as {size_name(m)} (no class holds {n} training "
        f"images): not a point of its own.\n"
        for n, m in (study.same_as or {}).items()
    )
    grid = params.study.cnn_grid
    return "".join(
        [
            "# Study: CNN from scratch vs linear probe, over seeds and training-set sizes\n\n",
            (banner.rstrip(">\n") + "\n\n") if banner else "",
            f"{names['cnn']} against {names['probe']}, on {study.prepared.get('source', 'the prepared data')} "
            f"({study.num_classes} classes; test {len(study.labels)} images, the same for every cell). Seeds "
            f"{', '.join(map(str, study.seeds))}; training images per class {', '.join(size_name(n) for n in study.sizes)}, "
            f"each with selection (val) images drawn with it (study.val_per_class = {params.study.val_per_class}); each "
            f"cell one DVC stage of {paths.STUDY_PIPELINE}. Made with {git_state}.\n",
            ("\n" + merged) if merged else "",
            "\nBoth models are tuned alike: at each size, once, at the first seed, on its selection images, the CNN's "
            f"recipe from {len(grid.lr) * len(grid.weight_decay)} (lr {', '.join(f'{v:g}' for v in grid.lr)} x weight "
            f"decay {', '.join(f'{v:g}' for v in grid.weight_decay)}) and the probe's C from "
            f"{len(params.study.probe_c_grid)} ({', '.join(f'{c:g}' for c in params.study.probe_c_grid)}); the setting "
            "kept is trained at every seed, and each cell chooses its epoch on its own selection images. The intervals "
            "hold the seeds' training randomness given those settings, not the chance in the choice itself (tuning at "
            "another seed could choose otherwise). Every size is named with the labelled images per class a cell used: "
            "train + selection.\n",
        ]
    )


def comparison_section(study: Study, compared: dict, figures: Path, out_dir: Path) -> str:
    k = len(study.sizes)
    level = compared[PRIMARY, study.sizes[0]].level
    return "".join(
        [
            "\n## At each size\n\n",
            "Mean ± sd over seeds. The interval of probe - CNN holds training randomness and test sampling: the per-seed "
            "paired differences' variance over the seeds (with Student's t on seeds - 1 degrees of freedom) and the test "
            "split's sampling variance of their mean (delta method over the test images, which every seed shares; "
            "normal quantile), combined as docs/study.md says, and checked by simulation of studies like this one. "
            f"Test macro-F1 is the primary metric: its {k} intervals are one family, each at {level_text(level)} (Bonferroni), "
            f"so the chance of any false winner over the sizes stays under {1 - LEVEL:.0%}. Test accuracy is shown at "
            f"{LEVEL:.0%} for reading only: it decides nothing. Seeds won: the paired seeds where the probe scored "
            "higher, with the exact (Clopper-Pearson) interval of that share.\n\n",
            "Test macro-F1:\n\n",
            sizes_table(study, compared, PRIMARY),
            "\nTest accuracy:\n\n",
            sizes_table(study, compared, "accuracy"),
            "\n",
            figure(figures / "difference.png", out_dir, "Probe minus CNN with its intervals"),
            "\n## Conclusions\n\n",
            f"By one rule, on test macro-F1: a model is better at a size only when that size's interval of probe - CNN "
            f"({level_text(level)}, one of the family) excludes 0; otherwise no conclusion at that size. A conclusion at one size "
            "and none at another does not show that the difference changes with size: that would need the two sizes' "
            "difference compared, which the study does not test.\n\n",
            "".join(f"- {sentence}\n" for sentence in conclusions(study, compared)),
            f"\n{crossing([size_name(n) for n in study.sizes], [better_model(compared[PRIMARY, n]) for n in study.sizes])}\n",
            "\n## What the study could detect\n\n",
            f"Per size, on test macro-F1: the two parts of the variance, the smallest true difference these "
            f"{len(study.seeds)} seeds detect with {POWER:.0%} probability by the rule above, and how many seeds a "
            f"{percent(REFERENCE_DIFFERENCE, 0)}-point difference would need: at the seed sd these seeds estimate, and in "
            "brackets at the ends of its 95% interval (a seed sd from a few seeds is itself uncertain, so these numbers "
            "are ranges, not exact).\n\n",
            power_table(study, compared),
        ]
    )


def budget_section(study: Study, budget: dict) -> str:
    b = budget[study.sizes[0]]
    return "".join(
        [
            "\n## Is the CNN trained enough? The budget check\n\n",
            f"At every size and seed, the CNN trained again with twice its optimiser steps (same recipe, warmup scaled), "
            "paired with the same seed's cell: the gain in test macro-F1 with its 95% interval (seeds and test "
            "sampling, as above). An equivalence test: *trained enough* only where the one-sided 95% upper bound of the "
            f"gain is under the tolerance fixed in advance, {percent(b['tolerance'], None)} points (study.budget_tolerance); "
            "*under-trained* where the 95% interval excludes 0; *inconclusive* otherwise. Power: the chance that the "
            "check shows *trained enough* if twice the steps truly gained nothing, at these standard errors. Train "
            "accuracy: the kept model, in eval mode, on its un-augmented training subset.\n\n",
            budget_table(study, budget),
            "\n" + "".join(f"{s}\n\n" for s in budget_sentences(study, budget)).rstrip("\n") + "\n",
        ]
    )


def generalisation_section(study: Study, calibrated: dict, figures: Path, out_dir: Path) -> str:
    return "".join(
        [
            "\n## Generalisation: on images no choice saw\n\n",
            "Train and test accuracy (test images played no part in any choice: the selection images chose epochs, C "
            "and recipes), and each model's fit by the single-run report's rule (a fitted model covers "
            f"{verdict_rules.FITTED_SKILL:.0%} of the way from chance to 100% on its training images; it overfits when "
            f"its test accuracy keeps under {verdict_rules.RETAINED_SKILL:.0%} of that skill above chance, the same "
            "rule for 6 classes and 37).\n\n",
            generalisation_table(study),
            "\nCalibration on test, by the proper scores NLL and Brier (lower is better; probe - CNN paired over seeds "
            "and test images, each at the family's level), with ECE beside them in points: the plug-in value, biased "
            "upward on a finite split, and the debiased one (the plug-in minus the mean ECE of a model calibrated by "
            "construction with the same confidences; docs/report.md). In brackets, NLL after temperature scaling "
            "cross-fitted on test halves (each half's temperature fitted on the other, so no image is scored by a T "
            "that saw it; fitted only from "
            f"{MIN_TEMPERATURE_IMAGES} images a half, never on the selection images, which chose the epoch, C and "
            "recipe); T the median temperature, with the seeds where scaling made NLL worse or T sat at a search "
            "bound.\n\n",
            calibration_table(study, calibrated),
            "\n" + "".join(f"- {s}\n" for s in calibration_sentences(study, calibrated)),
            "\n",
            figure(figures / "calibration.png", out_dir, "Test NLL, Brier and ECE against labelled images per class"),
        ]
    )


def compute_section(study: Study, targets: dict, figures: Path, out_dir: Path) -> str:
    return "".join(
        [
            "\n## Training compute, tuning charged to both\n\n",
            "Each model's whole training compute at a size, its tuning included alike: the CNN's every recipe of its "
            "grid trained as long as the cell (3 forward passes an image, counted FLOPs), the probe's C sweep at the "
            "first seed; then its own training (the probe: its train and selection images through the backbone once, "
            "and its fit). Validation is not counted; compute does not depend on the machine or its load. The figure "
            "reads it against the level each model reached on test.\n\n",
            figure(figures / "compute.png", out_dir, "Test macro-F1 against training compute, tuning included"),
            "\nPer seed, the target is fixed before any curve: val macro-F1 half the way from chance to 1. The CNN "
            "reaches it at the epoch from which its val curve stays at or above it up to its kept epoch, and only where "
            "its test macro-F1 is at or above it too (a small selection split touches a target by chance); the L-BFGS probe, "
            "which has no curve, at the end of its fit, with the same test check. The compute to it includes the "
            "tuning.\n\n",
            compute_table(study, targets),
        ]
    )


def build(study: Study, params: Params, figures: Path, out_dir: Path, git_state: str) -> tuple[str, dict]:
    """The report's markdown and metrics/study.json's content; the figures are written on the way."""
    names = model_names(study, params)
    notes = caveats(study)
    note = figure_note(notes)
    compared = comparisons(study)
    calibrated = calibration_comparisons(study)
    budget = budget_check(study, params.study.budget_tolerance)
    targets = compute_targets(study)
    save_figure(learning_curves_figure(study, names, note), figures / "learning_curves.png")
    save_figure(difference_figure(study, compared, note), figures / "difference.png")
    save_figure(calibration_figure(study, names, note), figures / "calibration.png")
    save_figure(class_gains_figure(study, class_gains(study), note), figures / "class_gains.png")
    save_figure(compute_figure(study, names, note), figures / "compute.png")
    results = summary(study, compared, calibrated, budget, targets)
    parts = [
        header(study, params, names, notes, git_state),
        "\n## Learning curves\n\n",
        figure(
            figures / "learning_curves.png", out_dir, "Test macro-F1 and accuracy against labelled images per class"
        ),
        "\nEach line: the mean over seeds; the band: the lowest to the highest seed; dots: the seeds. The grey line: "
        "chance accuracy (left: macro-F1 0).\n",
        comparison_section(study, compared, figures, out_dir),
        "\n## Tuning: both models alike\n\n",
        tuning_table(study),
        budget_section(study, budget),
        generalisation_section(study, calibrated, figures, out_dir),
        "\n## Per-class gains\n\n",
        figure(figures / "class_gains.png", out_dir, "Per-class probe - CNN F1 against labelled images per class"),
        compute_section(study, targets, figures, out_dir),
        "\n## Cost of each cell\n\n",
        f"Wall seconds of each cell as it ran (study/timing/), on "
        f"{study.cells['cnn', study.seeds[0], study.sizes[0]]['device']}; the shared feature extraction: "
        f"{sum(study.features['seconds'].values()):.1f} s for {sum(study.features['images'].values())} images.\n\n",
        cost_table(study),
        "\n## What a seed changes\n\n",
        "- CNN: its initialisation, the order of its batches, its augmentation, and the training and selection "
        "subsets drawn.\n"
        "- Probe: the subsets drawn only (L-BFGS on fixed features starts from zero and draws nothing).\n"
        "- Not the test split, made once by the prepare stage with the main `seed`; nor the tuning, made once at the "
        "first seed.\n",
    ]
    return "".join(parts), results


def verdict_paragraph(summary: dict) -> str:
    """A study's verdict in a few sentences, from its metrics/study.json alone: the sizes where each model is better
    by the rule, with the difference and its interval, those where the interval holds a tie, the seeds won, and
    what the budget check says. The README and the example study's page quote it, and a test checks the quotes
    against the file."""
    sizes = summary["sizes"]
    order = sorted(sizes, key=lambda n: float("inf") if n == "all" else int(n))
    level = level_text(sizes[order[0]]["interval_level_macro_f1"])
    family = f", one of a family over the {len(order)} sizes" if len(order) > 1 else ""

    def name(n: str) -> str:
        return f"all {sizes[n]['train_images_per_class']:.0f}" if n == "all" else n

    def diff(n: str) -> str:
        estimate, low, high = sizes[n]["probe_minus_cnn_macro_f1"]
        return f"{points(estimate)} [{points(low)}, {points(high)}]"

    def listed(items: list[str]) -> str:
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    parts = []
    for model, words in (("probe", "the probe is better"), ("cnn", "the CNN from scratch is better")):
        won = [n for n in order if sizes[n]["verdict_macro_f1"] == model]
        if won:
            parts.append(
                f"{words} at {listed([name(n) for n in won])} training images per class "
                f"({'; '.join(diff(n) for n in won)} points of test macro-F1, probe - CNN with its {level} "
                f"interval{family})"
            )
    tied = [n for n in order if sizes[n]["verdict_macro_f1"] == "undecided"]
    if tied:
        parts.append(
            f"at {listed([name(n) for n in tied])} the interval does not exclude a tie "
            f"({'; '.join(diff(n) for n in tied)})"
        )
    wins = [sizes[n]["probe_wins_macro_f1"] for n in order]
    seeds = (
        f"The probe scored higher on {wins[0]['seeds']} of {wins[0]['of']} seeds at every size."
        if len({(w["seeds"], w["of"]) for w in wins}) == 1
        else "Seeds on which the probe scored higher: "
        + ", ".join(f"{w['seeds']} of {w['of']} at {name(n)}" for n, w in zip(order, wins))
        + "."
    )
    checks = {
        v: [name(n) for n in order if sizes[n]["budget_check"]["verdict"] == v]
        for v in (TRAINED, UNDERTRAINED, "inconclusive")
    }
    budget = (
        "The budget check (twice the CNN's steps) finds it "
        + "; ".join(f"{v} at {listed(where)}" for v, where in checks.items() if where)
        + "."
    )
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + ". " + seeds + " " + budget
