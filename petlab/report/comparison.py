"""The analysis a run exists for: numbers with uncertainty, paired tests, convergence, errors, cost, conclusions.

Every quantity is a small pure function of what the earlier stages wrote, so each can be checked on a
hand-worked case. The conclusions come from explicit rules (see `conclusions`), never from prose written
by hand, so they change when the numbers change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from petlab.core.metrics import confusion, macro_f1_rows, reports_top_k
from petlab.report import verdict
from petlab.report.formats import points

PROPER_SCORES = ("nll", "brier")  # per-image columns of plots/evaluate/predictions_test_<model>.csv
MODELS = {"cnn": "CNN", "vit": "Probe"}  # in tables; figures and section 1 name each for what it is
IN_SENTENCES = verdict.NAMES
# What the profile stage times for each model: the probe's step is a forward through its backbone (the pass its
# feature extraction also makes, once per image) and an update of what it trains, as its image routes train.
PROFILED_STEP = {
    "cnn": "CNN's training step",
    "vit": "probe's step from images (backbone forward + update of what it trains)",
}
METRICS = {"accuracy": "Accuracy", "macro_f1": "Macro-F1", "top5_accuracy": "Top-5 accuracy"}
LEVEL = 0.95  # of every confidence interval
SIGNIFICANCE = 0.05  # McNemar's p below this: the paired test sees a difference
DATA_BOUND, COMPUTE_BOUND = 0.5, 0.1  # loader-wait shares of a training step (see `bottleneck`)
FEW_EPOCHS = 10


def reported_metrics(num_classes: int) -> dict[str, str]:
    """The metrics the report shows: top-5 accuracy only with more than 5 classes (else 100% by construction)."""
    return {k: v for k, v in METRICS.items() if k != "top5_accuracy" or reports_top_k(num_classes)}


# ---------------------------------------------------------------- metrics on resamples


@dataclass(frozen=True)
class TestPredictions:
    """Both models' predictions on the same test images, as label indices."""

    labels: np.ndarray
    preds: dict[str, np.ndarray]  # model -> predicted label per image
    top5: dict[str, np.ndarray]  # model -> 1 where the label was among the model's 5 best; empty: 5 classes or fewer
    num_classes: int
    confidence: dict[str, np.ndarray] | None = None  # model -> its top-class probability per image
    scores: dict[str, dict[str, np.ndarray]] | None = None  # model -> {"nll", "brier"} per image

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, class_names: list[str]) -> TestPredictions:
        index = {name: i for i, name in enumerate(class_names)}
        top5 = (
            {m: frame[f"{m}_top5"].to_numpy().astype(bool) for m in MODELS} if reports_top_k(len(class_names)) else {}
        )
        return cls(
            frame["actual"].map(index).to_numpy(),
            {m: frame[f"{m}_predicted"].map(index).to_numpy() for m in MODELS},
            top5,
            len(class_names),
            {m: frame[f"{m}_confidence"].to_numpy(dtype=float) for m in MODELS}
            if all(f"{m}_confidence" in frame for m in MODELS)
            else None,
            {m: {k: frame[f"{m}_{k}"].to_numpy(dtype=float) for k in PROPER_SCORES} for m in MODELS}
            if all(f"{m}_{k}" in frame for m in MODELS for k in PROPER_SCORES)
            else None,
        )

    def correct(self, model: str) -> np.ndarray:
        return self.preds[model] == self.labels

    def metric(self, model: str, name: str, rows: np.ndarray) -> np.ndarray:
        """The metric on each resample; `rows` holds one resample of image indices per row."""
        if name == "accuracy":
            return self.correct(model)[rows].mean(1)
        if name == "top5_accuracy":
            return self.top5[model][rows].mean(1)
        return macro_f1_rows(self.labels[rows], self.preds[model][rows], self.num_classes)


