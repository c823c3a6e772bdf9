"""The pictures: class counts, sample grids, confusion matrices, the profile comparison."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.ticker import MaxNLocator
from PIL import Image

from petlab.core.layout import SPLITS
from petlab.core.outputs import save_figure
from petlab.core.records import weights_label

if TYPE_CHECKING:  # for annotations only: the figures take frames, this module never builds one
    import pandas

# Every user string (class names, model names) is drawn with these Text properties: literally, as given.
# '$' would otherwise start mathtext (a class named "a$b" fails to draw), and a matplotlibrc with
# text.usetex would hand it to LaTeX.
LITERAL = {"parse_math": False, "usetex": False}


def pyplot():
    """matplotlib's pyplot on its file-only backend, Agg (no display on servers and in CI), chosen here, when a
    figure is drawn, and not when petlab is imported: importing a module changes no one's matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def class_counts_figure(counts: dict[str, dict[str, int]], class_names: list[str]):
    splits = list(counts)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(class_names) + 2), 4.5))
    x = np.arange(len(class_names))
    width = 0.8 / len(splits)
    for i, split in enumerate(splits):
        ax.bar(x + i * width - 0.4 + width / 2, [counts[split].get(c, 0) for c in class_names], width, label=split)
    ax.set_xticks(x, class_names, rotation=75, ha="right", fontsize=8, **LITERAL)
    ax.set_ylabel("images")
    ax.set_title("Images per class and split", loc="left")
    ax.legend(loc="lower right", bbox_to_anchor=(1, 1), ncols=len(splits), frameon=False)  # above the bars
    return fig


def sample_grid_figure(items: list[tuple[Path, int]], class_names: list[str], title: str, cols: int = 4):
    return image_grid_figure([(path, class_names[label]) for path, label in items], title, cols)


def save_sanity_figures(report: dict, data, grid_images: int, seed: int, out_dir: Path) -> None:
    """The sanity stage's pictures: images per class and split, and a seeded grid of `grid_images` samples of each
    split (`data`: the prepared dataset, petlab.data.dataset.PreparedData)."""
    counts = {split: report["counts"][split]["per_class"] for split in SPLITS}
    save_figure(class_counts_figure(counts, data.class_names), out_dir / "class_counts.png")
    rng = np.random.default_rng(seed)
    for split in SPLITS:
        split_items = data.items(split)
        pick = sorted(rng.choice(len(split_items), size=min(grid_images, len(split_items)), replace=False))
        save_figure(
            sample_grid_figure([split_items[i] for i in pick], data.class_names, f"{split} samples"),
            out_dir / f"samples_{split}.png",
        )


def image_grid_figure(items: list[tuple[Path, str]], title: str, cols: int = 4, inches: float = 2.4):
    """Images with a caption each, `cols` to a row, each about `inches` wide."""
    rows = max(1, (len(items) + cols - 1) // cols)
    height = rows * (inches + 0.3) + 0.6  # room for two-line captions and, above them, the title
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(cols * inches, height), squeeze=False)
    fig.subplots_adjust(top=1 - 0.6 / height, hspace=0.35)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (path, caption) in zip(axes.flat, items):
        with Image.open(path) as image:
            ax.imshow(image.convert("RGB"))
        ax.set_title(caption, fontsize=7 if inches < 2 else 8, **LITERAL)
    fig.suptitle(title, **LITERAL)
    return fig


MODEL_COLORS = {"cnn": "#4c72b0", "vit": "#dd8452"}  # by the models' keys; any other key by its position
PALETTE = ["#4c72b0", "#dd8452", "#55a868"]


def probe_label(backbone: str, head: str = "linear", weights: str = "", unfrozen: bool = False) -> str:
    """The probe named for what it is: its head and its backbone, never the key `vit` (the backbone need not be a
    ViT), and its weights where they are not what the name implies (`weights`: models.weights_label, e.g.
    'random weights' or a stand-in's description)."""
    return (
        f"{'Linear' if head == 'linear' else head.upper()} probe on {backbone}"
        + (", partly fine-tuned" if unfrozen else "")
        + (f", {weights}" if weights else "")
    )


def model_label(config: dict) -> str:
    """What a checkpoint's model is, from its model_config, as figures name it (random or stand-in weights said)."""
    if config["kind"] != "timm_probe":
        return f"CNN from scratch ({config['kind']})"
    return probe_label(
        config["timm_model"],
        config.get("head", "linear"),
        weights_label(config.get("info", {})),
        bool(config.get("unfreeze")),
    )


