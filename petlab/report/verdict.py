"""The rules that turn numbers into conclusions: whether a model fitted its training data, whether it learned at
all, how two models' generalisation and speed compare, and when a run is too small to say much.

Each rule is a pure function of plain numbers (accuracies, macro-F1s, seconds, image counts), with its thresholds
as the constants below, so a single run's report and a study over seeds and training-set sizes conclude alike,
and each sentence changes when its numbers change. Scores are fractions (0.82, not 82).

Levels are set relative to chance (1 / number of classes), so one rule serves 2 classes and 37: a model's
*skill* is how far its score has moved from chance towards perfect, 0 at chance and 1 at 100%.
"""

from __future__ import annotations

from petlab.report.formats import percent, points

# A model fits its training data when its accuracy on its own training images (un-augmented, eval mode) has
# covered at least half the way from chance to 100%: 51% with 37 classes, 75% with 2. Below that it has not
# learned the images it was trained on, and its small train - val gap comes from learning little, not from
# generalising well.
FITTED_SKILL = 0.5
# It overfits when its test accuracy (images no choice saw) keeps under 82% of its training skill: (test - chance)
# < 0.82 x (train - chance). At train 100% with 6 classes that allows the 15-point gap of the earlier fixed rule, and
# the rule, in skill rather than points, reads the same for any number of classes: a fixed 15-point gap is 18% of
# the range above chance with 6 classes and 15% with 37, and at train 70% on 37 classes it let a model lose over a
# fifth of its skill. (A CNN from scratch that fits its 37-class training set and scores 45% on test does overfit
# by either rule: the label says so, and the train - test comparison does not crown it for a smaller gap.)
RETAINED_SKILL = 0.82
# A model learned something when its best val macro-F1 has covered at least a tenth of the way from chance to
# 1 (macro-F1 guessing at random over balanced classes is about 1 / classes, like accuracy): 12% with 37 classes,
# 55% with 2. A model below it never learned, and no time it takes to reach any level says how fast it learns.
LEARNED_SKILL = 0.1
# Wall times within a factor of 1.25 count as about as fast: wall time varies between runs of one machine.

# Fewer training images per class than this cannot show what a CNN trained from scratch can do: it must learn
# its features from them, while a pretrained backbone brings its own. The comparison is meant at 100 or more
# per class; below, only a learning curve over training-set sizes (the study) shows where the two approaches
# stand.
MIN_TRAIN_PER_CLASS = 100

NAMES = {"cnn": "CNN", "vit": "probe"}  # how sentences name the models, after "the"
UNDERFITS, OVERFITS, FITS = "underfits", "overfits", "fits"


def chance(num_classes: int) -> float:
    return 1 / num_classes


def level_at(skill: float, num_classes: int) -> float:
    """The score `skill` of the way from chance to 1."""
    return chance(num_classes) + skill * (1 - chance(num_classes))


# ---------------------------------------------------------------- fit: underfits, overfits, fits


def skill(score: float, num_classes: int) -> float:
    """How far a score has moved from chance towards 1: 0 at chance, 1 at 100%."""
    return (score - chance(num_classes)) / (1 - chance(num_classes))


def regime(train_accuracy: float, held_out_accuracy: float, num_classes: int) -> str:
    """UNDERFITS below FITTED_SKILL on its own training images; else OVERFITS where its held-out (test) skill is
    under RETAINED_SKILL of its training skill; else FITS."""
    if train_accuracy < level_at(FITTED_SKILL, num_classes):
        return UNDERFITS
    if skill(held_out_accuracy, num_classes) < RETAINED_SKILL * skill(train_accuracy, num_classes):
        return OVERFITS
    return FITS


