"""reports/report.md: the run's files read once, the quantities of petlab.report.comparison, tables (pandas) and figures."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from petlab.core import paths
from petlab.core.errors import PipelineError
from petlab.core.outputs import save_figure, timing_file
from petlab.core.params import Params
from petlab.core.records import TOP_OPS_TIME, peak_memory_metric, weights_label
from petlab.figures import plots
from petlab.report import comparison as report
from petlab.report import verdict
from petlab.report.formats import percent, points

# backbone_weights runs (and times itself) on every `dvc repro`; depending on that time would re-run the report.
# The stages whose wall time the cost section shares out, as DVC names them (the per-model ones as STAGE@MODEL).
STAGES = (
    "prepare_oxford_pets",
    "sanity_data",
    "train_cnn",
    "train_vit",
    *(f"{stage}@{m}" for stage in ("profile", "evaluate", "robustness") for m in report.MODELS),
)


def read_json(path: Path):
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run the stage that writes it (dvc repro)")
    return json.loads(path.read_text())


def read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run the stage that writes it (dvc repro)")
    return pd.read_csv(path, keep_default_na=False)


@dataclass
class Run:
    """Everything the report reads, from the files the other stages wrote in `root`."""

    root: Path
    class_names: list[str]
    species: dict[str, str] | None  # Oxford-IIIT Pet only
    prepared: dict  # data/oxford_pets/report.json
    sanity: dict  # plots/sanity/report.json, the full sanity report
    trained: dict[str, dict]  # model -> metrics/train_<model>.json
    histories: dict[str, pd.DataFrame]  # model -> history with the epochs' elapsed seconds (no rows: L-BFGS)
    setup_seconds: dict[str, float]  # model -> wall time before its first epoch (models with epochs)
    sweep: pd.DataFrame  # plots/train_vit/c_sweep.csv: the L-BFGS probe's row per C (no rows for the loop)
    probe_fit: dict  # metrics/timing/train_vit_fit.json: wall seconds extracting features and fitting the head
    evaluation: dict  # model -> metrics/evaluate/<model>.json
    per_class: dict[str, pd.DataFrame]
    predictions: pd.DataFrame  # plots/evaluate/predictions_test_<model>.csv of both, side by side by image
    reliability: dict[str, list[dict]]  # model -> plots/evaluate/reliability_<model>.csv: its equal-mass bins
    profile: dict  # model -> metrics/profile/<model>.json
    top_ops: dict[str, list[dict]]  # model -> ops by self time
    stage_seconds: dict[str, float]
    batch_size: dict[str, int]  # model -> its training batch size (train_cnn / train_vit)
    robustness: dict  # model -> metrics/robustness/<model>.json
    robustness_scores: pd.DataFrame  # plots/robustness/scores_<model>.csv: a row per corruption, severity and model
    robustness_predictions: pd.DataFrame  # plots/robustness/predictions_<model>.csv side by side: a row per image
    # and condition

    @classmethod
    def load(cls, root: Path, params: Params) -> Run:
        data = root / paths.DATA
        species_file = data / "species.json"
        trained, histories, setup = {}, {}, {}
        for model in report.MODELS:
            # metrics/train_<model>.json with the run's record in words (petlab.train.run.save_trained)
            trained[model] = {
                **read_json(root / paths.train_metrics(model)),
                **read_json(root / paths.train_plots(model) / "run.json"),
            }
            history = read_csv(root / paths.train_plots(model) / "history.csv")
            times = read_csv(root / paths.epoch_times(model))
            histories[model] = history.merge(times, on="epoch", validate="one_to_one")
            if len(times):
                setup[model] = float(times["elapsed_seconds"].iloc[0] - times["seconds"].iloc[0])
        return cls(
            root=root,
            class_names=read_json(data / "classes.json"),
            species=read_json(species_file) if species_file.is_file() else None,
            prepared=read_json(data / "report.json"),
            sanity=read_json(root / paths.SANITY_PLOTS / "report.json"),
            trained=trained,
            histories=histories,
            setup_seconds=setup,
            sweep=read_csv(root / paths.train_plots("vit") / "c_sweep.csv"),
            probe_fit=read_json(root / paths.FIT_TIMES),
            evaluation=per_model(lambda m: read_json(root / paths.EVALUATE_METRICS / f"{m}.json")[m]),
            per_class=per_model(lambda m: read_csv(root / paths.EVALUATE_PLOTS / f"per_class_{m}.csv")),
            predictions=side_by_side(root / paths.EVALUATE_PLOTS / "predictions_test_{model}.csv", ["image", "actual"]),
            reliability=per_model(
                lambda m: read_csv(root / paths.EVALUATE_PLOTS / f"reliability_{m}.csv").to_dict("records")
            ),
            profile=per_model(lambda m: read_json(root / paths.PROFILE_METRICS / f"{m}.json")[m]),
            top_ops=per_model(lambda m: read_json(root / paths.PROFILE_PLOTS / f"top_ops_{m}.json")[m]),
            stage_seconds={s: read_json(root / timing_file(s))["seconds"] for s in STAGES},
            batch_size={"cnn": params.train_cnn.batch_size, "vit": params.train_vit.batch_size},
            robustness=per_model(lambda m: read_json(root / paths.ROBUSTNESS_METRICS / f"{m}.json")[m]),
            robustness_scores=pd.concat(
                [read_csv(root / paths.ROBUSTNESS_PLOTS / f"scores_{m}.csv") for m in report.MODELS], ignore_index=True
            ),
            robustness_predictions=side_by_side(
                root / paths.ROBUSTNESS_PLOTS / "predictions_{model}.csv", ["image", "label", "corruption", "severity"]
            ),
        )

    @property
    def robustness_images(self) -> tuple[int, int]:
        """(test images, test images a class) the robustness stage scored, the same for both models."""
        first = self.robustness[next(iter(report.MODELS))]
        return first["test_images"], first["test_per_class"]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def progress(self, model: str) -> list[verdict.Point]:
        """The model's val macro-F1 over its training compute (GFLOPs, counted: petlab.report.verdict.training_gflops);
        the L-BFGS probe one point, at its whole fit."""
        if self.epochs(model) is None:
            return [(None, self.lbfgs_fit_gflops(), self.sweep_level(model)["val_macro_f1"])]
        setup, per_epoch = self.compute_per_epoch(model)
        return report.progress(self.histories[model], setup, per_epoch)

    def train_images_per_epoch(self, model: str) -> int:
        """Whole batches (the loader drops a ragged last one), or all where they fit in one."""
        images = self.sanity["counts"]["train"]["total"]
        batch = self.trained[model].get("steps_per_epoch", 1) * self.batch_size[model]
        return min(images, batch)

    def compute_per_epoch(self, model: str) -> tuple[float, float]:
        """(GFLOPs before the first epoch, GFLOPs an epoch) of a model trained by the loop: the CNN and a fine-tuned
        probe pass forward and backward through the whole model (about 3 forward passes an image); the head on
        augmented images passes forward through the frozen backbone (its head's arithmetic is negligible beside
        it); the head on cached features pays the extraction of its train and val images once."""
        gflops = self.profile[model]["gflops_per_image"]
        images = self.train_images_per_epoch(model)
        route = self.trained[model].get("route")
        if model == "cnn" or route == "fine_tuned":
            return 0.0, verdict.training_gflops(gflops, images)
        if route == "augmented_images":
            return 0.0, gflops * images
        return self.extraction_gflops(), 0.0

    def extraction_gflops(self) -> float:
        """The probe's train and val images through its backbone, once (test's are not part of fitting it)."""
        counts = self.sanity["counts"]
        return self.profile["vit"]["gflops_per_image"] * (counts["train"]["total"] + counts["val"]["total"])

    def lbfgs_fit_gflops(self) -> float:
        """The L-BFGS probe's whole fit: its extraction, and the sweep's iterations, each a loss and gradient on the
        train features: about 4 x images x features x classes FLOPs."""
        trainable, k = self.trained["vit"]["parameters"]["trainable"], self.num_classes
        features = trainable // k - 1  # a linear head: classes x features weights and classes biases
        images = self.sanity["counts"]["train"]["total"]
        return self.extraction_gflops() + 4 * images * features * k * float(self.sweep["iterations"].sum()) / 1e9

    def fit(self, model: str) -> tuple[float, float]:
        """(train accuracy, test accuracy) at the kept weights, both scored alike by the evaluate stage: test, whose
        images played no part in any choice (val chose the epoch or C, which biases its score up)."""
        scores = self.evaluation[model]
        return scores["train"]["accuracy"], scores["test"]["accuracy"]

    def epochs(self, model: str) -> int | None:
        """How many epochs the model trained; None for the probe fitted by L-BFGS, which has none."""
        return self.trained[model].get("last_epoch")

    def sweep_level(self, model: str) -> dict[str, float]:
        """The L-BFGS probe's val macro-F1 and val loss at the C it kept."""
        row = self.sweep.loc[report.is_kept(self.sweep, self.trained[model]["selected_c"])].iloc[0]
        return {"val_macro_f1": float(row["val_macro_f1"]), "val_loss": float(row["val_loss"])}

    def fitting_features_seconds(self) -> float:
        """The train and val images' share of the probe's feature extraction (which covers test too)."""
        counts = self.sanity["counts"]
        images = {s: counts[s]["total"] for s in ("train", "val", "test")}
        # A probe fitted alone would extract only its train and val images (as the CNN's time leaves out its test pass).
        return self.probe_fit["features_seconds"] * (images["train"] + images["val"]) / max(1, sum(images.values()))

    def lbfgs_fit_seconds(self) -> float:
        """The L-BFGS probe's whole fit: extracting its train and val features and the C sweep."""
        return self.fitting_features_seconds() + self.probe_fit["head_seconds"]

    def c_edge(self) -> str | None:
        """'largest' or 'smallest' when the L-BFGS probe kept that end of its C grid; None otherwise."""
        vit = self.trained["vit"]
        if not vit.get("c_at_grid_edge"):
            return None
        return "largest" if report.is_kept(self.sweep, vit["selected_c"]).iloc[-1] else "smallest"

    def kept(self, model: str) -> str:
        """The weights the model kept: its best epoch, or the L-BFGS probe's C."""
        t = self.trained[model]
        return f"C = {t['selected_c']:g}" if self.epochs(model) is None else f"epoch {t['best_epoch']}"


