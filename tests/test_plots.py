"""Figures: every user string is drawn literally; legends beside the bars, widths that fit `dvc plots show`,
titles that say what ran."""

import io

import matplotlib
import numpy as np
import pytest
from PIL import Image

from petlab.figures import plots
from petlab.measure.evaluation import confusion_labels

# Each would be parsed as mathtext (or fail to parse) if drawn as markup.
NAMES = ["$x^2$", "a$b", "$\\frac{$", "price $5 & $6", "50%_{sub}", "\\alpha$", "$$", "plain"]


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text)]


def sample_grid(tmp_path):
    items = []
    for i in range(len(NAMES)):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(path)
        items.append((path, i))
    return plots.sample_grid_figure(items, NAMES, "train samples")


FIGURES = {
    "class_counts": lambda tmp: plots.class_counts_figure({s: {n: 3 for n in NAMES} for s in ("train", "val")}, NAMES),
    "sample_grid": sample_grid,
    "confusion_counts": lambda tmp: plots.confusion_figure(np.eye(len(NAMES), dtype=int) * 3, NAMES, "a$b", False),
    "confusion_normalized": lambda tmp: plots.confusion_figure(np.ones((len(NAMES),) * 2), NAMES, "a$b", True),
    "profile": lambda tmp: plots.profile_comparison_figure(
        {name: {"step_ms_mean": 1.0, "trainable_parameters": 10} for name in NAMES[:3]}
    ),
}


# text.usetex in a user's matplotlibrc would hand names to LaTeX: they must not go there either. (The profile
# figure lays itself out when made, which under usetex needs a LaTeX install for its own numbers.)
CASES = [(kind, usetex) for kind in FIGURES for usetex in (False, True) if not (usetex and kind == "profile")]


@pytest.mark.parametrize("kind, usetex", CASES, ids=[f"{k}-{'usetex_rc' if u else 'default_rc'}" for k, u in CASES])
def test_user_strings_are_drawn_literally(tmp_path, kind, usetex):
    with matplotlib.rc_context({"text.usetex": usetex}):
        fig = FIGURES[kind](tmp_path)
        drawn = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text() in NAMES or t.get_text() == "a$b"]
        if not usetex:
            fig.savefig(io.BytesIO(), format="png")  # mathtext would raise a parse error here
    expected = NAMES[:3] if kind == "profile" else NAMES
    assert set(expected) <= set(texts(fig))
    assert drawn and all(not t.get_usetex() and not t._parse_math for t in drawn)
    matplotlib.pyplot.close(fig)


PROFILE = {
    "step_ms_mean": 400.0,
    "throughput_images_per_s": 80.0,
    "peak_rss_rise_mb": 2000.0,
    "gflops_per_image": 1.2,
    "trainable_parameters": 100000,
}


def test_class_counts_legend_does_not_cover_the_bars():
    names = [f"class {i}" for i in range(37)]
    fig = plots.class_counts_figure(
        {"train": {n: 80 for n in names}, "val": {n: 20 for n in names}, "test": {n: 99 for n in names}}, names
    )
    fig.canvas.draw()
    (ax,) = fig.axes
    assert ax.get_legend().get_window_extent().y0 >= ax.get_window_extent().y1  # above the plotting area


def test_profile_comparison_fits_dvc_plots_page():
    fig = plots.profile_comparison_figure(
        {"cnn": PROFILE, "vit": PROFILE}, memory_panel=("peak_rss_rise_mb", "peak RSS rise (MB)")
    )
    assert fig.get_size_inches()[0] * 110 <= 1000  # pixels at save_figure's dpi
    assert "peak RSS rise (MB)" in [ax.get_title() for ax in fig.axes]


def test_confusion_labels_sort_as_text_in_label_order():
    names = ["Yorkshire", "Abyssinian"] + [f"c{i}" for i in range(9)]
    labels = confusion_labels(names)
    assert labels[:2] == ["00 Yorkshire", "01 Abyssinian"] and sorted(labels) == labels