def regime_sentence(name: str, train_accuracy: float, test_accuracy: float, num_classes: int) -> str:
    """One model's regime and the numbers it rests on; `name` as in a sentence ("CNN", "probe"). The held-out
    accuracy is the test split's: images no choice saw (val chose the epoch or C, which biases its score up)."""
    kind = regime(train_accuracy, test_accuracy, num_classes)
    if kind == UNDERFITS:
        return (
            f"The {name} underfits: it classifies {percent(train_accuracy, unit=True)} of its own training images right "
            f"(un-augmented, eval mode), under the {percent(level_at(FITTED_SKILL, num_classes), unit=True)} that marks a "
            f"fitted model (half the way from chance, {percent(chance(num_classes), unit=True)}, to 100%)."
        )
    kept = skill(test_accuracy, num_classes) / skill(train_accuracy, num_classes)
    numbers = (
        f"train accuracy {percent(train_accuracy, unit=True)}, test {percent(test_accuracy, unit=True)}: on new images it keeps "
        f"{kept:.1%} of its skill above chance, {'under' if kind == OVERFITS else 'at least'} the "
        f"{RETAINED_SKILL:.0%} this rule asks"
    )
    if kind == OVERFITS:
        return f"The {name} overfits: it fits its training images far better than new ones ({numbers})."
    return f"The {name} fits its training data without overfitting ({numbers})."


def generalisation_sentence(
    fit: dict[str, tuple[float, float]],
    num_classes: int,
    test_difference: tuple[float, float],
    names: dict[str, str] = NAMES,
) -> tuple[str, str]:
    """Train - test: which model generalises better from its training images to images no choice saw (test), only
    when both fit their training data (not UNDERFITS). `fit`: model -> (train accuracy, test accuracy);
    `test_difference`: the 95% interval of probe - CNN test accuracy (paired over the test images).

    The gap of the CNN minus the probe's is (train_cnn - train_probe) + (test_probe - test_cnn): its interval is the
    train part (the whole train split, no test sampling in it) plus that of the test difference. A model generalises
    better when that interval excludes 0 in its favour; otherwise the gaps do not separate them. A model that
    underfits is named instead: its gap reflects how little it learned. Returns (winner or 'undecided' or
    'no claim', sentence)."""
    gaps = {m: train - test for m, (train, test) in fit.items()}
    under = [m for m, (train, test) in fit.items() if regime(train, test, num_classes) == UNDERFITS]
    quoted = ", ".join(f"{points(gaps[m], unit=True)} for the {names[m]}" for m in fit)
    if under:
        who = " and the ".join(names[m] for m in under)
        return "no claim", (
            f"Train - test: no comparison, as the {who} underfit{'s' if len(under) == 1 else ''}: "
            f"{'its' if len(under) == 1 else 'their'} gap reflects how little it learned, not how well "
            f"it generalises ({quoted})."
        )
    train_part = fit["cnn"][0] - fit["vit"][0]
    low, high = train_part + test_difference[0], train_part + test_difference[1]
    interval = (
        f"the CNN's gap minus the probe's {points(gaps['cnn'] - gaps['vit'], unit=True)}, 95% interval "
        f"[{points(low)}, {points(high)}]"
    )
    if low > 0 or high < 0:
        better, worse = ("vit", "cnn") if low > 0 else ("cnn", "vit")
        if fit[better][1] < fit[worse][1]:
            # A smaller gap with a lower test accuracy is a model that learned less of its training images, not one
            # that carries more of them to new ones.
            return "no claim", (
                f"Train - test: no claim, as the {names[better]}'s smaller gap comes with the lower "
                f"test accuracy ({percent(fit[better][1], unit=True)} against {percent(fit[worse][1], unit=True)}): it fits its "
                f"training images less, it does not carry more to new ones ({quoted}; {interval})."
            )
        return better, (
            f"Train - test: the {names[better]} generalises better from its training images to new ones: "
            f"the {names[worse]}'s train - test accuracy gap is the larger ({quoted}; {interval})."
        )
    return "undecided", (f"Train - test: the gaps do not separate the models ({quoted}; {interval} holds zero).")


