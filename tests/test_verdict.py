"""The conclusion rules on crafted numbers: the cases where a gap or a speed-up said the wrong thing, and each
sentence turning over when its numbers turn over."""

import pytest

from petlab import verdict

PETS, TWO = 37, 2


def test_levels_are_set_from_chance_for_any_number_of_classes():
    assert verdict.chance(PETS) == pytest.approx(1 / 37)
    assert verdict.level_at(0.5, TWO) == pytest.approx(0.75)  # half the way from 50% to 100%
    assert verdict.level_at(0.5, PETS) == pytest.approx(1 / 37 + 0.5 * 36 / 37)
    assert verdict.level_at(0.0, 10) == pytest.approx(0.1) and verdict.level_at(1.0, 10) == pytest.approx(1.0)


@pytest.mark.parametrize("train, val, classes, expected", [
    (0.19, 0.089, PETS, verdict.UNDERFITS),  # a CNN that barely learned: a small gap, but not a fitted model
    (1.00, 0.82, PETS, verdict.OVERFITS),  # 18 points above val
    (0.95, 0.88, PETS, verdict.FITS),
    (0.52, 0.50, PETS, verdict.FITS),  # just past half the way from 2.7% to 100%
    (0.70, 0.69, TWO, verdict.UNDERFITS),  # 70% of two classes is under half the way from chance
    (0.80, 0.75, TWO, verdict.FITS),
    (0.99, 0.80, TWO, verdict.OVERFITS),
])
def test_regime(train, val, classes, expected):
    assert verdict.regime(train, val, classes) == expected


def test_regime_sentences_give_their_numbers():
    under = verdict.regime_sentence("CNN", 0.19, 0.089, PETS)
    assert under.startswith("The CNN underfits") and "19.0%" in under and "51.4%" in under and "2.7%" in under
    over = verdict.regime_sentence("probe", 1.0, 0.82, PETS)
    assert over.startswith("The probe overfits") and "+18.0 points" in over and "over the 15" in over
    fits = verdict.regime_sentence("probe", 0.95, 0.88, PETS)
    assert fits.startswith("The probe fits its training data") and "within the 15" in fits


def test_an_underfitting_cnn_with_a_small_gap_is_not_said_to_generalise_better():
    # The real run: the CNN at 19% on its training images (8.9% test), the probe at 100% (82% test).
    winner, sentence = verdict.generalisation_sentence({"cnn": (0.19, 0.089), "vit": (1.0, 0.82)}, PETS, (0.70, 0.76))
    assert winner == "no claim" and "better" not in sentence and "alike" not in sentence
    assert sentence.startswith("Train - test: no comparison, as the CNN underfits") and "how little it learned" in sentence
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
    # Two classes: 70% train accuracy is not fitted there (half the way from 50% is 75%).
    assert verdict.generalisation_sentence({"cnn": (0.70, 0.68), "vit": (1.0, 0.82)}, TWO, (0.1, 0.2))[0] == "no claim"
    assert verdict.generalisation_sentence({"cnn": (0.90, 0.84), "vit": (1.0, 0.82)}, TWO, (-0.04, 0.0))[0] == "cnn"


def test_a_model_that_learned_nothing_is_calibrated_and_gets_no_calibration_claim():
    """A constant predictor's confidence matches its accuracy (ECE about 0): a lower ECE than a trained model's,
    and useless."""
    winner, sentence = verdict.calibration_sentence({"cnn": 0.01, "vit": 0.05}, (0.04, 0.02, 0.06),
                                                    {"cnn": False, "vit": True}, {"cnn": 0.01, "vit": 0.02})
    assert winner == "no claim" and sentence.startswith("Calibration: no comparison, as the CNN never learned")
    winner, sentence = verdict.calibration_sentence({"cnn": 0.20, "vit": 0.05}, (-0.15, -0.19, -0.11),
                                                    {"cnn": True, "vit": True}, {"cnn": 0.03, "vit": 0.02})
    assert winner == "vit" and "the probe's confidence means more" in sentence and "(3.0 after temperature" in sentence
    winner, sentence = verdict.calibration_sentence({"cnn": 0.06, "vit": 0.05}, (-0.01, -0.05, 0.03),
                                                    {"cnn": True, "vit": True}, {"cnn": 0.03, "vit": 0.02})
    assert winner == "undecided" and "do not separate" in sentence
    assert verdict.calibration_sentence({"cnn": 0.05, "vit": 0.20}, (0.15, 0.11, 0.19), {"cnn": True, "vit": True},
                                        {"cnn": 0.03, "vit": 0.02})[0] == "cnn"