def color(key: str, position: int) -> str:
    return MODEL_COLORS.get(key, PALETTE[position % len(PALETTE)])


def curves_figure(
    histories: dict[str, pandas.DataFrame],
    x: str,
    xlabel: str,
    labels: dict[str, str],
    levels: dict[str, dict] | None = None,
):
    """Both models' val macro-F1 (left) and train/val loss (right) against `x`, one colour per model.

    Histories and levels are keyed by model ("cnn", "vit"); `labels` names each model in the legends.
    `levels` draws a model without epochs (the probe fitted by L-BFGS) at its kept val macro-F1 and val loss
    ({"val_macro_f1", "val_loss", "note"}), so the figure still compares both models: where the level holds a value
    for `x` (its whole fit's seconds as "elapsed_seconds") as one point there, the time it has that level from;
    else (it has no epochs) as dotted horizontal lines."""
    plt = pyplot()
    fig, (f1_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (key, history) in enumerate(histories.items()):
        c, label = color(key, i), labels[key]
        f1_ax.plot(history[x], history["val_macro_f1"], marker=".", color=c, label=label)
        loss_ax.plot(history[x], history["train_loss"], linestyle="--", color=c, label=f"{label}, train")
        loss_ax.plot(history[x], history["val_loss"], marker=".", color=c, label=f"{label}, val")
    for i, (key, level) in enumerate((levels or {}).items(), start=len(histories)):
        c, label = color(key, i), labels[key]
        for ax, y, text in (
            (f1_ax, "val_macro_f1", f"{label} ({level['note']})"),
            (loss_ax, "val_loss", f"{label}, val ({level['note']})"),
        ):
            if level.get(x) is None:
                ax.axhline(level[y], linestyle=":", color=c, label=text)
            else:
                ax.plot(
                    [level[x]],
                    [level[y]],
                    marker="*",
                    markersize=12,
                    linestyle="none",
                    color=c,
                    label=f"{text}, after its whole fit",
                )
    f1_ax.set_ylabel("val macro-F1")
    loss_ax.set_ylabel("loss")
    for ax in (f1_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=x == "epoch"))
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        # Below the axes: names of a probe's backbone make long entries, which inside would cover the curves.
        # Wrapped to the panel's width: a long entry would otherwise run under the other panel's legend.
        legend = ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
        for text in legend.get_texts():
            text.set(text=textwrap.fill(text.get_text(), 60, break_long_words=False), **LITERAL)
    fig.tight_layout()
    return fig


def per_class_f1_figure(per_class: dict[str, pandas.DataFrame], labels: dict[str, str]):
    """Test F1 of every class for each model (keyed by model, named by `labels`), classes sorted by the models'
    mean F1 (hardest at the top)."""
    f1 = {key: frame.set_index("class")["f1"] for key, frame in per_class.items()}
    order = sorted(
        next(iter(per_class.values()))["class"],
        key=lambda c: (sum(float(scores[c]) for scores in f1.values()), c),
        reverse=True,
    )
    y = np.arange(len(order))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * len(order) + 1.2)))
    for i, (key, scores) in enumerate(f1.items()):
        ax.scatter(scores.loc[order], y, color=color(key, i), label=labels[key], s=18)
    ax.set_yticks(y, order, fontsize=7, **LITERAL)
    ax.set_xlabel("test F1")
    ax.set_xlim(-0.02, 1.02)
    ax.grid(axis="x", alpha=0.3)
    legend = ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(per_class), frameon=False)
    for text in legend.get_texts():
        text.set(**LITERAL)
    fig.tight_layout()
    return fig


