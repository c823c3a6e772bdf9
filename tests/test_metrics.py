import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from petlab.core import metrics
from petlab.core.metrics import classification_metrics, confusion, per_class_rows


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


def test_macro_f1_by_hand_and_as_sklearn_counts_it():
    # class 0: tp 1, 2 true, 1 predicted -> 2/3; class 1: tp 2, 2 true, 3 predicted -> 4/5; class 2 absent -> 0
    assert metrics.macro_f1_rows(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)[0] == pytest.approx(
        (2 / 3 + 4 / 5 + 0) / 3
    )
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 5, size=(20, 30)), rng.integers(0, 5, size=(20, 30))
    expected = [f1_score(y, p, labels=np.arange(6), average="macro", zero_division=0) for y, p in zip(labels, preds)]
    np.testing.assert_allclose(metrics.macro_f1_rows(labels, preds, 6), expected)


def test_per_class_rows_and_confusion_are_sklearns_with_absent_classes():
    """Class 5 is in neither the labels nor the predictions, class 4 only among the predictions."""
    rng = np.random.default_rng(3)
    labels, preds = rng.integers(0, 4, 50), rng.integers(0, 5, 50)
    p, r, f, support = precision_recall_fscore_support(labels, preds, labels=np.arange(6), zero_division=0)
    rows = per_class_rows(labels, preds, list("abcdef"))
    assert [row["support"] for row in rows] == support.tolist()
    for name, values in (("precision", p), ("recall", r), ("f1", f)):
        assert [row[name] for row in rows] == [round(float(v), 6) for v in values]
    assert np.array_equal(confusion(labels, preds, 6), confusion_matrix(labels, preds, labels=np.arange(6)))
    with pytest.raises(ValueError, match="class index 4 with 4 classes"):
        confusion(labels, preds, 4)


def test_confusion_and_per_class_agree():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    matrix = confusion(labels, preds, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    rows = per_class_rows(labels, preds, ["a", "b", "c"])
    assert [r["support"] for r in rows] == [2, 2, 2]
    assert rows[1]["recall"] == 1.0 and rows[1]["precision"] == round(2 / 3, 6)


def test_top5_only_with_more_than_5_classes(tmp_path):
    import csv

    from petlab.measure.evaluation import write_predictions

    labels = torch.tensor([0, 1, 2, 0])
    logits = torch.eye(3)[torch.tensor([1, 1, 2, 2])]
    assert set(classification_metrics(logits, labels, 3)) == {"accuracy", "macro_f1"}  # top-5 of 3: always 100%
    six = torch.nn.functional.pad(logits, (0, 3), value=-1.0)  # the 3 added classes rank last
    assert classification_metrics(six, labels, 6)["top5_accuracy"] == 1.0
    write_predictions(tmp_path / "p.csv", ["a", "b", "c", "d"], labels, {"cnn": logits}, ["x", "y", "z"])
    with open(tmp_path / "p.csv") as f:
        assert next(csv.reader(f)) == ["image", "actual", "cnn_predicted", "cnn_confidence", "cnn_nll", "cnn_brier"]