def calibration_sentence(
    nll: dict[str, float],
    differences: dict[str, tuple[float, float, float]],
    learned_: dict[str, bool],
    ece: dict[str, tuple[float, float]],
    names: dict[str, str] = NAMES,
) -> tuple[str, str]:
    """Rule: by the proper scores, not ECE. A model's probabilities are the better when the 95% interval of its test
    NLL minus the other's (paired bootstrap over the test images) excludes 0 in its favour and the Brier score's
    does not say the opposite; only between models that both learned (`learned_`): a model that learned nothing,
    giving every image the same low confidence, can be calibrated and useless. `differences`: "nll" and "brier",
    probe - CNN (estimate, low, high); `ece`: model -> (plug-in, debiased), quoted beside (ECE is biased upward on a
    finite split, and a percentile interval of it does not cover). Returns (winner or 'undecided' or 'no claim',
    sentence)."""
    quoted = ", ".join(
        f"NLL {nll[m]:.3f} for the {names[m]} (ECE {percent(ece[m][0])} points, debiased {percent(ece[m][1])})"
        for m in nll
    )
    idle = [m for m, ok in learned_.items() if not ok]
    if idle:
        who = " and the ".join(names[m] for m in idle)
        return "no claim", (
            f"Calibration: no comparison, as the {who} never learned: a model that gives every image "
            f"the same low confidence is calibrated and useless (test {quoted})."
        )
    by_nll, nll_interval = lower_is_better(differences["nll"], "NLL", "{:+.3f}", 1)
    by_brier, brier_interval = lower_is_better(differences["brier"], "Brier", "{:+.3f}", 1)
    intervals = f"{nll_interval}; {brier_interval}"
    if proper_scores_winner(by_nll, by_brier):
        return by_nll, (
            f"Calibration: the {names[by_nll]}'s probabilities are the better by the proper scores: its "
            f"test NLL is the lower ({quoted}; {intervals})."
        )
    if by_nll:
        return "undecided", (
            f"Calibration: the proper scores disagree, NLL for the {names[by_nll]}, Brier for the "
            f"{names[by_brier]}: no claim ({quoted}; {intervals})."
        )
    brier_note = f"; Brier favours the {names[by_brier]}, but the rule rests on NLL" if by_brier else ""
    return "undecided", (
        f"Calibration: test NLL does not separate the models ({quoted}; {nll_interval} holds zero; "
        f"{brier_interval}{brier_note})."
    )


def proper_scores_winner(by_nll: str | None, by_brier: str | None) -> str | None:
    """The calibration rule on the two proper scores' readings (a model, or None where an interval holds zero): the
    model NLL favours, unless Brier favours the other."""
    return by_nll if by_nll and by_brier in (None, by_nll) else None


def lower_is_better(
    difference: tuple[float, float, float], measure: str = "", form: str = "{:+.1f}", scale: float = 100
) -> tuple[str | None, str]:
    """Of a measure where lower is better, given probe - CNN with its 95% interval: the model whose interval says it
    is lower ('vit' or 'cnn'), or None where the interval holds zero; and the interval as the sentences quote it."""
    estimate, low, high = difference
    unit = " points" if scale == 100 else ""
    interval = (
        f"probe - CNN{' ' + measure if measure else ''} {form.format(estimate * scale)}{unit}, 95% interval "
        f"[{form.format(low * scale)}, {form.format(high * scale)}]"
    )
    return ("vit" if high < 0 else "cnn" if low > 0 else None), interval


# Robustness is read per corruption, on at least MIN_ROBUSTNESS_IMAGES images (fewer: the numbers, no interval
# and no winner; at 12 images a "95% interval" of an accuracy spans about 50 points), and only between models whose
# clean accuracy on those images covers LEARNED_SKILL of the way from chance: the share of clean skill lost is
# measured above chance, so a weak model is not blocked by a floor meant for fitted ones (on 37 classes a floor at
# half the way, 51%, left almost every CNN from scratch without a reading), but one at chance has no skill to lose.
MIN_ROBUSTNESS_IMAGES = 200