def test_a_model_near_chance_gets_no_robustness_claim():
    """A model at chance loses nothing under corruption: its relative drop is small because it had nothing."""
    winner, sentence = verdict.robustness_sentence({"cnn": 0.02, "vit": 0.30}, (0.28, 0.20, 0.36),
                                                   {"cnn": 0.05, "vit": 0.90}, PETS, 185)
    assert winner == "no claim" and "the CNN classifies clean images under 51.4% right" in sentence
    winner, sentence = verdict.robustness_sentence({"cnn": 0.40, "vit": 0.15}, (-0.25, -0.33, -0.17),
                                                   {"cnn": 0.80, "vit": 0.90}, PETS, 185)
    assert winner == "vit" and "the probe holds up better" in sentence and "185 test images" in sentence
    # The same difference on a tiny split, whose interval holds zero.
    assert verdict.robustness_sentence({"cnn": 0.40, "vit": 0.15}, (-0.25, -0.60, 0.10), {"cnn": 0.8, "vit": 0.9},
                                       PETS, 8)[0] == "undecided"
    # Two classes: 70% clean is under half the way from chance.
    assert verdict.robustness_sentence({"cnn": 0.1, "vit": 0.3}, (0.2, 0.1, 0.3), {"cnn": 0.7, "vit": 0.95}, TWO,
                                       40)[0] == "no claim"


def test_the_summary_names_each_sense_and_what_does_not_separate():
    assert verdict.generalisation_summary({"train - test": "undecided", "calibration": "vit",
                                           "robustness to corrupted images": "vit"}) == (
        "Who generalises better: the probe generalises better in calibration and robustness to corrupted images; "
        "train - test does not separate them.")
    assert verdict.generalisation_summary({"train - test": "cnn", "calibration": "vit", "robustness": "no claim"}) == (
        "Who generalises better: the probe generalises better in calibration; the CNN generalises better in "
        "train - test; robustness does not separate them.")
    assert verdict.generalisation_summary({"a": "undecided", "b": "no claim"}).startswith(
        "Who generalises better: the data does not separate the models in a, b")


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


def test_a_model_that_never_reaches_the_target_gets_no_compute():
    # A CNN near chance against the L-BFGS probe: its own best comes at once, and says nothing.
    t = verdict.compute_to_target({"cnn": curve(0.02, 0.03), "vit": lbfgs(0.80, 900.0)}, PETS)
    sentence = verdict.speed_sentence(t, PETS)
    assert sentence.startswith("Only the probe reaches the common target (val macro-F1 51.4%")
    assert "times less" not in sentence and "the CNN's best val macro-F1 is 3.0%" in sentence
    two = verdict.compute_to_target({"cnn": curve(0.48, 0.50), "vit": lbfgs(0.52, 40.0)}, TWO)
    assert verdict.speed_sentence(two, TWO).startswith("No speed comparison: neither model reaches")


def test_compute_to_target_turns_with_the_numbers():
    probe_less = verdict.speed_sentence(verdict.compute_to_target(
        {"cnn": curve(0.3, 0.5, 0.6, gflops_per_epoch=100.0), "vit": lbfgs(0.8, 30.0)}, PETS), PETS)
    assert "the CNN reaches it at epoch 3 (300.0 GFLOPs)" in probe_less
    assert "the probe after its whole fit (30.0 GFLOPs)" in probe_less
    assert "the probe gets there with 10.0 times less compute" in probe_less
    cnn_less = verdict.speed_sentence(verdict.compute_to_target(
        {"cnn": curve(0.3, 0.5, 0.6, gflops_per_epoch=10.0), "vit": lbfgs(0.8, 1500.0)}, PETS), PETS)
    assert "the CNN gets there with 50.0 times less compute" in cnn_less and "1.5 TFLOPs" in cnn_less
    alike = verdict.speed_sentence(verdict.compute_to_target(
        {"cnn": curve(0.3, 0.6, gflops_per_epoch=10.0), "vit": lbfgs(0.8, 22.0)}, PETS), PETS)
    assert "about the same compute" in alike and "times less" not in alike


def test_few_training_images_per_class_are_warned_about():
    warning = verdict.few_images_warning(4, 5)
    assert "4 to 5 images per class, fewer than 100" in warning
    assert "5 images per class" in verdict.few_images_warning(5, 5)
    assert verdict.few_images_warning(100, 120) is None
