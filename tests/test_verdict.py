"""The conclusion rules on crafted numbers: the cases where a gap or a speed-up said the wrong thing, and each
sentence turning over when its numbers turn over."""

import pytest

from petlab.report import verdict

PETS, TWO = 37, 2


def test_levels_are_set_from_chance_for_any_number_of_classes():
    assert verdict.chance(PETS) == pytest.approx(1 / 37)
    assert verdict.level_at(0.5, TWO) == pytest.approx(0.75)  # half the way from 50% to 100%
    assert verdict.level_at(0.5, PETS) == pytest.approx(1 / 37 + 0.5 * 36 / 37)
    assert verdict.level_at(0.0, 10) == pytest.approx(0.1) and verdict.level_at(1.0, 10) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "train, val, classes, expected",
    [
        (0.19, 0.089, PETS, verdict.UNDERFITS),  # a CNN that barely learned: a small gap, but not a fitted model
        (1.00, 0.82, PETS, verdict.OVERFITS),  # keeps 81% of its skill on new images
        (0.95, 0.88, PETS, verdict.FITS),  # keeps 88%
        (0.90, 0.45, PETS, verdict.OVERFITS),  # a CNN from scratch on 37 classes that fits far better than it predicts
        (0.52, 0.50, PETS, verdict.FITS),  # just past half the way from 2.7% to 100%
        (0.70, 0.69, TWO, verdict.UNDERFITS),  # 70% of two classes is under half the way from chance
        (0.80, 0.77, TWO, verdict.FITS),
        (0.80, 0.74, TWO, verdict.OVERFITS),  # 6 of its 30 points above chance lost on new images
        (0.99, 0.80, TWO, verdict.OVERFITS),
    ],
)
def test_regime(train, val, classes, expected):
    assert verdict.regime(train, val, classes) == expected


@pytest.mark.parametrize(
    "train_skill, test_skill", [(1.0, 0.9), (1.0, 0.8), (0.8, 0.7), (0.8, 0.6), (0.4, 0.3), (0.6, 0.55)]
)
def test_the_fit_rule_reads_alike_on_6_and_37_classes(train_skill, test_skill):
    """The same skills (how far from chance towards 100%) get the same regime whatever the number of classes."""
    regimes = {verdict.regime(verdict.level_at(train_skill, k), verdict.level_at(test_skill, k), k) for k in (2, 6, 37)}
    assert len(regimes) == 1, regimes


def test_regime_sentences_give_their_numbers():
    under = verdict.regime_sentence("CNN", 0.19, 0.089, PETS)
    assert under.startswith("The CNN underfits") and "19.0%" in under and "51.4%" in under and "2.7%" in under
    over = verdict.regime_sentence("probe", 1.0, 0.82, PETS)
    assert over.startswith("The probe overfits") and "keeps 81.5% of its skill" in over and "under the 82%" in over
    fits = verdict.regime_sentence("probe", 0.95, 0.88, PETS)
    assert fits.startswith("The probe fits its training data") and "at least the 82%" in fits


def test_an_underfitting_cnn_with_a_small_gap_is_not_said_to_generalise_better():
    # The real run: the CNN at 19% on its training images (8.9% test), the probe at 100% (82% test).
    winner, sentence = verdict.generalisation_sentence({"cnn": (0.19, 0.089), "vit": (1.0, 0.82)}, PETS, (0.70, 0.76))
    assert winner == "no claim" and "better" not in sentence and "alike" not in sentence
    assert (
        sentence.startswith("Train - test: no comparison, as the CNN underfits") and "how little it learned" in sentence
    )
    winner, sentence = verdict.generalisation_sentence({"cnn": (0.1, 0.09), "vit": (0.2, 0.1)}, PETS, (-0.05, 0.07))
    assert winner == "no claim" and "the CNN and the probe underfit" in sentence