# ---------------------------------------------------------------- formatting


def with_interval(estimate: float, low: float, high: float, signed: bool = False) -> str:
    if signed:
        return f"{points(estimate, 2)} [{points(low, 2)}, {points(high, 2)}]"
    return f"{percent(estimate, 2)} [{percent(low, 2)}, {percent(high, 2)}]"


def table(frame: pd.DataFrame, index: bool = False) -> str:
    """A markdown table; numbers as given (strings) or with 2 decimals, never re-parsed by tabulate."""
    cells = frame.map(lambda v: f"{v:.2f}" if isinstance(v, float) else v)
    return cells.to_markdown(index=index, disable_numparse=True) + "\n"


def relative(path: Path, start: Path) -> str:
    """A link target as the report's folder sees it, so links work on any git host."""
    return Path(os.path.relpath(path, start)).as_posix()


def figure(path: Path, start: Path, alt: str) -> str:
    return f"![{alt}]({relative(path, start)})\n"


def link(path: Path, start: Path, text: str) -> str:
    return f"[{text}]({relative(path, start)})"


# ---------------------------------------------------------------- the banner


def caveats(run: Run) -> dict[str, str]:
    """Why this run cannot answer the question: short name -> explanation (empty for a real, full run)."""
    out = {}
    if not run.trained["vit"].get("pretrained", True):
        out["random backbone weights"] = "the probe's numbers say nothing about a pretrained backbone"
    elif weights_label(run.trained["vit"]):  # weights that stand in for others: named where the numbers are
        out["stand-in backbone weights"] = f"{weights_label(run.trained['vit'])}: the probe's numbers are theirs"
    if run.prepared.get("generated"):
        out["generated images"] = "shapes on noise made by petlab.prepare.synthetic, not photographs"
    dataset = run.prepared["source"].split(" ")[0]
    if dataset != "oxford_pets":
        out[f"{dataset}, not Oxford-IIIT Pet"] = "another dataset than the one the question is about"
    few = [
        f"{report.IN_SENTENCES[m]} {run.epochs(m)}"
        for m in report.MODELS
        if run.epochs(m) is not None and run.epochs(m) < report.FEW_EPOCHS
    ]
    if few:
        out["few epochs"] = f"{', '.join(few)}; fewer than {report.FEW_EPOCHS} may stop well before convergence"
    return out


FEW_IMAGES = "few training images per class"


def cautions(run: Run, seed: int) -> dict[str, str]:
    """What limits any run's conclusions: few training images per class (verdict.MIN_TRAIN_PER_CLASS), and one
    seed (always, in a single run)."""
    train = run.sanity["counts"]["train"]
    out = {}
    few = verdict.few_images_warning(train["min_per_class"], train["max_per_class"])
    if few:
        out[FEW_IMAGES] = few
    out["one seed"] = (
        f"every number comes from one training run (seed {seed}): the 95% intervals cover the "
        f"sampling of test images only, not training randomness (initialisation, data order, "
        f"augmentation, which images a subset holds), which can move results by several points and "
        f"flip a close comparison; the study (reports/study.md) repeats training over seeds and "
        f"training-set sizes"
    )
    return out