def corruption_words(name: str) -> str:
    return name.replace("_", " ")


def robustness_no_claim(clean: dict, images: int, num_classes: int, names: dict[str, str]) -> str:
    """Why no robustness reading is made ('' where one is): a model whose clean accuracy is under LEARNED_SKILL of
    the way from chance has no skill to lose, and under MIN_ROBUSTNESS_IMAGES images an interval means nothing."""
    floor = level_at(LEARNED_SKILL, num_classes)
    weak = [m for m, v in clean.items() if v < floor]
    if weak:
        return (
            f"the {' and the '.join(names[m] for m in weak)} classif{'ies' if len(weak) == 1 else 'y'} clean "
            f"images under {percent(floor, unit=True)} right (a tenth of the way from chance to 100%): no skill to lose"
        )
    if images < MIN_ROBUSTNESS_IMAGES:
        return (
            f"{images} test images are too few for an interval (at least {MIN_ROBUSTNESS_IMAGES}; "
            "raise robustness.test_per_class)"
        )
    return ""


def corruption_readings(per: dict, clean: dict, names: dict[str, str]) -> str:
    """Per corruption: who is ahead (the interval of probe - CNN accuracy excludes 0) and who is the steadier (that
    of the share of skill lost excludes 0 in its favour)."""
    ahead = {
        m: [corruption_words(c) for c, e in per.items() if (e["ahead"][1] > 0 if m == "vit" else e["ahead"][2] < 0)]
        for m in clean
    }
    steadier = {
        m: [
            corruption_words(c)
            for c, e in per.items()
            if e["lost_difference"] and lower_is_better(e["lost_difference"])[0] == m
        ]
        for m in clean
    }
    readings = [
        f"the {names[m]} is {what} under {', '.join(items)}"
        for m in clean
        for what, items in (("ahead", ahead[m]), ("the steadier (the smaller share of its skill lost)", steadier[m]))
        if items
    ]
    if not readings:
        return "no single corruption separates them"
    return "per corruption (each interval one of their Bonferroni family), " + "; ".join(readings)


def robustness_sentence(robust: dict, num_classes: int, names: dict[str, str] = NAMES) -> tuple[str, str]:
    """Rule, per corruption (its severities together): a model is *ahead* under it where the 95% interval of probe
    - CNN corrupted accuracy excludes 0, and *holds up better* where that of the share of clean skill lost excludes
    0 in its favour (report.robustness_by_corruption). The winner over all corruptions: who holds up better on
    all of them together, with the per-corruption readings beside it. Returns (winner or 'undecided' or 'no
    claim', sentence)."""
    images, clean = robust["images"], robust["clean"]
    per = {c: e for c, e in robust["corruptions"].items() if c != "all"}
    quoted = "; ".join(
        f"{corruption_words(c)}: "
        + ", ".join(f"{percent(e['accuracy'][m], unit=True)} for the {names[m]}" for m in clean)
        for c, e in per.items()
    )
    why = robustness_no_claim(clean, images, num_classes, names)
    if why:
        return "no claim", f"Corrupted images: no comparison, as {why} (accuracy under {quoted})."
    where = corruption_readings(per, clean, names)
    overall = robust["corruptions"]["all"]
    better, interval = lower_is_better(overall["lost_difference"]) if overall["lost_difference"] else (None, "")
    lost = ", ".join(f"{overall['skill_lost'][m]:.0%} for the {names[m]}" for m in clean)
    tail = (
        f" (share of clean skill above chance lost over all {len(per)} corruptions: {lost}"
        + (f"; {interval}" if interval else "; no interval: the clean accuracy too near chance")
        + f"; accuracy under {quoted}; {images} test images)"
    )
    if better:
        return better, (
            f"Corrupted images: by the share of its skill lost over all corruptions together, the "
            f"{names[better]} holds up better; {where}{tail}."
        )
    return "undecided", (
        f"Corrupted images: by the share of skill lost over all corruptions together, the models do "
        f"not separate; {where}{tail}."
    )


