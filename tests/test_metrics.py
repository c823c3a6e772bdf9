import numpy as np
import torch
from sklearn.metrics import f1_score

from petlab.metrics import classification_metrics, confusion, per_class_rows


def test_metrics_match_sklearn_and_hand_counts():
    rng = np.random.default_rng(0)
    labels = torch.tensor(rng.integers(0, 7, 200))
    logits = torch.tensor(rng.normal(size=(200, 7)), dtype=torch.float32)
    logits[torch.arange(100), labels[:100]] += 5.0  # half of them surely right
    m = classification_metrics(logits, labels, 7)
    preds = logits.argmax(1).numpy()
    assert m["accuracy"] == np.mean(preds == labels.numpy())
    assert m["macro_f1"] == f1_score(labels.numpy(), preds, average="macro")
    top5 = np.argsort(-logits.numpy(), 1)[:, :5]
    assert m["top5_accuracy"] == np.mean([labels[i].item() in top5[i] for i in range(200)])
    assert m["top5_accuracy"] >= m["accuracy"]


def test_confusion_and_per_class_agree():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    matrix = confusion(labels, preds, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    rows = per_class_rows(labels, preds, ["a", "b", "c"])
    assert [r["support"] for r in rows] == [2, 2, 2]
    assert rows[1]["recall"] == 1.0 and rows[1]["precision"] == round(2 / 3, 6)