def test_train_test_gaps_decide_only_beyond_their_uncertainty_and_turn_with_them():
    # The probe's gap 18 points, the CNN's 6: the CNN generalises better when the test difference is precise ...
    winner, sentence = verdict.generalisation_sentence({"cnn": (0.90, 0.84), "vit": (1.0, 0.82)}, PETS, (-0.04, 0.0))
    assert winner == "cnn" and sentence.startswith("Train - test: the CNN generalises better")
    assert "the probe's train - test accuracy gap is the larger" in sentence
    # ... but not on a tiny test split, whose interval of the test difference is wide.
    winner, sentence = verdict.generalisation_sentence({"cnn": (0.90, 0.84), "vit": (1.0, 0.82)}, PETS, (-0.25, 0.20))
    assert winner == "undecided" and "do not separate the models" in sentence and "holds zero" in sentence
    winner, _ = verdict.generalisation_sentence({"cnn": (1.0, 0.82), "vit": (0.90, 0.84)}, PETS, (0.0, 0.04))
    assert winner == "vit"
    # A smaller gap that comes with the lower test accuracy is fitting less, not generalising better.
    winner, sentence = verdict.generalisation_sentence({"cnn": (0.60, 0.55), "vit": (1.0, 0.82)}, PETS, (0.2, 0.34))
    assert winner == "no claim" and "the CNN's smaller gap comes with the lower test accuracy" in sentence
    # Two classes: 70% train accuracy is not fitted there (half the way from 50% is 75%).
    assert verdict.generalisation_sentence({"cnn": (0.70, 0.68), "vit": (1.0, 0.82)}, TWO, (0.1, 0.2))[0] == "no claim"
    assert verdict.generalisation_sentence({"cnn": (0.90, 0.84), "vit": (1.0, 0.82)}, TWO, (-0.04, 0.0))[0] == "cnn"


def test_calibration_is_judged_by_the_proper_scores_between_models_that_learned():
    """A constant predictor's confidence matches its accuracy (ECE about 0), and it is useless: no claim. Otherwise
    the lower NLL wins where its interval excludes 0 and Brier does not say the opposite."""
    ece = {"cnn": (0.01, 0.0), "vit": (0.05, 0.03)}
    both = {"cnn": True, "vit": True}
    winner, sentence = verdict.calibration_sentence(
        {"cnn": 3.6, "vit": 0.5},
        {"nll": (-3.1, -3.3, -2.9), "brier": (-0.5, -0.6, -0.4)},
        {"cnn": False, "vit": True},
        ece,
    )
    assert winner == "no claim" and sentence.startswith("Calibration: no comparison, as the CNN never learned")
    winner, sentence = verdict.calibration_sentence(
        {"cnn": 0.9, "vit": 0.5}, {"nll": (-0.4, -0.5, -0.3), "brier": (-0.1, -0.15, -0.05)}, both, ece
    )
    assert winner == "vit" and "the probe's probabilities are the better by the proper scores" in sentence
    assert "NLL 0.900 for the CNN (ECE 1.0 points, debiased 0.0)" in sentence
    winner, sentence = verdict.calibration_sentence(
        {"cnn": 0.52, "vit": 0.5}, {"nll": (-0.02, -0.06, 0.02), "brier": (-0.01, -0.03, 0.01)}, both, ece
    )
    assert winner == "undecided" and "does not separate" in sentence
    # NLL holding zero while Brier does not: undecided, and the sentence says which interval holds zero.
    winner, sentence = verdict.calibration_sentence(
        {"cnn": 0.52, "vit": 0.5}, {"nll": (-0.02, -0.06, 0.02), "brier": (-0.05, -0.09, -0.01)}, both, ece
    )
    assert winner == "undecided" and "[-6.000, +2.000] holds zero" not in sentence
    assert "95% interval [-0.060, +0.020] holds zero; probe - CNN Brier" in sentence
    assert "Brier favours the probe, but the rule rests on NLL" in sentence
    # ECE lower for the CNN does not make it the better: NLL decides.
    assert (
        verdict.calibration_sentence(
            {"cnn": 0.5, "vit": 0.9}, {"nll": (0.4, 0.3, 0.5), "brier": (0.1, 0.05, 0.15)}, both, ece
        )[0]
        == "cnn"
    )
    winner, sentence = verdict.calibration_sentence(
        {"cnn": 0.5, "vit": 0.9}, {"nll": (0.4, 0.3, 0.5), "brier": (-0.1, -0.15, -0.05)}, both, ece
    )
    assert winner == "undecided" and "the proper scores disagree" in sentence