def generalisation_summary(winners: dict[str, str], names: dict[str, str] = NAMES) -> str:
    """One sentence from the three senses' rules (sense -> 'cnn', 'vit', 'undecided' or 'no claim')."""
    by = {m: [sense for sense, w in winners.items() if w == m] for m in ("vit", "cnn")}
    open_ = [sense for sense, w in winners.items() if w in ("undecided", "no claim")]
    parts = [f"the {names[m]} generalises better in {' and '.join(senses)}" for m, senses in by.items() if senses]
    if not parts:
        return f"Who generalises better: the data does not separate the models in {', '.join(open_)}."
    rest = f"; {', '.join(open_)} do{'es' if len(open_) == 1 else ''} not separate them" if open_ else ""
    return "Who generalises better: " + "; ".join(parts) + rest + "."


# ---------------------------------------------------------------- speed: time to a common target


def learned(best_val_macro_f1: float, num_classes: int) -> bool:
    """Whether a model's best val macro-F1 reaches LEARNED_SKILL of the way from chance to 1."""
    return best_val_macro_f1 >= level_at(LEARNED_SKILL, num_classes)


Point = tuple[int | None, float, float]  # (epoch or None, training GFLOPs since training began, val macro-F1)

# The common target of "who converges faster", fixed before any curve is seen: a val macro-F1 half the way from
# chance to 1 (58% with 6 classes, 51% with 37). Not the weaker model's own best, a noisy maximum that puts the
# target wherever that model's luckiest epoch happened to be.
TARGET_SKILL = 0.5
# Compute within a factor of 1.25 counts as about the same: a CNN's compute comes in whole epochs.
SAME_COMPUTE = 1.25


def training_gflops(forward_gflops_per_image: float, images: float) -> float:
    """A training pass over `images` images: forward and backward, about 3 forward passes (the backward pass
    costs about twice the forward)."""
    return 3 * forward_gflops_per_image * images


def kept_part(curve: list[Point]) -> list[Point]:
    """The curve up to the kept point: the first with the best val macro-F1 (the weights the model keeps)."""
    best = max(f1 for _, _, f1 in curve)
    return curve[: next(i for i, (_, _, f1) in enumerate(curve) if f1 == best) + 1]


def first_reaching(curve: list[Point], level: float) -> dict | None:
    """The first point from which val macro-F1 stays at or above `level` up to the kept point (kept_part), as
    {"epoch", "gflops"}; None where the kept point is below it.

    Not the first point at or above it: on a selection split of 74 images, a CNN whose true curve plateaus 6
    points under the target touched it by chance in 71% of simulated runs. A model fitted without epochs (the
    L-BFGS probe) is one point, epoch None, at its whole fit's compute: it has no curve, so its compute to any
    level it reaches is its whole fit."""
    kept = kept_part(curve)
    for i, (epoch, gflops, _) in enumerate(kept):
        if all(f1 >= level for _, _, f1 in kept[i:]):
            return {"epoch": epoch, "gflops": gflops}
    return None


def compute_to_target(progress: dict[str, list[Point]], num_classes: int, test: dict[str, float] | None = None) -> dict:
    """Training compute to a common target (MLPerf's time-to-train, in FLOPs that do not depend on the machine or its
    load): the target is fixed (TARGET_SKILL of the way from chance to 1), and each model's compute is that of the
    point from which its val curve stays at or above it up to the kept weights (first_reaching). With `test` (model
    -> test macro-F1 of the kept weights), a model whose test score is under the target does not count as reaching
    it: its val curve reached it by the luck of a small selection split. Validation is not counted (each model
    validates as often as its protocol needs).

    Returns target, best (model -> best val macro-F1), reached (model -> {"epoch", "gflops"} or None), test."""
    target = level_at(TARGET_SKILL, num_classes)
    confirmed = {m: test is None or test[m] >= target for m in progress}
    return {
        "target": target,
        "best": {m: max(f1 for _, _, f1 in curve) for m, curve in progress.items()},
        "reached": {m: first_reaching(curve, target) if confirmed[m] else None for m, curve in progress.items()},
        "test": test,
    }


