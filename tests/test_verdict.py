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
    # The real run: the CNN at 19% on its training images (8.9% val), the probe at 100% (82% val).
    sentence = verdict.generalisation_sentence({"cnn": (0.19, 0.089), "vit": (1.0, 0.82)}, PETS)
    assert "better" not in sentence and "less well" not in sentence and "alike" not in sentence
    assert sentence.startswith("No comparison of generalisation: the CNN underfits")
    assert "how little it learned" in sentence and "(+10.1 points, against +18.0 points for the probe)" in sentence
    neither = verdict.generalisation_sentence({"cnn": (0.1, 0.09), "vit": (0.2, 0.1)}, PETS)
    assert neither.startswith("No comparison of generalisation: neither model fits")


def test_generalisation_is_compared_when_both_fit_and_turns_with_the_gaps():
    probe_wider = verdict.generalisation_sentence({"cnn": (0.90, 0.84), "vit": (1.0, 0.82)}, PETS)
    assert probe_wider.startswith("The CNN generalises better than the probe")
    assert "the probe's train - val accuracy gap is the larger" in probe_wider
    cnn_wider = verdict.generalisation_sentence({"cnn": (1.0, 0.82), "vit": (0.90, 0.84)}, PETS)
    assert cnn_wider.startswith("The probe generalises better than the CNN")
    alike = verdict.generalisation_sentence({"cnn": (0.90, 0.84), "vit": (0.92, 0.84)}, PETS)
    assert alike.startswith("Both models fit their training data and generalise about alike")
    # The same numbers with 2 classes: the CNN's 90% is fitted there too.
    assert verdict.generalisation_sentence({"cnn": (0.90, 0.84), "vit": (1.0, 0.82)}, TWO).startswith(
        "The CNN generalises better")
    # And 70% is not: the comparison disappears.
    assert verdict.generalisation_sentence({"cnn": (0.70, 0.68), "vit": (1.0, 0.82)}, TWO).startswith(
        "No comparison of generalisation: the CNN underfits")


def curve(*f1s, seconds_per_epoch=10.0, setup=0.0):
    return [(e, setup + e * seconds_per_epoch, f) for e, f in enumerate(f1s, start=1)]


def lbfgs(f1, seconds):
    return [(None, seconds, f1)]


def test_time_to_target_uses_the_weaker_models_best():
    t = verdict.time_to_target({"cnn": curve(0.2, 0.4, 0.6, 0.55), "vit": curve(0.5, 0.7, 0.9)}, PETS)
    assert t["target"] == 0.6 and t["target_of"] == "cnn" and t["best"] == {"cnn": 0.6, "vit": 0.9}
    assert t["reached"] == {"cnn": {"epoch": 3, "seconds": 30.0}, "vit": {"epoch": 2, "seconds": 20.0}}
    assert t["reaches_other_best"] == {"cnn": False, "vit": True}
    assert t["learned"] == {"cnn": True, "vit": True}
    probe = verdict.time_to_target({"cnn": curve(0.2, 0.4), "vit": lbfgs(0.8, 55.0)}, PETS)
    assert probe["reached"]["vit"] == {"epoch": None, "seconds": 55.0}  # its whole fit, whatever the level
    assert verdict.first_reaching(curve(0.2, 0.4), 0.5) is None


def test_a_model_that_never_learns_gets_no_speed_claim():
    # A 2-epoch CNN near chance against the L-BFGS probe: its own best comes at once, but says nothing.
    t = verdict.time_to_target({"cnn": curve(0.02, 0.03, seconds_per_epoch=5.0), "vit": lbfgs(0.80, 90.0)}, PETS)
    assert t["learned"] == {"cnn": False, "vit": True}
    sentence = verdict.speed_sentence(t, PETS)
    assert sentence.startswith("No speed claim: the CNN never learned") and "times faster" not in sentence
    assert "about as fast" not in sentence and "12.4%" in sentence
    assert "The CNN never reaches the probe's best val macro-F1 (80.0%" in sentence
    # Two classes: the CNN at chance, 45 macro-F1 points below the probe.
    two = verdict.time_to_target({"cnn": curve(0.48, 0.50), "vit": lbfgs(0.95, 40.0)}, TWO)
    assert verdict.speed_sentence(two, TWO).startswith("No speed claim: the CNN never learned")
    both = verdict.time_to_target({"cnn": curve(0.48, 0.50), "vit": lbfgs(0.52, 40.0)}, TWO)
    assert "the CNN and the probe never learned" in verdict.speed_sentence(both, TWO)


def test_common_target_speed_turns_with_the_times():
    probe_fast = verdict.speed_sentence(
        verdict.time_to_target({"cnn": curve(0.3, 0.5, 0.6, seconds_per_epoch=100.0), "vit": lbfgs(0.8, 30.0)},
                               PETS), PETS)
    assert "Time to a common target (val macro-F1 60.0%, the CNN's best)" in probe_fast
    assert "the CNN reaches it at epoch 3 (300.0 s)" in probe_fast
    assert "the probe after its whole fit (30.0 s" in probe_fast
    assert "the probe gets there 10.0 times faster in wall time" in probe_fast
    assert "The CNN never reaches the probe's best" in probe_fast
    cnn_fast = verdict.speed_sentence(
        verdict.time_to_target({"cnn": curve(0.3, 0.5, 0.6, seconds_per_epoch=10.0), "vit": lbfgs(0.8, 150.0)},
                               PETS), PETS)
    assert "the CNN gets there 5.0 times faster" in cnn_fast
    alike = verdict.speed_sentence(
        verdict.time_to_target({"cnn": curve(0.3, 0.5, 0.6, seconds_per_epoch=10.0), "vit": lbfgs(0.8, 33.0)},
                               PETS), PETS)
    assert "about as fast in wall time" in alike and "times faster" not in alike


def test_the_target_follows_whichever_model_is_weaker():
    # The probe the weaker one: the target is its best, and the CNN may overtake it late.
    t = verdict.time_to_target({"cnn": curve(0.3, 0.5, 0.7, 0.9), "vit": curve(0.6, 0.7, setup=5.0)}, PETS)
    assert t["target"] == 0.7 and t["target_of"] == "vit"
    assert t["reached"] == {"cnn": {"epoch": 3, "seconds": 30.0}, "vit": {"epoch": 2, "seconds": 25.0}}
    sentence = verdict.speed_sentence(t, PETS)
    assert "the probe's best" in sentence and "about as fast" in sentence  # 30 s against 25 s: under 1.25
    assert "The probe never reaches the CNN's best val macro-F1 (90.0%" in sentence
    equal = verdict.speed_sentence(verdict.time_to_target({"cnn": curve(0.5, 1.0), "vit": lbfgs(1.0, 5.0)}, PETS),
                                   PETS)
    assert "the best of both" in equal and "Both reach the same best val macro-F1 (100.0%)" in equal


def test_few_training_images_per_class_are_warned_about():
    warning = verdict.few_images_warning(4, 5)
    assert "4 to 5 images per class, fewer than 100" in warning
    assert "5 images per class" in verdict.few_images_warning(5, 5)
    assert verdict.few_images_warning(100, 120) is None