def test_models_are_named_for_what_they_are_with_random_or_stand_in_weights():
    def label(config):
        return plots.model_label(config)

    probe = {"kind": "timm_probe", "timm_model": "resnet18", "head": "linear", "info": {"pretrained": False}}
    assert label(probe) == "Linear probe on resnet18, random weights"
    probe["info"]["pretrained"] = True
    assert label(probe) == "Linear probe on resnet18"
    probe["info"]["weights_source"] = "file /weights/resnet18.safetensors"
    assert label(probe) == "Linear probe on resnet18"
    lite0 = {
        **probe,
        "timm_model": "tf_efficientnet_lite0",
        "info": {
            "pretrained": True,
            "weights_source": (
                "EfficientNet-Lite0 ImageNet weights, a stand-in for ViT-Tiny (file /weights/lite0.safetensors)"
            ),
        },
    }
    assert label(lite0) == (
        "Linear probe on tf_efficientnet_lite0, EfficientNet-Lite0 ImageNet weights, a stand-in for ViT-Tiny"
    )
    assert plots.model_label({**probe, "head": "mlp", "unfreeze": ["blocks.11"]}) == (
        "MLP probe on resnet18, partly fine-tuned"
    )
    assert plots.model_label({"kind": "simple_cnn"}) == "CNN from scratch (simple_cnn)"


def test_profile_comparison_names_the_models_and_keeps_every_axis_linear_from_zero():
    # 47k against 98k trainable parameters: on a log axis from 4.5e4 that looked like a tenfold gap.
    labels = {"cnn": "CNN from scratch (simple_cnn)", "vit": "Linear probe on tf_efficientnet_lite0"}
    fig = plots.profile_comparison_figure(
        {"cnn": {**PROFILE, "trainable_parameters": 98_000}, "vit": {**PROFILE, "trainable_parameters": 47_000}}, labels
    )
    drawn = texts(fig)
    assert "vit" not in drawn and "cnn" not in drawn
    assert "Linear probe on\ntf_efficientnet_lite0" in drawn and "98,000" in drawn and "47,000" in drawn
    for ax in fig.axes:
        if ax.get_title():
            assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0, ax.get_title()
    parameters = next(ax for ax in fig.axes if ax.get_title() == "trainable parameters")
    heights = [bar.get_height() for bar in parameters.patches]
    assert heights == [98_000, 47_000] and parameters.get_ylim()[1] < 2 * 98_000  # bars in proportion
    matplotlib.pyplot.close(fig)


def test_curves_figure_draws_a_model_without_epochs_as_its_kept_levels():
    import pandas as pd

    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "val_macro_f1": [0.2, 0.5, 0.6],
            "train_loss": [2.0, 1.0, 0.5],
            "val_loss": [2.1, 1.4, 1.2],
        }
    )
    labels = {"cnn": "CNN from scratch", "vit": "Linear probe on tf_efficientnet_lite0"}
    fig = plots.curves_figure(
        {"cnn": history},
        "epoch",
        "epoch",
        labels,
        {"vit": {"val_macro_f1": 0.7, "val_loss": 0.9, "note": "L-BFGS, C = 100"}},
    )
    f1_ax, loss_ax = fig.axes
    probe = "Linear probe on tf_efficientnet_lite0"
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert lines[f"{probe} (L-BFGS, C = 100)"].get_ydata() == [0.7, 0.7]
    assert lines[f"{probe}, val (L-BFGS, C = 100)"].get_ydata() == [0.9, 0.9]
    assert lines[f"{probe} (L-BFGS, C = 100)"] in f1_ax.get_lines() and lines["CNN from scratch"] in f1_ax.get_lines()
    assert lines[f"{probe}, val (L-BFGS, C = 100)"] in loss_ax.get_lines()
    assert (
        lines[f"{probe} (L-BFGS, C = 100)"].get_color()
        == plots.MODEL_COLORS["vit"]
        != (lines["CNN from scratch"].get_color())
    )
    legend = [t.get_text() for t in f1_ax.get_legend().get_texts()]
    assert legend == ["CNN from scratch", f"{probe} (L-BFGS, C = 100)"]
    matplotlib.pyplot.close(fig)
    # Against wall time the probe has its level only from the end of its whole fit: one point there.
    history["elapsed_seconds"] = [10.0, 20.0, 30.0]
    fig = plots.curves_figure(
        {"cnn": history},
        "elapsed_seconds",
        "s",
        labels,
        {"vit": {"val_macro_f1": 0.7, "val_loss": 0.9, "note": "L-BFGS, C = 100", "elapsed_seconds": 45.0}},
    )
    point = next(line for line in fig.axes[0].get_lines() if line.get_label().startswith(probe))
    assert list(point.get_xdata()) == [45.0] and list(point.get_ydata()) == [0.7]
    assert point.get_label().endswith("after its whole fit")
    matplotlib.pyplot.close(fig)