def in_text(label: str) -> str:
    """A model's label inside a sentence: "Linear probe on x" -> "linear probe on x"; "CNN ..." stays."""
    return label if label[:2].isupper() else label[:1].lower() + label[1:]


def banner(title: str, notes: dict[str, str]) -> str:
    return f"> **{title}**\n>\n" + "".join(f"> - **{name}**: {why}\n" for name, why in notes.items())


def per_model(read) -> dict:
    """What read(model) gives for each model, keyed by model."""
    return {m: read(m) for m in report.MODELS}


def side_by_side(pattern: Path, keys: list[str]) -> pd.DataFrame:
    """The models' per-row files (`pattern` with {model}) joined on `keys`, in the first model's row order: both
    scored the same images, and a row missing from either is an error, not a silent gap."""
    frames = [read_csv(Path(str(pattern).format(model=m))) for m in report.MODELS]
    joined = frames[0]
    for frame in frames[1:]:
        joined = joined.merge(frame, on=keys, how="left", validate="one_to_one", indicator=True)
        if (joined.pop("_merge") != "both").any() or len(frame) != len(joined):
            raise PipelineError(
                f"{str(pattern).format(model='*')}: the models scored other images; re-run them (dvc repro)"
            )
    return joined


def model_labels(run: Run, params: Params) -> dict[str, str]:
    """Each model named for what it is, for the figures and section 1 (tables say CNN and Probe)."""
    vit = run.trained["vit"]
    return {
        "cnn": f"CNN from scratch ({params.train_cnn.arch})",
        "vit": plots.probe_label(
            params.train_vit.model, params.train_vit.head, weights_label(vit), vit.get("route") == "fine_tuned"
        ),
    }


# ---------------------------------------------------------------- the document


def build(run: Run, params: Params, out_dir: Path, figures: Path, git_state: str) -> tuple[str, dict]:
    """The report's markdown, and the comparison it rests on for metrics/comparison.json (comparison_metrics); its
    figures are written under `figures` (inside `out_dir`) on the way."""
    names = report.MODELS
    labels = model_labels(run, params)
    predictions = report.TestPredictions.from_frame(run.predictions, run.class_names)
    results = report.bootstrap_results(predictions, params.report.bootstrap, params.seed)
    mcnemar = report.mcnemar_exact(predictions.correct("cnn"), predictions.correct("vit"))
    stepped = [m for m in names if run.epochs(m) is not None]  # the L-BFGS probe has no epochs
    speed = {
        m: report.convergence(run.histories[m], run.histories[m].set_index("epoch")["elapsed_seconds"]) for m in stepped
    }
    target = verdict.compute_to_target(
        {m: run.progress(m) for m in names}, run.num_classes, {m: run.evaluation[m]["test"]["macro_f1"] for m in names}
    )
    bound = {
        m: (report.bottleneck(run.profile[m]["data_wait_share"]), run.profile[m]["data_wait_share"]) for m in names
    }
    last_best = [m for m in stepped if run.trained[m]["best_epoch"] == run.epochs(m) > 1]
    general = generalisation_verdicts(run, results, predictions, params)
    notes, care = caveats(run), cautions(run, params.seed)
    sections = [
        f"# Run report: CNN from scratch vs. {in_text(labels['vit'])}\n",
        "Written by the `report` stage from this run's files; every number below comes from them.\n",
    ]
    if notes:
        sections.append(banner("Warning: this run cannot answer the question.", notes))
    sections.append(banner("Read with care.", care))
    sections += [
        what_ran(run, params, labels, git_state),
        results_section(run, results, mcnemar, predictions, out_dir),
        convergence_section(run, speed, target, labels, out_dir, figures),
        generalisation_section(run, general, predictions, params, labels, out_dir, figures),
        cost_section(run, bound, labels, out_dir, figures),
        sanity_section(run),
        conclusions_section(run, results, mcnemar, target, bound, last_best, notes, care, general),
    ]
    return "\n".join(sections), comparison_metrics(results, mcnemar, general, target)


def conclusions_section(
    run: Run,
    results: dict,
    mcnemar: dict,
    target: dict,
    bound: dict,
    last_best: list,
    notes: dict[str, str],
    care: dict[str, str],
    general: dict,
) -> str:
    """The conclusions, each sentence by one rule of petlab.report.verdict and comparison, and the rules after them.
    Of the banners' warnings, those that change what a conclusion may say: why this run cannot answer the question
    (`notes`: random weights, generated images, ...), too few training images (of `care`), and the one seed every
    single run has."""
    kept = [*notes, *(k for k in care if k == FEW_IMAGES), ONE_SEED]
    sentences = report.conclusions(
        results,
        mcnemar,
        target,
        {m: run.fit(m) for m in report.MODELS},
        run.num_classes,
        bound,
        last_best,
        kept,
        run.c_edge(),
        general["sentences"],
    )
    return "## 7. Conclusions\n\n" + "".join(f"- {s}\n" for s in sentences) + rules(run.num_classes)


def comparison_metrics(results: dict, mcnemar: dict, general: dict, target: dict) -> dict:
    """Probe - CNN on the test images, each with its 95% interval from the paired bootstrap: the numbers the
    report's comparison sentences read, as `dvc metrics diff` shows them (fractions, not points); and each model's
    training compute to the common val target (verdict.compute_to_target; absent for a model that never reached it)."""

    def interval(estimate: float, low: float, high: float) -> dict:
        return {"difference": round(estimate, 6), "low": round(low, 6), "high": round(high, 6)}

    out = {f"test_{metric}": interval(*parts["difference"]) for metric, parts in results.items()}
    out["test_accuracy"]["mcnemar_p"] = round(mcnemar["p_value"], 6)
    for key, difference in general["score_differences"].items():
        out[f"test_{key}"] = interval(*difference)
    overall = general["robustness"]["corruptions"]["all"]
    out["corrupted_accuracy"] = interval(*overall["ahead"])
    if overall["lost_difference"]:
        out["skill_lost_under_corruption"] = interval(*overall["lost_difference"])
    reached = {f"{m}_gflops": round(r["gflops"], 3) for m, r in target["reached"].items() if r is not None}
    return {"probe_minus_cnn": out, "compute_to_target": {"val_macro_f1": round(target["target"], 6), **reached}}


ONE_SEED = (
    "one seed: each model trained once, so the interval holds test sampling, not training randomness (the "
    "study repeats the comparison over seeds)"
)


def with_one_seed(outcome: tuple[str, str]) -> tuple[str, str]:
    """A sentence that names a winner carries the one-seed caveat."""
    winner, sentence = outcome
    return winner, sentence + (f" Caveat: {ONE_SEED}." if winner in report.MODELS else "")


