"""Scoring trained checkpoints: metrics per split, per-class tables, confusion matrices, per-image predictions."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from petlab.core import paths
from petlab.core.calibration import calibration_summary, per_image_scores, reliability, softmax
from petlab.core.device import Precision
from petlab.core.errors import PipelineError
from petlab.core.layout import SPLITS
from petlab.core.metrics import classification_metrics, confusion, in_top_k, per_class_rows, reports_top_k, rounded
from petlab.core.outputs import load_torch, write_csv
from petlab.core.params import Params
from petlab.data.dataset import PreparedData
from petlab.probe.features import feature_split
from petlab.train.loop import StepContext, predict
from petlab.train.run import image_loader, load_checkpoint_for, load_trained, tensor_loader, trained_on_device


def image_logits(checkpoint: dict, params: Params, data: PreparedData, split: str, name: str = "cnn"):
    """A model's logits on a split's images, un-augmented, in eval mode."""
    model, ctx, spec = trained_on_device(checkpoint, params, name)
    loader = image_loader(
        data, split, spec, params.evaluate.batch_size, False, ctx.device, seed=params.seed, loader=params.loader
    )
    return predict(model, loader, ctx, desc=f"evaluate: {name} {split}")


@functools.cache
def feature_cache() -> dict:
    """Read once for both splits."""
    return load_torch(paths.FEATURES)


def probe_logits(checkpoint: dict, params: Params, data: PreparedData, split: str):
    """The head on the features cached by train_vit: no second backbone pass over the splits it cached.

    A fine-tuned backbone (train_vit.unfreeze) has no valid cache, and the augmented route caches no train
    features (it trains on augmented images): those images go through the whole model, un-augmented.
    """
    if not checkpoint["model_config"].get("info", {}).get("feature_cache", True):
        return image_logits(checkpoint, params, data, split, name="vit")
    cache = feature_cache()
    info = cache["info"]
    if (
        info["class_names"] != checkpoint["class_names"]
        or info["timm_model"] != checkpoint["model_config"]["timm_model"]
    ):
        raise PipelineError(
            f"{paths.FEATURES} was not made for {paths.checkpoint('vit')}; re-run train_vit (dvc repro)"
        )
    if f"{split}/features" not in cache:
        return image_logits(checkpoint, params, data, split, name="vit")
    model = load_trained(checkpoint)
    ctx = StepContext(torch.device("cpu"), Precision(None, False))
    loader = tensor_loader(
        feature_split(cache, split, paths.FEATURES),
        params.evaluate.batch_size,
        False,
        seed=params.seed,
        loader=params.loader,
    )
    return predict(model.head, loader, ctx, desc=f"evaluate: vit {split}")


@dataclass(frozen=True)
class Evaluation:
    """One model's best checkpoint scored on every split: its metrics and calibration (results, as
    metrics/evaluate/<model>.json holds them), and its test logits and labels, for the files drawn from them."""

    checkpoint: dict
    results: dict
    test_logits: torch.Tensor
    test_labels: torch.Tensor

    def reliability_bins(self) -> list[dict]:
        return reliability(softmax(self.test_logits.numpy()), self.test_labels.numpy())


def evaluate(model: str, params: Params, data: PreparedData) -> Evaluation:
    """Every split scored the same way for both models: un-augmented images, model in eval mode; calibration on
    test, as trained and after temperature scaling cross-fitted on test halves (val chose the epoch or C: a
    temperature fitted there would be fitted on data already used)."""
    checkpoint = load_checkpoint_for(paths.checkpoint(model), data)
    logits_of = image_logits if model == "cnn" else probe_logits
    results, logits_by_split = {}, {}
    for split in SPLITS:
        logits, labels = logits_of(checkpoint, params, data, split)
        logits_by_split[split] = (logits.numpy(), labels.numpy())
        results[split] = score(logits, labels, data.num_classes)
    logits, labels = (torch.from_numpy(a) for a in logits_by_split["test"])
    # The report pairs the two models' predictions image by image; only cached features can come in another order.
    if labels.tolist() != [label for _, label in data.items("test")]:
        raise PipelineError(
            f"{paths.FEATURES} lists the test images in another order than {data.root}; re-run train_vit (dvc repro)"
        )
    results["calibration"] = calibration_summary(*logits_by_split["test"], seed=params.seed)
    results["checkpoint_epoch"] = checkpoint["epoch"]
    info = checkpoint["model_config"].get("info", {})  # the probe's: its weights' source and flags
    results.update({k: v for k, v in info.items() if not isinstance(v, str)})  # text is train_vit's record
    return Evaluation(checkpoint, results, logits, labels)


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
