"""Figures: every user string is drawn literally; legends beside the bars, widths that fit `dvc plots show`,
titles that say what ran."""

import io

import matplotlib
import numpy as np
import pytest
from PIL import Image

from petlab import plots
from petlab.evaluation import confusion_labels

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
    "profile": lambda tmp: plots.profile_comparison_figure({name: {"step_ms_mean": 1.0, "trainable_parameters": 10}
                                                            for name in NAMES[:3]}),
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

PROFILE = {"step_ms_mean": 400.0, "throughput_images_per_s": 80.0, "peak_rss_rise_mb": 2000.0, "gflops_per_image": 1.2,
           "trainable_parameters": 100000}


def test_class_counts_legend_does_not_cover_the_bars():
    names = [f"class {i}" for i in range(37)]
    fig = plots.class_counts_figure({"train": {n: 80 for n in names}, "val": {n: 20 for n in names},
                                     "test": {n: 99 for n in names}}, names)
    fig.canvas.draw()
    (ax,) = fig.axes
    assert ax.get_legend().get_window_extent().y0 >= ax.get_window_extent().y1  # above the plotting area


def test_profile_comparison_fits_dvc_plots_page():
    fig = plots.profile_comparison_figure({"cnn": PROFILE, "vit": PROFILE}, ("peak_rss_rise_mb", "peak RSS rise (MB)"))
    assert fig.get_size_inches()[0] * 110 <= 1000  # pixels at save_figure's dpi
    assert "peak RSS rise (MB)" in [ax.get_title() for ax in fig.axes]


def test_confusion_labels_sort_as_text_in_label_order():
    names = ["Yorkshire", "Abyssinian"] + [f"c{i}" for i in range(9)]
    labels = confusion_labels(names)
    assert labels[:2] == ["00 Yorkshire", "01 Abyssinian"] and sorted(labels) == labels


def test_figure_titles_name_the_probe_model_and_random_or_stand_in_weights():
    from stages.evaluate import title

    probe = {"kind": "timm_probe", "timm_model": "resnet18", "info": {"pretrained": False}}
    assert title({"model_config": probe}) == "Linear probe on frozen resnet18, random weights"
    probe["info"]["pretrained"] = True
    assert title({"model_config": probe}) == "Linear probe on frozen resnet18"
    probe["info"]["weights_source"] = "file /weights/resnet18.safetensors"
    assert title({"model_config": probe}) == "Linear probe on frozen resnet18"
    probe.update(timm_model="tf_efficientnet_lite0", info={"pretrained": True, "weights_source": (
        "EfficientNet-Lite0 ImageNet weights, a stand-in for ViT-Tiny (file /weights/lite0.safetensors)")})
    assert title({"model_config": probe}) == ("Linear probe on frozen tf_efficientnet_lite0, EfficientNet-Lite0 "
                                              "ImageNet weights, a stand-in for ViT-Tiny")
    assert "CNN" in title({"model_config": {"kind": "simple_cnn"}})


def test_curves_figure_draws_a_model_without_epochs_as_its_kept_levels():
    import pandas as pd

    history = pd.DataFrame({"epoch": [1, 2, 3], "val_macro_f1": [0.2, 0.5, 0.6], "train_loss": [2.0, 1.0, 0.5],
                            "val_loss": [2.1, 1.4, 1.2]})
    fig = plots.curves_figure({"CNN": history}, "epoch", "epoch",
                              {"Probe": {"val_macro_f1": 0.7, "val_loss": 0.9, "note": "L-BFGS, C = 100"}})
    f1_ax, loss_ax = fig.axes
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert lines["Probe (L-BFGS, C = 100)"].get_ydata() == [0.7, 0.7]
    assert lines["Probe val (L-BFGS, C = 100)"].get_ydata() == [0.9, 0.9]
    assert lines["Probe (L-BFGS, C = 100)"] in f1_ax.get_lines() and lines["CNN"] in f1_ax.get_lines()
    assert lines["Probe val (L-BFGS, C = 100)"] in loss_ax.get_lines()
    assert lines["Probe (L-BFGS, C = 100)"].get_color() == plots.MODEL_COLORS["Probe"] != lines["CNN"].get_color()
    labels = [t.get_text() for t in f1_ax.get_legend().get_texts()]
    assert labels == ["CNN", "Probe (L-BFGS, C = 100)"]
    matplotlib.pyplot.close(fig)