def generalisation_verdicts(run: Run, results: dict, predictions: report.TestPredictions, params: Params) -> dict:
    """Who generalises better, in three senses, each by its rule in petlab.report.verdict with its uncertainty: from the
    training images to new ones (train - test), probabilities that mean something (calibration, by proper scores),
    and images worse than the test split's (corruptions); and one sentence that sums them up."""
    fit = {m: run.fit(m) for m in report.MODELS}
    learned = {m: verdict.learned(run.evaluation[m]["val"]["macro_f1"], run.num_classes) for m in report.MODELS}
    test = {m: run.evaluation[m]["calibration"]["test"] for m in report.MODELS}
    differences = {
        key: report.score_difference(predictions, key, params.report.bootstrap, params.seed)
        for key in report.PROPER_SCORES
    }
    robust = report.robustness_by_corruption(
        run.robustness_predictions, run.num_classes, params.report.bootstrap, params.seed
    )
    outcomes = {
        "train - test": verdict.generalisation_sentence(fit, run.num_classes, results["accuracy"]["difference"][1:]),
        "calibration": verdict.calibration_sentence(
            {m: t["nll"] for m, t in test.items()},
            differences,
            learned,
            {m: (t["ece"], t["ece_debiased"]) for m, t in test.items()},
        ),
        "robustness to corrupted images": verdict.robustness_sentence(robust, run.num_classes),
    }
    outcomes = {sense: with_one_seed(outcome) for sense, outcome in outcomes.items()}
    sentences = [sentence for _, sentence in outcomes.values()]
    sentences.append(verdict.generalisation_summary({sense: w for sense, (w, _) in outcomes.items()}))
    return {"sentences": sentences, "score_differences": differences, "robustness": robust}


def what_ran(run: Run, params: Params, labels: dict[str, str], git_state: str) -> str:
    counts = run.sanity["counts"]
    cnn, vit = run.trained["cnn"], run.trained["vit"]
    train = counts["train"]
    per_class = (
        f"{train['min_per_class']}"
        if train["min_per_class"] == train["max_per_class"]
        else f"{train['min_per_class']} to {train['max_per_class']}"
    )
    rows = [
        ("Dataset", f"{run.prepared['source']}" + (" (generated)" if run.prepared.get("generated") else "")),
        ("Classes", f"{run.num_classes} (chance: {100 / run.num_classes:.1f}%)"),
        (
            "Images (train / val / test)",
            " / ".join(str(counts[s]["total"]) for s in ("train", "val", "test"))
            + f"; {per_class} train images per class",
        ),
        (
            "CNN",
            f"{labels['cnn']}: widths {list(params.train_cnn.widths)}, {params.train_cnn.image_size} px, "
            f"{run.epochs('cnn')} epochs; {cnn['device']}, {cnn['precision']}",
        ),
        (
            "Probe",
            f"{labels['vit']}: {vit['route'].replace('_', ' ')}, "
            + (
                f"{run.epochs('vit')} epochs"
                if run.epochs("vit") is not None
                else "L-BFGS logistic regression, C chosen on val from " + " ".join(f"{c:g}" for c in run.sweep["c"])
            )
            + f"; {vit['device']}, {vit['precision']}",
        ),
        (
            "Tuning",
            f"CNN: one recipe (lr {params.train_cnn.lr:g}, weight decay {params.train_cnn.weight_decay:g}), "
            "its epoch chosen on val; not tuned further (the study tunes it per size, docs/study.md). Probe: "
            + (
                f"C chosen on val from {len(run.sweep)} values"
                if run.epochs("vit") is None
                else "one recipe, its epoch chosen on val"
            ),
        ),
        ("Backbone weights", f"{'pretrained' if vit.get('pretrained') else 'RANDOM'}: {vit.get('weights_source')}"),
        ("Seed", f"{params.seed} (bootstrap: {params.report.bootstrap} resamples, seeded with it)"),
        ("Code", git_state),
    ]
    return (
        "## 1. What ran\n\n"
        + table(pd.DataFrame(rows, columns=["", "value"]))
        + f"\nBelow, *CNN* is the {in_text(labels['cnn'])} and *Probe* the {in_text(labels['vit'])}.\n"
    )


def results_section(run: Run, results: dict, mcnemar: dict, predictions: report.TestPredictions, out_dir: Path) -> str:
    rows = []
    for metric, label in report.reported_metrics(run.num_classes).items():
        rows.append(
            {
                "metric": label,
                **{f"{name} test": with_interval(*results[metric][m]) for m, name in report.MODELS.items()},
                "Probe - CNN": with_interval(*results[metric]["difference"], signed=True),
                **{f"{name} val": percent(run.evaluation[m]["val"][metric], 2) for m, name in report.MODELS.items()},
            }
        )
    n = len(predictions.labels)
    agreement = report.agreement_table(predictions.correct("cnn"), predictions.correct("vit"))
    return (
        "## 2. Results\n\n"
        f"Percent on the {n} test images (and on val); in brackets the 95% confidence interval from "
        f"a seeded bootstrap over the test images. Probe - CNN is paired: both models "
        "are scored on the same resampled images.\n\n"
        + table(pd.DataFrame(rows))
        + (
            ""
            if "top5_accuracy" in results
            else f"\nNo top-5 accuracy: with {run.num_classes} classes every label is among a model's 5 best.\n"
        )
        + f"\nMcNemar's exact test on the same {n} images: {mcnemar['only_a']} only the CNN got right, "
        f"{mcnemar['only_b']} only the probe; {report.p_value(mcnemar['p_value'])}.\n\n"
        "Test images by which model classified them right:\n\n"
        + table(agreement, index=True)
        + "\nConfusion matrices (test, row-normalised): "
        + ", ".join(
            link(run.root / paths.EVALUATE_PLOTS / f"confusion_{m}_normalized.png", out_dir, name)
            for m, name in report.MODELS.items()
        )
        + ".\n"
    )