def resample_rows(n: int, resamples: int, seed: int) -> np.ndarray:
    """Bootstrap draws of n image indices with replacement, one per row, from a seeded generator."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def score_difference(predictions: TestPredictions, key: str, resamples: int, seed: int) -> tuple[float, float, float]:
    """A proper score's mean (NLL or Brier; lower is better) of the probe minus the CNN's on the test images, with its
    95% interval from a paired bootstrap (both models' scores on the same resampled images)."""
    rows = resample_rows(len(predictions.labels), resamples, seed)
    per_image = predictions.scores["vit"][key] - predictions.scores["cnn"][key]
    return (float(per_image.mean()), *percentile_interval(per_image[rows].mean(1)))


# The share of skill lost is undefined in a bootstrap draw whose clean accuracy is at chance; its interval is made
# only where at most this share of the draws are undefined, so that it is not that of a quietly filtered sample.
MAX_UNDEFINED_DRAWS = 0.01


def robustness_by_corruption(frame: pd.DataFrame, num_classes: int, resamples: int, seed: int) -> dict:
    """From the robustness stage's predictions (a row per image and condition): per corruption (its severities
    together) and over all of them ("all"), each model's accuracy and the share of its clean skill above chance it
    lost ((clean - corrupted) / (clean - chance): the same measure for 6 classes and 37), and probe - CNN of both,
    with intervals from a paired bootstrap over the images (each resample scores both models, clean and corrupted,
    on the same images): over all corruptions at LEVEL, each corruption at the Bonferroni level of their family
    (1 - (1 - LEVEL) / corruptions), so that the readings per corruption name a false winner at most 1 - LEVEL of
    the time together. The share lost has no interval (None) where over 1% of resamples leave a model's clean
    accuracy at or under chance. Also each model's clean accuracy and the images scored."""
    clean = frame[frame["corruption"] == "clean"].sort_values("image")
    corrupted = frame[frame["corruption"] != "clean"]
    n = len(clean)
    rows = resample_rows(n, resamples, seed)
    chance = 1 / num_classes
    right_clean = {m: (clean[m] == clean["label"]).to_numpy(dtype=float) for m in MODELS}
    groups = {c: part for c, part in corrupted.groupby("corruption", sort=False)}
    family = 1 - (1 - LEVEL) / max(1, len(groups))
    out = {
        "clean": {m: float(v.mean()) for m, v in right_clean.items()},
        "images": n,
        "corruptions": {},
        "family_level": family,
    }
    for name, part in [*groups.items(), ("all", corrupted)]:
        level = LEVEL if name == "all" else family
        right = {
            m: part.assign(ok=part[m] == part["label"]).groupby("image", sort=True)["ok"].mean().to_numpy(dtype=float)
            for m in MODELS
        }

        def lost(m: str, idx, right: dict = right) -> np.ndarray:
            c, k = right_clean[m][idx].mean(-1), right[m][idx].mean(-1)
            return np.where(c > chance, (c - k) / np.where(c > chance, c - chance, 1), np.nan)

        everything = np.arange(n)
        entry = {
            "accuracy": {m: float(right[m].mean()) for m in MODELS},
            "skill_lost": {m: float(lost(m, everything)) for m in MODELS},
            "level": level,
        }
        ahead = right["vit"][rows].mean(1) - right["cnn"][rows].mean(1)
        entry["ahead"] = (entry["accuracy"]["vit"] - entry["accuracy"]["cnn"], *percentile_interval(ahead, level))
        drops = lost("vit", rows) - lost("cnn", rows)
        point = entry["skill_lost"]["vit"] - entry["skill_lost"]["cnn"]
        entry["lost_difference"] = (
            (point, *percentile_interval(drops[~np.isnan(drops)], level))
            if np.isfinite(point) and np.isnan(drops).mean() <= MAX_UNDEFINED_DRAWS
            else None
        )
        out["corruptions"][name] = entry
    return out


def bootstrap_results(predictions: TestPredictions, resamples: int, seed: int) -> dict[str, dict[str, tuple]]:
    """For each reported metric: each model's (estimate, low, high) and the paired difference probe - CNN.

    Both models are scored on the same resampled images, so the difference's interval accounts for their
    errors falling on the same hard images.
    """
    rows = resample_rows(len(predictions.labels), resamples, seed)
    everything = np.arange(len(predictions.labels))[None, :]
    results = {}
    for name in reported_metrics(predictions.num_classes):
        point = {m: float(predictions.metric(m, name, everything)[0]) for m in MODELS}
        samples = {m: predictions.metric(m, name, rows) for m in MODELS}
        results[name] = {m: (point[m], *percentile_interval(samples[m])) for m in MODELS}
        difference = samples["vit"] - samples["cnn"]
        results[name]["difference"] = (point["vit"] - point["cnn"], *percentile_interval(difference))
    return results


# ---------------------------------------------------------------- paired test and agreement


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's exact test: only the images exactly one model gets right say which is better.

    Under no difference each such image is a fair coin between the two models: a two-sided binomial test
    of `only_a` successes in `only_a + only_b` trials.
    """
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    discordant = only_a + only_b
    p = binomtest(only_a, discordant, 0.5).pvalue if discordant else 1.0
    return {"only_a": only_a, "only_b": only_b, "p_value": float(p)}


def agreement_table(correct_cnn: np.ndarray, correct_vit: np.ndarray) -> pd.DataFrame:
    """Test images by which model got them right: a 2 x 2 table with totals."""

    def outcome(correct: np.ndarray, model: str) -> pd.Categorical:
        right, wrong = f"{model} right", f"{model} wrong"
        return pd.Categorical(np.where(correct, right, wrong), [right, wrong])

    return pd.crosstab(
        outcome(correct_cnn, "CNN"), outcome(correct_vit, "Probe"), margins=True, margins_name="total", dropna=False
    ).rename_axis(index=None, columns=None)


# ---------------------------------------------------------------- convergence


# The shares of a model's own best val macro-F1 whose first epoch the convergence table gives: the shape of its
# curve (how soon it nears its own best), never a comparison between the models.
OWN_BEST_SHARES = (0.9, 0.95)


def convergence(history: pd.DataFrame, elapsed: pd.Series, fractions=OWN_BEST_SHARES) -> dict[float, dict]:
    """The first epoch (and the wall seconds since training started) whose val macro-F1 reached each
    fraction of the best val macro-F1 of the run: each model against its own best, for reading a curve's shape
    only (a model that learns nothing reaches its own best at once); conclusions use `verdict.compute_to_target`.

    `elapsed` holds the cumulative seconds at the end of each epoch, indexed by epoch.
    """
    best = history["val_macro_f1"].max()
    out = {}
    for fraction in fractions:
        epoch = int(history.loc[history["val_macro_f1"] >= fraction * best, "epoch"].iloc[0])
        out[fraction] = {"epoch": epoch, "seconds": float(elapsed.loc[epoch])}
    return out


def progress(history: pd.DataFrame, setup_gflops: float, gflops_per_epoch: float) -> list[verdict.Point]:
    """A model's val macro-F1 over training as `verdict` reads it: per epoch, the training compute so far."""
    return [
        (int(e), setup_gflops + int(e) * gflops_per_epoch, float(f))
        for e, f in zip(history["epoch"], history["val_macro_f1"])
    ]


# ---------------------------------------------------------------- errors by class


def most_confused_pairs(matrix: np.ndarray, class_names: list[str], top: int = 5) -> pd.DataFrame:
    """The largest off-diagonal cells of a confusion matrix (rows actual, columns predicted), largest first;
    ties in the order of the class names."""
    actual, predicted = np.nonzero(matrix * (1 - np.eye(len(matrix), dtype=matrix.dtype)))
    frame = pd.DataFrame(
        {
            "actual": [class_names[i] for i in actual],
            "predicted": [class_names[j] for j in predicted],
            "images": matrix[actual, predicted].astype(int),
        }
    )
    return frame.sort_values("images", ascending=False, kind="stable").head(top).reset_index(drop=True)


confusion_counts = confusion  # rows actual, columns predicted: the matrix evaluate writes


def hardest_classes(per_class: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """The classes with the lowest F1 (ties by name)."""
    return per_class.sort_values(["f1", "class"], kind="stable").head(top).reset_index(drop=True)


def f1_spread(per_class: pd.DataFrame) -> dict[str, float]:
    f1 = per_class["f1"]
    return {
        "min": float(f1.min()),
        "q1": float(f1.quantile(0.25)),
        "median": float(f1.median()),
        "q3": float(f1.quantile(0.75)),
        "max": float(f1.max()),
        "std": float(f1.std(ddof=0)),
    }


def species_errors(labels: np.ndarray, preds: np.ndarray, class_species: list[str]) -> dict[str, float]:
    """Errors between species (a cat taken for a dog or back) against errors within one species."""
    species = np.asarray(class_species)
    wrong = labels != preds
    across = wrong & (species[labels] != species[preds])
    return {
        "errors": int(wrong.sum()),
        "across_species": int(across.sum()),
        "within_species": int((wrong & ~across).sum()),
        "species_accuracy": float(np.mean(~across)),
    }


def class_gains(cnn: pd.DataFrame, probe: pd.DataFrame) -> pd.DataFrame:
    """Per-class test F1 of both models (per_class_<model>.csv) and probe - CNN in points, largest gain first."""
    frame = pd.DataFrame(
        {
            "class": cnn["class"],
            "test images": cnn["support"],
            "CNN F1 (%)": cnn["f1"] * 100,
            "probe F1 (%)": probe["f1"] * 100,
        }
    )
    frame["probe - CNN (points)"] = frame["probe F1 (%)"] - frame["CNN F1 (%)"]
    return frame.sort_values(["probe - CNN (points)", "class"], ascending=[False, True], kind="stable").reset_index(
        drop=True
    )


def species_gains(gains: pd.DataFrame, species: dict[str, str]) -> pd.DataFrame:
    """The mean over each species' classes of the per-class F1 of both models and of the gain."""
    frame = gains.assign(species=gains["class"].map(species))
    out = frame.groupby("species", sort=True).agg(
        **{
            "classes": ("class", "count"),
            "test images": ("test images", "sum"),
            "CNN F1 (%)": ("CNN F1 (%)", "mean"),
            "probe F1 (%)": ("probe F1 (%)", "mean"),
            "probe - CNN (points)": ("probe - CNN (points)", "mean"),
        }
    )
    return out.reset_index()


def split_gaps(scores: dict[str, dict]) -> dict[str, float]:
    """Train - val and val - test gaps of accuracy and macro-F1 from one model's scores per split in
    metrics/evaluate/<model>.json (every split scored alike: un-augmented images, eval mode)."""
    return {
        f"{kind}_{metric}": scores[a][metric] - scores[b][metric]
        for metric in ("accuracy", "macro_f1")
        for kind, a, b in (("train_val", "train", "val"), ("val_test", "val", "test"))
    }


def is_kept(sweep: pd.DataFrame, selected_c: float) -> pd.Series:
    """Which row of the L-BFGS probe's sweep (c_sweep.csv) is the C it kept."""
    return pd.Series(np.isclose(sweep["c"], selected_c), index=sweep.index)


# ---------------------------------------------------------------- cost


def stage_shares(seconds: dict[str, float]) -> pd.DataFrame:
    total = sum(seconds.values())
    frame = pd.DataFrame({"stage": list(seconds), "seconds": list(seconds.values())})
    frame["share"] = frame["seconds"] / total
    return frame


def bottleneck(data_wait_share: float) -> str:
    """`data-bound` when the step waits on the loader at least DATA_BOUND of its time, `compute-bound` below
    COMPUTE_BOUND, `partly data-bound` between."""
    if data_wait_share >= DATA_BOUND:
        return "data-bound"
    if data_wait_share < COMPUTE_BOUND:
        return "compute-bound"
    return "partly data-bound"


# ---------------------------------------------------------------- conclusions


def interval(low: float, high: float) -> str:
    return f"95% CI [{points(low)}, {points(high)}]"


def p_value(p: float) -> str:
    return f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


def comparison_sentence(metric: str, difference: tuple[float, float, float], mcnemar: dict | None = None) -> str:
    """Rule: a difference is significant when its 95% bootstrap interval (probe - CNN) excludes zero;
    the model with the higher estimate is then better. On accuracy McNemar's p is quoted too, and a
    disagreement between the two tests is said."""
    estimate, low, high = difference
    name = METRICS[metric].lower() if metric != "macro_f1" else "macro-F1"
    test = f", McNemar {p_value(mcnemar['p_value'])}" if mcnemar else ""
    if low > 0 or high < 0:
        better, worse = ("probe", "CNN") if estimate > 0 else ("CNN", "probe")
        if estimate < 0:  # the interval of CNN - probe, so that both bounds read as the CNN's lead
            low, high = -high, -low
        sentence = (
            f"The {better} is better than the {worse} on test {name} by {points(abs(estimate), signed=False, unit=True)} "
            f"({better} - {worse}: {interval(low, high)}{test})."
        )
        if mcnemar and mcnemar["p_value"] >= SIGNIFICANCE:
            sentence += " The paired test does not confirm it: a borderline difference."
        return sentence
    sentence = (
        f"No significant difference on test {name}: probe - CNN = {points(estimate)} points, "
        f"{interval(low, high)} holds zero{test}."
    )
    if mcnemar and mcnemar["p_value"] < SIGNIFICANCE:
        sentence += " The paired test does see a difference: a borderline case."
    return sentence


def conclusions(
    results: dict,
    mcnemar: dict,
    target: dict,
    fit: dict[str, tuple[float, float]],
    num_classes: int,
    bound: dict[str, tuple[str, float]],
    last_epoch_best: list[str],
    caveats: list[str],
    c_edge: str | None = None,
    generalisation: list[str] = (),
) -> list[str]:
    """The report's conclusions, each from one rule stated in the function it comes from.

    `target`: `verdict.compute_to_target` of both models' val macro-F1 over training compute (the L-BFGS probe one
    point at its whole fit). `fit`: model -> (train accuracy, test accuracy), both on un-augmented images in eval
    mode. `generalisation`: the sentences of the three senses of generalising (verdict.generalisation_sentence,
    calibration_sentence, robustness_sentence) and their summary. `c_edge` ("largest"/"smallest"): the L-BFGS probe
    kept that end of its C grid, so it may be under-tuned."""
    caveat = f" Caveats: {'; '.join(caveats)}." if caveats else ""
    out = [
        comparison_sentence("macro_f1", results["macro_f1"]["difference"]) + caveat,
        comparison_sentence("accuracy", results["accuracy"]["difference"], mcnemar) + caveat,
        verdict.speed_sentence(target, num_classes) + caveat,
    ]
    out += [verdict.regime_sentence(IN_SENTENCES[m], *fit[m], num_classes) for m in MODELS]
    out += list(generalisation)
    for model, (kind, share) in bound.items():
        out.append(
            f"The {PROFILED_STEP[model]} is {kind}: it waits on the loader for {share:.0%} of each profiled step."
        )
    for model in last_epoch_best:
        out.append(
            f"The {IN_SENTENCES[model]}'s best val macro-F1 came in its last epoch: it may still be improving, "
            f"and more epochs could change the comparison."
        )
    if c_edge:
        out.append(
            f"The probe kept the {c_edge} C of its grid: a C beyond it may do better on val, so the probe "
            f"may be under-tuned and the comparison may understate it (extend train_vit.c_grid)."
        )
    return out
