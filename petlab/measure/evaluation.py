"""Scoring trained checkpoints: metrics per split, per-class tables, confusion matrices, per-image predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from petlab.core.metrics import classification_metrics, confusion, in_top_k, per_class_rows, reports_top_k, rounded
from petlab.core.outputs import write_csv
from petlab.measure.calibration import per_image_scores


def score(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    return rounded(classification_metrics(logits, labels, num_classes))


def confusion_labels(class_names: list[str]) -> list[str]:
    """Class names led by their zero-padded label ("07 Beagle"): `dvc plots` sorts a confusion matrix's classes
    as text, so this keeps its rows and columns in label order, as in the PNGs."""
    width = len(str(len(class_names) - 1))
    return [f"{i:0{width}d} {name}" for i, name in enumerate(class_names)]


def write_reports(
    name: str, logits: torch.Tensor, labels: torch.Tensor, class_names: list[str], out_dir: Path
) -> np.ndarray:
    """Per-class CSV and the confusion rows for `dvc plots`; returns the confusion matrix (actual x predicted), which
    figures.plots.save_confusion_figures draws."""
    preds, y = logits.argmax(1).numpy(), labels.numpy()
    write_csv(
        out_dir / f"per_class_{name}.csv",
        per_class_rows(y, preds, class_names),
        ["class", "precision", "recall", "f1", "support"],
    )
    labels = confusion_labels(class_names)
    write_csv(
        out_dir / f"confusion_{name}.csv",
        ({"actual": labels[a], "predicted": labels[p]} for a, p in zip(y, preds)),
        ["actual", "predicted"],
    )
    return confusion(y, preds, len(class_names))


def write_predictions(
    path: Path, images: list[str], labels: torch.Tensor, logits: dict[str, torch.Tensor], class_names: list[str]
) -> None:
    """One row per image: its label, each model's prediction, confidence (its top-class probability), NLL and Brier
    score and (with more than 5 classes) whether its top 5 held the label.

    Both models scored the same images in the same order, so the report can pair them image by image.
    """
    columns = {}
    for name, model_logits in logits.items():
        columns[f"{name}_predicted"] = [class_names[i] for i in model_logits.argmax(1).tolist()]
        # The top-class probability, as trained: the report's paired bootstrap of calibration reads it.
        columns[f"{name}_confidence"] = [round(v, 6) for v in model_logits.float().softmax(1).max(1).values.tolist()]
        # Each image's NLL and Brier score: the report's paired intervals of the proper scores read them.
        nll, brier = per_image_scores(model_logits.double().numpy(), labels.numpy())
        columns[f"{name}_nll"] = [float(f"{v:.6g}") for v in nll]
        columns[f"{name}_brier"] = [float(f"{v:.6g}") for v in brier]
        if reports_top_k(len(class_names)):
            columns[f"{name}_top5"] = in_top_k(model_logits, labels).int().tolist()
    rows = (
        {"image": image, "actual": class_names[label], **{c: v[i] for c, v in columns.items()}}
        for i, (image, label) in enumerate(zip(images, labels.tolist()))
    )
    write_csv(path, rows, ["image", "actual", *columns])