def convergence_section(
    run: Run, speed: dict, target: dict, labels: dict[str, str], out_dir: Path, figures: Path
) -> str:
    stepped = {m: name for m, name in report.MODELS.items() if m in speed}
    levels = convergence_figures(run, stepped, labels, figures)
    parts = [
        "## 3. Convergence\n\n",
        figure(figures / "curves.png", out_dir, "val macro-F1 and losses per epoch"),
        "\n" + figure(figures / "curves_seconds.png", out_dir, "the same against training wall time"),
        "\nSeconds count from the start of training"
        + ('; the probe\'s include extracting its features once ("before epoch 1")' if "vit" in stepped else "")
        + ". Wall times are this machine's, taken in separate stages, and vary between runs: no conclusion rests on "
        "them."
        + (
            " The probe, fitted by L-BFGS, has no epochs: the dotted lines are its val macro-F1 and val loss at "
            "the C it kept, and against wall time it is one star, at the end of its whole fit."
            if levels
            else ""
        )
        + "\n\n",
        f"Training compute to a common target, fixed in advance: val macro-F1 {percent(target['target'], unit=True)}, half "
        f"the way from chance ({percent(verdict.chance(run.num_classes), unit=True)}) to 100%. Compute is counted, not timed "
        "(the same on any machine, under any load): a training pass of an image costs about 3 forward passes "
        "(forward and backward) of the model's counted FLOPs per image (section 5), validation is not counted"
        + (
            "; the L-BFGS probe has no curve, so it reaches any level it reaches at the end of its whole fit: its "
            "train and val images through the backbone once, and the C sweep's arithmetic"
            if levels
            else ""
        )
        + ". The study (reports/study.md) uses the same rule at every training-set size.\n\n",
        table(pd.DataFrame(target_rows(target))),
    ]
    rows = own_best_rows(run, speed, stepped)
    if rows:
        parts += [
            "\nEach model against its own best, for the shape of its curve only (a model that learns nothing "
            "reaches its own best at once, so no conclusion rests on these):\n\n",
            table(pd.DataFrame(rows)),
        ]
    if "vit" not in stepped:
        parts.append(lbfgs_probe(run))
    return "".join(parts)


def convergence_figures(run: Run, stepped: dict[str, str], labels: dict[str, str], figures: Path) -> dict:
    """The curves per epoch and against wall time; the L-BFGS probe, which has no epochs, as its levels at the C it
    kept (returned, by model)."""
    histories = {m: run.histories[m] for m in stepped}
    levels = {
        m: {**run.sweep_level(m), "note": f"L-BFGS, {run.kept(m)}", "elapsed_seconds": run.lbfgs_fit_seconds()}
        for m in report.MODELS
        if m not in stepped
    }
    save_figure(plots.curves_figure(histories, "epoch", "epoch", labels, levels), figures / "curves.png")
    save_figure(
        plots.curves_figure(histories, "elapsed_seconds", "training wall time (s)", labels, levels),
        figures / "curves_seconds.png",
    )
    return levels


def target_rows(target: dict) -> list[dict]:
    """Each model's best val macro-F1, and where and at what training compute it reached the common target."""
    rows = []
    for m, name in report.MODELS.items():
        reached = target["reached"][m]
        rows.append(
            {
                "model": name,
                "best val macro-F1 (%)": percent(target["best"][m], 2),
                "reaches the target": "no"
                if reached is None
                else ("after its whole fit" if reached["epoch"] is None else f"at epoch {reached['epoch']}"),
                "training compute to it": "-" if reached is None else verdict.gflops_text(reached["gflops"]),
            }
        )
    return rows


def own_best_rows(run: Run, speed: dict, stepped: dict[str, str]) -> list[dict]:
    """Per model with epochs: the epoch (and seconds) it first reached each of report.OWN_BEST_SHARES of its own best."""
    rows = []
    for m, name in stepped.items():
        history = run.histories[m]
        rows.append(
            {
                "model": name,
                "epochs": len(history),
                "best epoch": run.trained[m]["best_epoch"],
                **{
                    f"{f:.0%} of own best: epoch (s)": f"{speed[m][f]['epoch']} ({speed[m][f]['seconds']:.1f})"
                    for f in report.OWN_BEST_SHARES
                },
                "training s": f"{history['elapsed_seconds'].iloc[-1]:.1f}",
                "of which before epoch 1": f"{run.setup_seconds[m]:.1f}",
            }
        )
    return rows


def lbfgs_probe(run: Run) -> str:
    """The probe fitted by L-BFGS: no epochs to converge over; its fit time, the C it kept and the sweep."""
    vit = run.trained["vit"]
    sweep = run.sweep[
        ["c", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "val_macro_f1", "iterations", "converged"]
    ].copy()
    for column in ("train_accuracy", "val_accuracy", "val_macro_f1"):
        sweep[column] = sweep[column].map(lambda v: percent(v, 2))
    kept = report.is_kept(sweep, vit["selected_c"])
    sweep["c"] = [f"**{c:g}**" if k else f"{c:g}" for c, k in zip(sweep["c"], kept)]
    sweep = sweep.rename(columns={"c": "C", "val_macro_f1": "val macro-F1"})
    sweep.columns = [c.replace("_", " ") for c in sweep.columns]
    edge = run.c_edge()
    return (
        f"\nThe probe has no epochs: its head is multinomial logistic regression solved by L-BFGS "
        f"on the cached features, once per C of train_vit.c_grid, and the C best on val by the pipeline's "
        f"selection rule is kept (C = {vit['selected_c']:g}, {vit['iterations']} iterations, converged: "
        f"{vit['converged']}). Its whole fit took {run.lbfgs_fit_seconds():.1f} s: "
        f"{run.fitting_features_seconds():.1f} s extracting the features of the train and val images (their "
        f"share of the {run.probe_fit['features_seconds']:.1f} s the train, val and test images took, once) and "
        f"{run.probe_fit['head_seconds']:.1f} s for the sweep."
        + (
            f" The kept C is the {edge} of the grid: a C beyond it may do better on val (extend train_vit.c_grid)."
            if edge
            else ""
        )
        + "\n\n"
        "The sweep (accuracies and macro-F1 in percent; the kept C in bold; its train accuracy is that of the "
        "features the head was fitted on):\n\n" + table(sweep)
    )


def fit_part(run: Run) -> str:
    """From the training images to new ones: each model's train and test accuracy and its regime."""
    fitted = percent(verdict.level_at(verdict.FITTED_SKILL, run.num_classes), unit=True)
    rows = [
        {
            "model": name,
            "kept": run.kept(m),
            "train accuracy (%)": percent(run.evaluation[m]["train"]["accuracy"], 2),
            "test accuracy (%)": percent(run.evaluation[m]["test"]["accuracy"], 2),
            "train - test (points)": f"{points((run.evaluation[m]['train']['accuracy'] - run.evaluation[m]['test']['accuracy']), 2)}",
            "val - test (points)": f"{points((run.evaluation[m]['val']['accuracy'] - run.evaluation[m]['test']['accuracy']), 2)}",
            "regime": verdict.regime(*run.fit(m), run.num_classes),
        }
        for m, name in report.MODELS.items()
    ]
    return "".join(
        [
            "**From the training images to new ones.** Accuracy at the kept weights, from metrics/evaluate/: the "
            "evaluate stage scores both models alike on every split (un-augmented images, eval mode). (The training "
            "loop's own train metrics, of augmented batches with dropout on, are in plots/train_*/history.csv and no "
            f"conclusion uses them.) Regime: *underfits* under {fitted} train accuracy (half the way from chance to "
            f"100%), *overfits* where its test accuracy keeps under {verdict.RETAINED_SKILL:.0%} of its training skill "
            "above chance (the same rule for 6 classes and 37), else *fits*; val - test shows how much choosing on val "
            "flattered the val score.\n\n",
            table(pd.DataFrame(rows)),
        ]
    )


