"""Classification metrics from logits and labels, computed one way for training, sanity and evaluation.

Counted with numpy, to the same numbers as scikit-learn's (tests compare them): importing scikit-learn takes about
2 s, which every stage process would pay; only the stages that fit with it (prepare's split, the L-BFGS probe)
import it.
"""

from __future__ import annotations

import numpy as np
import torch

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
        "macro_f1": float(macro_f1_rows(y, preds, num_classes)[0]),
    }
    if reports_top_k(num_classes):
        metrics["top5_accuracy"] = float(in_top_k(logits, labels).numpy().mean())
    return metrics


def in_top_k(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether each image's label is among the model's TOP_K best classes (bool per image)."""
    return (logits.topk(min(TOP_K, logits.shape[1]), dim=1).indices == labels[:, None]).any(1)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(denominator.shape), where=denominator > 0)


def macro_f1_rows(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 of each row of (resamples, images) label and prediction arrays.

    As sklearn's f1_score(average="macro", labels=range(num_classes), zero_division=0): a class with no
    true and no predicted image counts as F1 0. Counted with bincounts over all rows at once.
    """
    labels, preds = np.atleast_2d(labels), np.atleast_2d(preds)
    offset = np.arange(len(labels))[:, None] * num_classes  # row r's classes live at r*C .. r*C+C-1
    size = len(labels) * num_classes

    def counts(values: np.ndarray) -> np.ndarray:
        return np.bincount(values.ravel(), minlength=size).reshape(len(labels), num_classes)

    true_pos = counts((labels + offset)[labels == preds])
    return ratio(2.0 * true_pos, counts(labels + offset) + counts(preds + offset)).mean(1)


def per_class_rows(labels: np.ndarray, preds: np.ndarray, class_names: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of each class, as scikit-learn's precision_recall_fscore_support."""
    matrix = confusion(labels, preds, len(class_names))
    hits, support, predicted = np.diag(matrix), matrix.sum(1), matrix.sum(0)
    p, r, f = ratio(1.0 * hits, predicted), ratio(1.0 * hits, support), ratio(2.0 * hits, support + predicted)
    return [
        {
            "class": name,
            "precision": round(float(p[i]), 6),
            "recall": round(float(r[i]), 6),
            "f1": round(float(f[i]), 6),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: actual class, columns: predicted class."""
    largest = max(labels.max(initial=0), preds.max(initial=0))
    if largest >= num_classes:  # it would be counted in another cell
        raise ValueError(f"class index {largest} with {num_classes} classes")
    return np.bincount(num_classes * labels + preds, minlength=num_classes**2).reshape(num_classes, num_classes)


def rounded(metrics: dict[str, float], digits: int = 6) -> dict[str, float]:
    """Fixed rounding keeps metrics files stable and readable in `dvc metrics diff`."""
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in metrics.items()}