def robustness(images: int, clean: dict, per: dict, overall: tuple | None) -> dict:
    """robustness_by_corruption's shape: per corruption (accuracy, skill lost, ahead, lost_difference)."""
    corruptions = {
        c: {"accuracy": a, "skill_lost": {"cnn": 0.3, "vit": 0.2}, "ahead": ahead, "lost_difference": lost}
        for c, (a, ahead, lost) in per.items()
    }
    corruptions["all"] = {
        "accuracy": {"cnn": 0.5, "vit": 0.7},
        "skill_lost": {"cnn": 0.3, "vit": 0.2},
        "ahead": (0.2, 0.15, 0.25),
        "lost_difference": overall,
    }
    return {"images": images, "clean": clean, "corruptions": corruptions}


def test_robustness_is_read_per_corruption_and_names_where_each_model_is_ahead():
    per = {
        "gaussian_noise": ({"cnn": 0.46, "vit": 0.30}, (-0.16, -0.2, -0.12), (0.2, 0.15, 0.25)),
        "contrast": ({"cnn": 0.17, "vit": 0.80}, (0.63, 0.58, 0.68), (-0.7, -0.75, -0.65)),
    }
    winner, sentence = verdict.robustness_sentence(
        robustness(600, {"cnn": 0.9, "vit": 0.95}, per, (-0.1, -0.15, -0.05)), 6
    )
    assert winner == "vit" and "over all corruptions together, the probe holds up better" in sentence
    assert (
        "the CNN is ahead under gaussian noise; the CNN is the steadier (the smaller share of its skill lost) "
        "under gaussian noise; the probe is ahead under contrast; the probe is the steadier" in sentence
    )
    assert "600 test images" in sentence and "lost over all 2 corruptions:" in sentence
    # On 37 classes a CNN at 40% clean (far under half the way from chance) still gets a reading: skill above chance.
    assert (
        verdict.robustness_sentence(robustness(370, {"cnn": 0.4, "vit": 0.85}, per, (-0.1, -0.15, -0.05)), PETS)[0]
        == "vit"
    )
    # The overall interval holding zero: no winner, the per-corruption readings still said.
    winner, sentence = verdict.robustness_sentence(
        robustness(600, {"cnn": 0.9, "vit": 0.95}, per, (-0.01, -0.05, 0.03)), 6
    )
    assert winner == "undecided" and "do not separate" in sentence and "ahead under contrast" in sentence


def test_robustness_gets_no_claim_at_chance_or_on_too_few_images():
    per = {"jpeg": ({"cnn": 0.05, "vit": 0.8}, (0.7, 0.6, 0.8), None)}
    winner, sentence = verdict.robustness_sentence(robustness(370, {"cnn": 0.05, "vit": 0.9}, per, None), PETS)
    assert winner == "no claim" and "the CNN classifies clean images under 12.4% right" in sentence
    winner, sentence = verdict.robustness_sentence(robustness(12, {"cnn": 0.9, "vit": 0.9}, per, (-0.1, -0.2, 0.0)), 6)
    assert winner == "no claim" and "12 test images are too few for an interval (at least 200" in sentence


def test_the_summary_names_each_sense_and_what_does_not_separate():
    assert verdict.generalisation_summary(
        {"train - test": "undecided", "calibration": "vit", "robustness to corrupted images": "vit"}
    ) == (
        "Who generalises better: the probe generalises better in calibration and robustness to corrupted images; "
        "train - test does not separate them."
    )
    assert verdict.generalisation_summary({"train - test": "cnn", "calibration": "vit", "robustness": "no claim"}) == (
        "Who generalises better: the probe generalises better in calibration; the CNN generalises better in "
        "train - test; robustness does not separate them."
    )
    assert verdict.generalisation_summary({"a": "undecided", "b": "no claim"}).startswith(
        "Who generalises better: the data does not separate the models in a, b"
    )


def curve(*f1s, gflops_per_epoch=10.0, setup=0.0):
    return [(e, setup + e * gflops_per_epoch, f) for e, f in enumerate(f1s, start=1)]


def lbfgs(f1, gflops):
    return [(None, gflops, f1)]