def short_of(t: dict, model: str, names: dict[str, str] = NAMES) -> str:
    """Why a model does not count as reaching the target: its best val score under it, or its test score under it
    (val reached it by luck)."""
    if t["best"][model] < t["target"]:
        return f"the {names[model]}'s best val macro-F1 is {percent(t['best'][model], unit=True)}"
    return (
        f"the {names[model]}'s val macro-F1 reaches {percent(t['best'][model], unit=True)}, but its test macro-F1, "
        f"{percent(t['test'][model], unit=True)}, is under the target: a small val split touched it by chance"
    )


def gflops_text(gflops: float) -> str:
    return f"{gflops / 1000:,.1f} TFLOPs" if gflops >= 1000 else f"{gflops:,.1f} GFLOPs"


def when(reached: dict) -> str:
    where = "after its whole fit" if reached["epoch"] is None else f"at epoch {reached['epoch']}"
    return f"{where} ({gflops_text(reached['gflops'])})"


def speed_sentence(t: dict, num_classes: int, names: dict[str, str] = NAMES) -> str:
    """Rule: who reaches the fixed target (compute_to_target) with less training compute; within a factor
    SAME_COMPUTE about the same. A model that does not reach it gets no time: it is said to fall short, with its
    best. Neither reaching it: no comparison."""
    target = (
        f"val macro-F1 {percent(t['target'], unit=True)}, half the way from chance ({percent(chance(num_classes), unit=True)}) to 100%, "
        f"fixed in advance"
    )
    short = [m for m, r in t["reached"].items() if r is None]
    if len(short) == len(t["reached"]):
        return (
            f"No speed comparison: neither model reaches the common target ({target}); "
            + "; ".join(short_of(t, m, names) for m in t["best"])
            + "."
        )
    if short:
        (slow,) = short
        (fast,) = [m for m in t["reached"] if m != slow]
        return (
            f"Only the {names[fast]} reaches the common target ({target}), {when(t['reached'][fast])} of "
            f"training compute; {short_of(t, slow, names)}."
        )
    (a, b) = t["reached"]
    head = (
        f"Training compute to a common target ({target}): the {names[a]} reaches it {when(t['reached'][a])}, "
        f"the {names[b]} {when(t['reached'][b])}"
    )
    fast, slow = sorted((a, b), key=lambda m: t["reached"][m]["gflops"])
    ratio = t["reached"][slow]["gflops"] / max(t["reached"][fast]["gflops"], 1e-12)
    if ratio < SAME_COMPUTE:
        return f"{head}: about the same compute (within a factor {SAME_COMPUTE:g})."
    return f"{head}: the {names[fast]} gets there with {ratio:.1f} times less compute."


# ---------------------------------------------------------------- warnings


def few_images_warning(min_per_class: int, max_per_class: int) -> str | None:
    """A warning when the train split holds fewer than MIN_TRAIN_PER_CLASS images of some class; None else."""
    if min_per_class >= MIN_TRAIN_PER_CLASS:
        return None
    held = f"{min_per_class}" if min_per_class == max_per_class else f"{min_per_class} to {max_per_class}"
    return (
        f"the train split holds {held} images per class, fewer than {MIN_TRAIN_PER_CLASS}: too few to show "
        f"what a CNN trained from scratch can do (it learns its features from them; the probe's backbone "
        f"brings its own), so this run shows the comparison at this size only"
    )