def confusion_figure(matrix: np.ndarray, class_names: list[str], title: str, normalized: bool):
    n = len(class_names)
    values = matrix.astype(float)
    if normalized:
        values = values / np.maximum(values.sum(1, keepdims=True), 1)
    size = max(6, 0.28 * n + 3)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalized else None)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=7, **LITERAL)
    ax.set_yticks(range(n), class_names, fontsize=7, **LITERAL)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title, **LITERAL)
    if n <= 40:  # numbers stay legible up to the 37 pet breeds
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    text = f"{values[i, j]:.2f}" if normalized else str(int(matrix[i, j]))
                    color = "white" if values[i, j] > 0.6 * (values.max() or 1) else "black"
                    ax.text(
                        j,
                        i,
                        text.lstrip("0") if normalized else text,
                        ha="center",
                        va="center",
                        fontsize=5 if normalized else 6,
                        color=color,
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig


def save_confusion_figures(matrix: np.ndarray, class_names: list[str], out_dir: Path, name: str, title: str) -> None:
    """The confusion PNGs of one model: counts, and normalised per actual class."""
    save_figure(
        confusion_figure(matrix, class_names, f"{title}: counts", normalized=False), out_dir / f"confusion_{name}.png"
    )
    save_figure(
        confusion_figure(matrix, class_names, f"{title}: normalised per actual class", normalized=True),
        out_dir / f"confusion_{name}_normalized.png",
    )


def profile_comparison_figure(
    models: dict[str, dict], labels: dict[str, str] | None = None, memory_panel: tuple[str, str] | None = None
):
    """Side-by-side bars of the profile metrics that matter when choosing between the models (keyed by model,
    named by `labels`; the keys themselves without). Every axis is linear from zero and every bar carries its
    value: a log axis would make 47k against 98k parameters look like a tenfold gap.

    `memory_panel`: (key, label) of the peak-memory metric the results hold, which depends on the device.
    """
    panels = [
        ("step_ms_mean", "train step (ms, mean)"),
        ("throughput_images_per_s", "throughput (images/s)"),
        *([memory_panel] if memory_panel else []),
        ("gflops_per_image", "forward GFLOPs / image"),
        ("trainable_parameters", "trainable parameters"),
    ]
    keys = list(models)
    # Long names (a probe with its backbone's name) wrap at spaces onto lines a panel's width holds.
    names = [textwrap.fill((labels or {}).get(k, k), 18, break_long_words=False) for k in keys]
    # Three panels a row: narrow enough for `dvc plots show`'s page (about 1,000 px at the default 110 dpi).
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (key, label) in zip(axes.flat, panels):
        values = [models[k].get(key, 0) or 0 for k in keys]
        bars = ax.bar(range(len(keys)), values, color=[color(k, i) for i, k in enumerate(keys)])
        ax.set_xticks(range(len(keys)), names, fontsize=7, **LITERAL)
        ax.set_title(label, fontsize=9)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values], fontsize=8)
        ax.set_ylim(0, (max(values) or 1) * 1.15)  # from zero, with room for the labels above the tallest bar
    fig.suptitle("Training cost per model (profile stage)")
    fig.tight_layout()
    return fig


def reliability_figure(bins: dict[str, list[dict]], labels: dict[str, str], ece: dict[str, float]):
    """Reliability diagram of both models on the test split: each equal-mass bin's accuracy against its mean
    confidence (points sized by the bin's images), the diagonal being perfect calibration."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 6.2))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    for i, (model, rows) in enumerate(bins.items()):
        conf = [r["confidence"] for r in rows]
        acc = [r["accuracy"] for r in rows]
        ax.plot(
            conf,
            acc,
            "o-",
            color=color(model, i),
            markersize=4,
            label="\n".join(textwrap.wrap(f"{labels[model]}: ECE {ece[model] * 100:.1f} points", 70)),
        )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top-class probability), mean of the bin")
    ax.set_ylabel("accuracy of the bin")
    ax.set_title("Reliability on the test split (equal-mass bins)", loc="left", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False, prop={"size": 7})
    ax.grid(alpha=0.3)
    return fig


def robustness_figure(scores: dict, labels: dict[str, str], corruptions: list[str], images: int):
    """Test accuracy against severity, one panel per corruption, both models; severity 0 is the clean image."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(corruptions), figsize=(3.0 * len(corruptions), 3.4), sharey=True, squeeze=False)
    for ax, corruption in zip(axes[0], corruptions):
        for i, model in enumerate(labels):
            acc = [scores[model, "clean", 0]["accuracy"]] + [
                scores[model, corruption, s]["accuracy"] for s in (1, 2, 3)
            ]
            ax.plot([0, 1, 2, 3], acc, "o-", color=color(model, i), label=labels[model])
        ax.set_title(corruption.replace("_", " "), fontsize=9)
        ax.set_xticks([0, 1, 2, 3])
        ax.set_xlabel("severity")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.suptitle(f"Accuracy under corruption ({images} test images; severity 0: clean)", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(handles, names, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    return fig