def test_compute_to_a_fixed_target_not_the_weaker_models_best():
    # 37 classes: the target is half the way from 2.7% to 100%, 51.4%, whatever the curves.
    t = verdict.compute_to_target({"cnn": curve(0.2, 0.4, 0.6, 0.55), "vit": curve(0.5, 0.7, 0.9)}, PETS)
    assert t["target"] == pytest.approx(verdict.level_at(0.5, PETS)) and t["best"] == {"cnn": 0.6, "vit": 0.9}
    assert t["reached"] == {"cnn": {"epoch": 3, "gflops": 30.0}, "vit": {"epoch": 2, "gflops": 20.0}}
    probe = verdict.compute_to_target({"cnn": curve(0.2, 0.4), "vit": lbfgs(0.8, 55.0)}, PETS)
    assert probe["reached"] == {"cnn": None, "vit": {"epoch": None, "gflops": 55.0}}
    assert verdict.first_reaching(curve(0.2, 0.4), 0.5) is None


def test_a_val_curve_that_touches_the_target_by_chance_does_not_reach_it():
    # Touching it and falling back before the kept epoch: it counts from where it stays, up to the kept weights.
    assert verdict.first_reaching(curve(0.3, 0.55, 0.45, 0.6, 0.58), 0.514) == {"epoch": 4, "gflops": 40.0}
    # A dip after the kept epoch (the best) does not matter: the kept weights are those of epoch 3.
    assert verdict.first_reaching(curve(0.3, 0.55, 0.7, 0.4), 0.514) == {"epoch": 2, "gflops": 20.0}
    # Val over the target but test under it: no compute, and the sentence says why.
    t = verdict.compute_to_target(
        {"cnn": curve(0.3, 0.55, 0.6), "vit": lbfgs(0.8, 55.0)}, PETS, {"cnn": 0.45, "vit": 0.8}
    )
    assert t["reached"]["cnn"] is None and t["reached"]["vit"] == {"epoch": None, "gflops": 55.0}
    sentence = verdict.speed_sentence(t, PETS)
    assert "the CNN's val macro-F1 reaches 60.0%, but its test macro-F1, 45.0%, is under the target" in sentence


def test_a_model_that_never_reaches_the_target_gets_no_compute():
    # A CNN near chance against the L-BFGS probe: its own best comes at once, and says nothing.
    t = verdict.compute_to_target({"cnn": curve(0.02, 0.03), "vit": lbfgs(0.80, 900.0)}, PETS)
    sentence = verdict.speed_sentence(t, PETS)
    assert sentence.startswith("Only the probe reaches the common target (val macro-F1 51.4%")
    assert "times less" not in sentence and "the CNN's best val macro-F1 is 3.0%" in sentence
    two = verdict.compute_to_target({"cnn": curve(0.48, 0.50), "vit": lbfgs(0.52, 40.0)}, TWO)
    assert verdict.speed_sentence(two, TWO).startswith("No speed comparison: neither model reaches")


def test_compute_to_target_turns_with_the_numbers():
    probe_less = verdict.speed_sentence(
        verdict.compute_to_target({"cnn": curve(0.3, 0.5, 0.6, gflops_per_epoch=100.0), "vit": lbfgs(0.8, 30.0)}, PETS),
        PETS,
    )
    assert "the CNN reaches it at epoch 3 (300.0 GFLOPs)" in probe_less
    assert "the probe after its whole fit (30.0 GFLOPs)" in probe_less
    assert "the probe gets there with 10.0 times less compute" in probe_less
    cnn_less = verdict.speed_sentence(
        verdict.compute_to_target(
            {"cnn": curve(0.3, 0.5, 0.6, gflops_per_epoch=10.0), "vit": lbfgs(0.8, 1500.0)}, PETS
        ),
        PETS,
    )
    assert "the CNN gets there with 50.0 times less compute" in cnn_less and "1.5 TFLOPs" in cnn_less
    alike = verdict.speed_sentence(
        verdict.compute_to_target({"cnn": curve(0.3, 0.6, gflops_per_epoch=10.0), "vit": lbfgs(0.8, 22.0)}, PETS), PETS
    )
    assert "about the same compute" in alike and "times less" not in alike


def test_few_training_images_per_class_are_warned_about():
    warning = verdict.few_images_warning(4, 5)
    assert "4 to 5 images per class, fewer than 100" in warning
    assert "5 images per class" in verdict.few_images_warning(5, 5)
    assert verdict.few_images_warning(100, 120) is None
