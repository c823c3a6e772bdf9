"""The pictures: class counts, sample grids, confusion matrices, the profile comparison."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

# Every user string (class names, model names) is drawn with these Text properties: literally, as given.
# '$' would otherwise start mathtext (a class named "a$b" fails to draw), and a matplotlibrc with
# text.usetex would hand it to LaTeX.
LITERAL = {"parse_math": False, "usetex": False}


def class_counts_figure(counts: dict[str, dict[str, int]], class_names: list[str]):
    splits = list(counts)
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
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.4, rows * 2.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (path, label) in zip(axes.flat, items):
        with Image.open(path) as image:
            ax.imshow(image.convert("RGB"))
        ax.set_title(class_names[label], fontsize=8, **LITERAL)
    fig.suptitle(title, **LITERAL)
    return fig


def confusion_figure(matrix: np.ndarray, class_names: list[str], title: str, normalized: bool):
    n = len(class_names)
    values = matrix.astype(float)
    if normalized:
        values = values / np.maximum(values.sum(1, keepdims=True), 1)
    size = max(6, 0.28 * n + 3)
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
                    ax.text(j, i, text.lstrip("0") if normalized else text, ha="center", va="center",
                            fontsize=5 if normalized else 6, color=color)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig


def profile_comparison_figure(models: dict[str, dict]):
    """Side-by-side bars of the profile metrics that matter when choosing between the models."""
    panels = [("step_ms_mean", "train step (ms, mean)"), ("throughput_images_per_s", "throughput (images/s)"),
              ("peak_memory_mb", "peak memory (MB)"), ("gflops_per_image", "forward GFLOPs / image"),
              ("trainable_parameters", "trainable parameters")]
    names = list(models)
    # Three panels a row: narrow enough for `dvc plots show`'s page (about 1,000 px at the default 110 dpi).
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (key, label) in zip(axes.flat, panels):
        values = [models[m].get(key, 0) or 0 for m in names]
        bars = ax.bar(range(len(names)), values, color=["#4c72b0", "#dd8452", "#55a868"][: len(names)])
        ax.set_xticks(range(len(names)), names, **LITERAL)
        ax.set_title(label, fontsize=9)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values], fontsize=8)
        ax.margins(y=0.12)  # room for the labels above the tallest bar
        if key == "trainable_parameters":
            ax.set_yscale("log")
    fig.suptitle("Training cost per model (profile stage)")
    fig.tight_layout()
    return fig