def calibration_part(run: Run, general: dict, labels: dict[str, str], out_dir: Path, figures: Path) -> str:
    """Probabilities that mean something: proper scores with paired intervals, ECE with its calibrated reference,
    and temperature scaling cross-fitted on test halves."""
    rows = []
    for m, name in report.MODELS.items():
        cal = run.evaluation[m]["calibration"]
        test, scaled = cal["test"], cal["test_scaled"]
        if scaled is None:
            temperature = f"not fitted ({cal['scaling']})"
        else:
            flags = ["made NLL worse"] * bool(cal["scaling_worsened_nll"]) + ["at a search bound"] * bool(
                cal["temperature_at_bound"]
            )
            temperature = f"{cal['temperature']:.2f}: NLL {scaled['nll']:.3f}, ECE {percent(scaled['ece'])}" + (
                f" ({', '.join(flags)})" if flags else ""
            )
        rows.append(
            {
                "model": name,
                "NLL": f"{test['nll']:.3f}",
                "Brier": f"{test['brier']:.3f}",
                "ECE (points)": f"{percent(test['ece'])}",
                "ECE of a calibrated model, same confidences": f"{percent(test['ece_reference'])}",
                "ECE debiased": f"{percent(test['ece_debiased'])}",
                "p (calibrated)": f"{test['ece_p']:.3f}",
                "temperature (cross-fitted)": temperature,
            }
        )
    nll, brier = (general["score_differences"][k] for k in report.PROPER_SCORES)
    save_figure(
        plots.reliability_figure(
            run.reliability, labels, {m: run.evaluation[m]["calibration"]["test"]["ece"] for m in report.MODELS}
        ),
        figures / "reliability.png",
    )
    return "".join(
        [
            "\n**Probabilities that mean something.** On the test split, by the proper scores: negative "
            "log-likelihood (NLL) and Brier score, lower is better; probe - CNN "
            f"NLL {nll[0]:+.3f} [{nll[1]:+.3f}, {nll[2]:+.3f}], Brier {brier[0]:+.3f} [{brier[1]:+.3f}, {brier[2]:+.3f}] "
            "(95%, paired bootstrap over the test images). Expected calibration error (ECE, equal-mass bins, "
            f"{run.evaluation['cnn']['calibration']['test']['ece_bins']} here) beside them: biased upward on a finite "
            "split, so it is shown with the ECE a model calibrated by construction with the same confidences scores "
            "here (labels drawn from its own confidences), the debiased value (the plug-in minus that), and the "
            "share of such calibrated draws at or above the real ECE (p: under 0.05, the model is miscalibrated). "
            "Temperature scaling (one T per model, which changes no prediction) is cross-fitted on test halves: each "
            "half's T fitted on the other half, never on val, which chose the epoch or C. A model that is 90% sure "
            "should be right 90% of the time: points on the diagonal below.\n\n",
            table(pd.DataFrame(rows)),
            "\n" + figure(figures / "reliability.png", out_dir, "reliability diagram of both models"),
        ]
    )


def robustness_part(run: Run, general: dict, labels: dict[str, str], out_dir: Path, figures: Path) -> str:
    """Images worse than the test split's: per corruption, each model's accuracy and share of skill lost, and who is
    ahead, with intervals."""
    robust = general["robustness"]
    names = report.MODELS
    enough = robust["images"] >= verdict.MIN_ROBUSTNESS_IMAGES

    def bracket(difference) -> str:
        return f"{points(difference[0])}" + (f" [{points(difference[1])}, {points(difference[2])}]" if enough else "")

    rows = []
    for corruption, e in robust["corruptions"].items():
        rows.append(
            {
                "corruption": "all together" if corruption == "all" else verdict.corruption_words(corruption),
                **{f"{name} accuracy (%)": percent(e["accuracy"][m], 2) for m, name in names.items()},
                "probe - CNN (points)": bracket(e["ahead"]),
                **{f"{name} skill lost": f"{e['skill_lost'][m]:.0%}" for m, name in names.items()},
                "probe - CNN skill lost (points)": bracket(e["lost_difference"]) if e["lost_difference"] else "-",
            }
        )
    scores = run.robustness_scores
    by_condition = {(r["model"], r["corruption"], r["severity"]): r for r in scores.to_dict("records")}
    corruptions = [c for c in dict.fromkeys(scores["corruption"]) if c != "clean"]
    save_figure(
        plots.robustness_figure(by_condition, labels, corruptions, run.robustness_images[0]), figures / "robustness.png"
    )
    return "".join(
        [
            f"\n**Images worse than the test split's.** {robust['images']} test images "
            f"({run.robustness_images[1]} of each class, robustness.test_per_class) under five corruptions at "
            "three severities (petlab/measure/robustness.py, after ImageNet-C), each through the model's own evaluation "
            "transform, so the probe's features are extracted from the corrupted pixels. Clean accuracy on these "
            "images: "
            + ", ".join(f"{percent(robust['clean'][m], 2)}% for the {report.IN_SENTENCES[m]}" for m in names)
            + ". Per corruption (its three severities together): each model's accuracy, and the share of its clean "
            "skill above chance it lost, (clean - corrupted) / (clean - chance), which reads alike for 6 classes and "
            "37"
            + (
                f", each difference with its interval (paired bootstrap over the images; each corruption at "
                f"{robust['family_level']:.1%}, the Bonferroni level of their family, all together at 95%)"
                if enough
                else f"; no intervals: {robust['images']} images are under the {verdict.MIN_ROBUSTNESS_IMAGES} an interval "
                "needs"
            )
            + ".\n\n",
            table(pd.DataFrame(rows)),
            "\n" + figure(figures / "robustness.png", out_dir, "accuracy under corruption against severity"),
        ]
    )


# Per-class gains: every class where a table of them stays short, else the largest and the smallest few.
EVERY_CLASS_UP_TO = 10
GAINS_SHOWN = 5


def generalisation_section(
    run: Run,
    general: dict,
    predictions: report.TestPredictions,
    params: Params,
    labels: dict[str, str],
    out_dir: Path,
    figures: Path,
) -> str:
    parts = [
        "## 4. Generalisation\n\n",
        "Three readings of *who generalises better*, each by one rule (section 7), none of them on the val split, "
        "on which both models chose their epoch or C.\n\n",
        fit_part(run),
        calibration_part(run, general, labels, out_dir, figures),
        robustness_part(run, general, labels, out_dir, figures),
        class_gains_part(run, labels, out_dir, figures),
        hardest_classes_part(run, predictions),
        species_errors_part(run, predictions),
    ]
    if params.report.misclassified:
        parts.append(misclassified_part(run, predictions, params.report.misclassified, params.seed, out_dir, figures))
    return "".join(parts)


