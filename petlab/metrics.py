"""Classification metrics from logits and labels, computed one way for training, sanity and evaluation."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    preds = logits.argmax(1).numpy()
    y = labels.numpy()
    k = min(5, num_classes)
    topk = logits.topk(k, dim=1).indices
    return {
        "accuracy": float((preds == y).mean()),
        "macro_f1": float(f1_score(y, preds, labels=np.arange(num_classes), average="macro", zero_division=0)),
        "top5_accuracy": float((topk == labels[:, None]).any(1).numpy().mean()),
    }


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
