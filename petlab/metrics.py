"""Classification metrics from logits and labels, computed one way for training, sanity and evaluation."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support


TOP_K = 5  # top-5 accuracy, the usual second number for many classes


def reports_top_k(num_classes: int) -> bool:
    """Top-5 accuracy says something only with more than 5 classes: with 5 or fewer every label is among the 5
    best by construction (100%). Below that the key is left out of every metrics file (not written as null), so
    `dvc metrics diff` shows it as absent rather than as a number."""
    return num_classes > TOP_K


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    preds = logits.argmax(1).numpy()
    y = labels.numpy()
    metrics = {
        "accuracy": float((preds == y).mean()),
        "macro_f1": float(f1_score(y, preds, labels=np.arange(num_classes), average="macro", zero_division=0)),
    }
    if reports_top_k(num_classes):
        metrics["top5_accuracy"] = float(in_top_k(logits, labels).numpy().mean())
    return metrics


def in_top_k(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether each image's label is among the model's TOP_K best classes (bool per image)."""
    return (logits.topk(min(TOP_K, logits.shape[1]), dim=1).indices == labels[:, None]).any(1)


def per_class_rows(labels: np.ndarray, preds: np.ndarray, class_names: list[str]) -> list[dict]:
    p, r, f, support = precision_recall_fscore_support(
        labels, preds, labels=np.arange(len(class_names)), zero_division=0)
    return [{"class": name, "precision": round(float(p[i]), 6), "recall": round(float(r[i]), 6),
             "f1": round(float(f[i]), 6), "support": int(support[i])} for i, name in enumerate(class_names)]


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    return confusion_matrix(labels, preds, labels=np.arange(num_classes))


def rounded(metrics: dict[str, float], digits: int = 6) -> dict[str, float]:
    """Fixed rounding keeps metrics files stable and readable in `dvc metrics diff`."""
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in metrics.items()}