def class_gains_part(run: Run, labels: dict[str, str], out_dir: Path, figures: Path) -> str:
    """Where the probe's gain is: per-class test F1, probe - CNN, by class (and by species), and its spread."""
    gains = report.class_gains(run.per_class["cnn"], run.per_class["vit"])
    spread = pd.DataFrame({name: report.f1_spread(run.per_class[m]) for m, name in report.MODELS.items()}).T * 100
    save_figure(plots.per_class_f1_figure(run.per_class, labels), figures / "per_class_f1.png")
    parts = [
        "\n**Where the probe's gain is.** Per-class test F1, probe - CNN (points), with each class's test images"
        + (
            ": every class, largest gain first.\n\n" + table(gains)
            if len(gains) <= EVERY_CLASS_UP_TO
            else f": the {GAINS_SHOWN} largest gains, then the {GAINS_SHOWN} smallest, of {len(gains)} classes.\n\n"
            + table(gains.head(GAINS_SHOWN))
            + "\n"
            + table(gains.tail(GAINS_SHOWN).iloc[::-1])
        ),
    ]
    if run.species is not None:
        by_species = report.species_gains(gains, run.species)
        parts += [
            "\nCat breeds against dog breeds (the mean over each species' classes of per-class test F1):\n\n",
            table(by_species),
        ]
    parts += [
        "\nSpread of the per-class test F1 (percent):\n\n",
        table(spread, index=True),
        "\n" + figure(figures / "per_class_f1.png", out_dir, "per-class test F1 of both models"),
    ]
    return "".join(parts)


def hardest_classes_part(run: Run, predictions: report.TestPredictions) -> str:
    """Each model's hardest classes and most-confused pairs of classes, on test."""
    parts = []
    for m, name in report.MODELS.items():
        hardest = report.hardest_classes(run.per_class[m])
        hardest[["precision", "recall", "f1"]] *= 100
        hardest = hardest.rename(columns={"f1": "F1"})
        matrix = report.confusion_counts(predictions.labels, predictions.preds[m], predictions.num_classes)
        parts += [
            f"\n**{name}**: the {len(hardest)} hardest classes (test, percent)\n\n",
            table(hardest),
            f"\n**{name}**: the most-confused pairs (test images)\n\n",
            table(report.most_confused_pairs(matrix, run.class_names))
            if matrix.sum() > np.trace(matrix)
            else "no test image misclassified\n",
        ]
    return "".join(parts)


def species_errors_part(run: Run, predictions: report.TestPredictions) -> str:
    """Cat or dog (Oxford-IIIT Pet's species): the errors that confuse the species and those within one."""
    if run.species is None:
        return ""
    class_species = [run.species[c] for c in run.class_names]
    rows = [
        {"model": name, **report.species_errors(predictions.labels, predictions.preds[m], class_species)}
        for m, name in report.MODELS.items()
    ]
    frame = pd.DataFrame(rows)
    frame["species_accuracy"] = frame["species_accuracy"].map(lambda v: percent(v, 2))
    frame.columns = [c.replace("_", " ") for c in frame.columns]
    return (
        "\nCat or dog: errors that confuse the species, and those within one species (test images; "
        "species accuracy in percent):\n\n" + table(frame)
    )


def misclassified_part(
    run: Run, predictions: report.TestPredictions, count: int, seed: int, out_dir: Path, figures: Path
) -> str:
    """A seeded draw of up to `count` (report.misclassified) misclassified test images per model."""
    parts = ["\nMisclassified test images (a seeded draw), captioned actual → predicted:\n\n"]
    for m, name in report.MODELS.items():
        wrong = np.flatnonzero(~predictions.correct(m))
        if not len(wrong):
            parts.append(f"{name}: none misclassified.\n")
            continue
        pick = np.sort(np.random.default_rng(seed).choice(wrong, min(len(wrong), count), replace=False))
        items = [
            (
                run.root / paths.DATA / run.predictions["image"].iloc[i],
                f"{run.predictions['actual'].iloc[i]}\n→ {run.predictions[f'{m}_predicted'].iloc[i]}",
            )
            for i in pick
        ]
        save_figure(
            plots.image_grid_figure(items, f"{name}: misclassified test images", cols=8, inches=1.5),
            figures / f"misclassified_{m}.png",
        )
        parts.append(figure(figures / f"misclassified_{m}.png", out_dir, f"{name} misclassified") + "\n")
    return "".join(parts)


TOP_OPS_SHOWN = 5  # of the profile's top ops (profile.top_ops): the few that say where a step's time goes


def cost_section(run: Run, bound: dict, labels: dict[str, str], out_dir: Path, figures: Path) -> str:
    memory = peak_memory_metric(run.profile["cnn"])
    save_figure(
        plots.profile_comparison_figure(run.profile, labels, (memory.key, memory.label)), figures / "profile.png"
    )
    rows = []
    for m, name in report.MODELS.items():
        p = run.profile[m]
        rows.append(
            {
                "model": name,
                "step ms (mean / p95)": f"{p['step_ms_mean']:.1f} / {p['step_ms_p95']:.1f}",
                "images/s": f"{p['throughput_images_per_s']:.1f}",
                memory.label: f"{p[memory.key]:.0f}",
                "GFLOPs/image": f"{p['gflops_per_image']:.3g}",
                "parameters (trainable / total)": f"{p['trainable_parameters']:,} / {p['total_parameters']:,}",
                "loader wait": f"{p['data_wait_share']:.0%}",
                "step is": bound[m][0],
            }
        )
    vit = run.profile["vit"]
    extraction, head = vit.get("feature_extraction"), vit.get("cached_head_step")
    parts = [
        "## 5. Cost and bottlenecks\n\n",
        f"Training steps from images, profiled at batch {run.profile['cnn'].get('batch_size', '?')} "
        f"({run.profile['cnn']['device']}). The probe's is a forward through its backbone and an update of "
        f"what it trains (the head, and any unfrozen parts), as its image routes train; the cached route makes "
        f"that forward once per image, then fits the head on the features (below). Loader wait is the share "
        f"of each profiled step spent waiting for the next batch (`data-bound` from {report.DATA_BOUND:.0%}, `compute-bound` below "
        f"{report.COMPUTE_BOUND:.0%}). Peak memory ({memory.name}): {memory.meaning}.\n\n",
        table(pd.DataFrame(rows)),
    ]
    if extraction and head:
        parts.append(
            f"\nThe probe's cached route: extracting features costs {extraction['step_ms_mean']:.1f} ms a "
            f"batch ({extraction['throughput_images_per_s']:.0f} images/s), once per image; a head step on "
            f"cached features {head['step_ms_mean']:.2f} ms ({head['throughput_images_per_s']:.0f} "
            f"images/s).\n"
        )
    for m, name in report.MODELS.items():
        ops = run.top_ops.get(m)
        if ops:
            key, meaning = TOP_OPS_TIME[run.profile[m]["device"]]
            top = pd.DataFrame(ops).head(TOP_OPS_SHOWN)[["op", key, "calls"]]
            parts += [f"\n{name}: top ops by {meaning}, over the profiled steps\n\n", table(top)]
    shares = report.stage_shares(run.stage_seconds)
    shares["share"] = shares["share"].map(lambda v: f"{v:.0%}")
    comparison = link(figures / "profile.png", out_dir, "profile comparison")
    parts += [
        "\nEach stage's share of the pipeline's wall time (this run; the report stage itself not counted):\n\n",
        table(shares),
        f"\nCost side by side: {comparison}.\n",
    ]
    return "".join(parts)


def sanity_section(run: Run) -> str:
    s = run.sanity
    counts = pd.DataFrame(
        {
            split: {k.replace("_", " "): s["counts"][split][k] for k in ("total", "min_per_class", "max_per_class")}
            for split in ("train", "val", "test")
        }
    ).T
    converted = s["prepare"]["converted_to_rgb"]
    overfit = {name: s[f"overfit_{key}"] for key, name in (("cnn", "CNN"), ("probe", "Probe"))}
    return (
        "## 6. Sanity\n\n"
        + table(counts, index=True)
        + f"\n- Unreadable prepared images: {s['unreadable']['count']}.\n"
        + f"- Images in more than one split (leaks): {s['cross_split_duplicates']['count']}.\n"
        + f"- Skipped by prepare: {s['prepare']['skipped_count']}; left out by the source reader: "
        f"{s['prepare']['left_out_count']}; converted to RGB: "
        + (", ".join(f"{n} {kind}" for kind, n in converted.items()) or "none")
        + f"; rotated by EXIF: {s['prepare']['exif_rotated']}; resized to fit JPEG: "
        f"{s['prepare']['resized_to_fit_jpeg']}.\n"
        + "".join(
            f"- {name} overfits {o['images']} training images to 100% in {o['steps_to_100pct']} steps "
            f"(of at most {o['max_steps']}).\n"
            for name, o in overfit.items()
        )
        + f"- All checks passed: {'yes' if s['passed'] else 'no'}.\n"
    )


def rules(num_classes: int) -> str:
    """How the conclusions are made, with this run's levels filled in."""

    def level(skill: float) -> str:
        return percent(verdict.level_at(skill, num_classes), unit=True)

    return f"""
How these sentences are made (petlab/report/comparison.py, petlab/report/verdict.py), each by one rule:

- **Differences**: significant when the 95% bootstrap interval of probe - CNN (paired over the test images)
  excludes zero; McNemar's exact test is quoted beside accuracy, and a disagreement between the two is said.
  Both cover the sampling of test images only, not training randomness: every sentence that names a winner says
  "one seed" (with a seed sd of 2 points, such a sentence names a winner in a fifth to two fifths of runs whose
  seed-averaged difference is zero; the study repeats the comparison over seeds).
- **Fit**: every split is scored alike for both models by the evaluate stage (un-augmented images, eval mode).
  A model *underfits* when its train accuracy covers less than half the way from chance (1 / {num_classes}
  classes) to 100%, here under {level(verdict.FITTED_SKILL)}; it *overfits* when its test accuracy keeps under
  {verdict.RETAINED_SKILL:.0%} of its training skill above chance ((test - chance) < {verdict.RETAINED_SKILL:g} x
  (train - chance), a rule that reads alike for 6 classes and 37); else it *fits*. Test, not val: val chose the
  epoch or C, which biases its score up.
- **Generalisation**, three readings, each by an interval:
  - *train - test*: compared only when neither model underfits (an underfitting model's gap reflects how little
    it learned): the model whose train - test gap is smaller generalises better when the 95% interval of the
    difference of the gaps excludes zero (its test part from the paired bootstrap; train accuracy is on the whole
    train split), and its test accuracy is not the lower (a smaller gap from fitting less is not generalising
    better);
  - *calibration*, by the proper scores: the lower test NLL is better when the 95% interval of probe - CNN (a
    paired bootstrap over the test images) excludes zero and the Brier score's does not say the opposite,
    compared only when both models learned (a model that gives every image the same low confidence is calibrated
    and useless); ECE is shown, not judged (biased upward, with no interval that covers);
  - *corrupted images*, per corruption: a model is ahead where the interval of probe - CNN corrupted accuracy
    excludes zero, and is the steadier where that of the share of clean skill above chance it lost does, each at
    the Bonferroni level of the corruptions' family (so that together they name a false winner at most 5% of the
    time); over all corruptions together the same rule at 95% names the one that holds up better; compared only on at least {verdict.MIN_ROBUSTNESS_IMAGES}
    images and when both models' clean accuracy covers a tenth of the way from chance,
    {level(verdict.LEARNED_SKILL)} (a model at chance has no skill to lose);
  - the summary names each reading in which one model is better, and those that do not separate them.
- **Speed**: training compute to a common target fixed in advance, val macro-F1 {level(verdict.TARGET_SKILL)}
  (half the way from chance to 100%), as MLPerf measures time to train but in counted FLOPs, which do not depend
  on the machine or its load: a training pass of an image counts 3 forward passes, validation is not counted,
  and the L-BFGS probe reaches any level it reaches at the end of its whole fit (its train and val images through
  the backbone once, and the C sweep, its tuning; the CNN's one recipe had no tuning in this run). A model
  reaches the target at the epoch from which its val curve stays at or above it up to its kept epoch, and only
  where its test macro-F1 is at or above it too (a small val split touches a target by chance). Within a factor
  {verdict.SAME_COMPUTE:g} they need about the same. A model that does not reach the target gets no compute; its
  best is said. Fractions of each model's own best (section 3) describe a curve's shape only.
- **Bottlenecks**: a training step is data-bound when it waits on the loader for at least
  {report.DATA_BOUND:.0%} of its time, compute-bound below {report.COMPUTE_BOUND:.0%}.
- **Warnings**: fewer than {verdict.MIN_TRAIN_PER_CLASS} training images per class, and the one seed, are said
  at the top; the caveats of the warning that this run cannot answer the question (and too few training images
  per class) are repeated where they apply.
"""
