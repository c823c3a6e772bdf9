"""Stage evaluate@MODEL (cnn, vit): one model's best checkpoint on train, val and test; metrics, calibration (as
trained and after temperature scaling fitted on val, with its reliability bins), per-class table, confusion
matrices, test predictions. Each model is its own stage, so a change to one model scores that model alone; the
report pairs the two image by image.

Every split is scored the same way for both models: un-augmented images, model in eval mode. So the train
numbers measure how well each model fits its training data on equal terms (training's own train metrics are
of augmented batches, with dropout on, for the CNN), and the report's gaps compare like with like.
"""

import functools
from pathlib import Path

import torch

from petlab.core.device import Precision
from petlab.core.errors import PipelineError
from petlab.core.outputs import load_torch, write_csv, write_json
from petlab.core.records import weights_label
from petlab.core.stage import run_model_stage
from petlab.data.dataset import PreparedData
from petlab.figures import plots
from petlab.measure.calibration import calibration_summary, reliability, softmax
from petlab.measure.evaluation import score, write_predictions, write_reports
from petlab.train.features import feature_split
from petlab.train.loop import StepContext, predict
from petlab.train.run import (
    image_loader,
    load_checkpoint_for,
    load_trained,
    setup_stage,
    tensor_loader,
    trained_on_device,
)

DATA = Path("data/oxford_pets")
FEATURES = Path("data/features/vit.pt")
CHECKPOINTS = {"cnn": Path("models/cnn.pt"), "vit": Path("models/vit.pt")}
METRICS = Path("metrics/evaluate")  # <model>.json
PLOTS = Path("plots/evaluate")
SPLITS = ("train", "val", "test")


def cnn_logits(checkpoint: dict, params, data: PreparedData, split: str, name: str = "cnn"):
    model, ctx, spec = trained_on_device(checkpoint, params, name)
    loader = image_loader(data, split, spec, params.evaluate.batch_size, False, params, ctx.device)
    return predict(model, loader, ctx, desc=f"evaluate: {name} {split}")


@functools.cache
def feature_cache() -> dict:
    """Read once for both splits."""
    return load_torch(FEATURES)


def probe_logits(checkpoint: dict, params, data: PreparedData, split: str):
    """The head on the features cached by train_vit: no second backbone pass over the splits it cached.

    A fine-tuned backbone (train_vit.unfreeze) has no valid cache, and the augmented route caches no train
    features (it trains on augmented images): those images go through the whole model, un-augmented.
    """
    if not checkpoint["model_config"].get("info", {}).get("feature_cache", True):
        return cnn_logits(checkpoint, params, data, split, name="vit")
    cache = feature_cache()
    info = cache["info"]
    if (
        info["class_names"] != checkpoint["class_names"]
        or info["timm_model"] != checkpoint["model_config"]["timm_model"]
    ):
        raise PipelineError(f"{FEATURES} was not made for {CHECKPOINTS['vit']}; re-run train_vit (dvc repro)")
    if f"{split}/features" not in cache:
        return cnn_logits(checkpoint, params, data, split, name="vit")
    model = load_trained(checkpoint)
    ctx = StepContext(torch.device("cpu"), Precision(None, False))
    loader = tensor_loader(feature_split(cache, split, FEATURES), params.evaluate.batch_size, False, params)
    return predict(model.head, loader, ctx, desc=f"evaluate: vit {split}")


def main(model: str) -> None:
    params, data = setup_stage(DATA)
    checkpoint = load_checkpoint_for(CHECKPOINTS[model], data)
    logits_of = cnn_logits if model == "cnn" else probe_logits
    results, logits_by_split = {}, {}
    for split in SPLITS:
        logits, labels = logits_of(checkpoint, params, data, split)
        logits_by_split[split] = (logits.numpy(), labels.numpy())
        results[split] = score(logits, labels, data.num_classes)
    logits, labels = (torch.from_numpy(a) for a in logits_by_split["test"])
    # The report pairs the two models' predictions image by image; only cached features can come in another order.
    if labels.tolist() != [label for _, label in data.items("test")]:
        raise PipelineError(
            f"{FEATURES} lists the test images in another order than {DATA}; re-run train_vit (dvc repro)"
        )
    matrix = write_reports(model, logits, labels, data.class_names, PLOTS)
    title = f"{plots.model_label(checkpoint['model_config'])} (test)"
    plots.save_confusion_figures(matrix, data.class_names, PLOTS, model, title)
    images = [path.relative_to(DATA).as_posix() for path, _ in data.items("test")]
    write_predictions(PLOTS / f"predictions_test_{model}.csv", images, labels, {model: logits}, data.class_names)
    # Calibration on test: as trained, and after temperature scaling cross-fitted on test halves (val chose the
    # epoch or C: a temperature fitted there would be fitted on data already used).
    results["calibration"] = calibration_summary(*logits_by_split["test"], seed=params.seed)
    bins = reliability(softmax(logits_by_split["test"][0]), logits_by_split["test"][1])
    write_csv(PLOTS / f"reliability_{model}.csv", bins, ["images", "confidence", "accuracy"])
    results["checkpoint_epoch"] = checkpoint["epoch"]
    info = checkpoint["model_config"].get("info", {})  # the probe's: its weights' source and flags
    results.update({k: v for k, v in info.items() if not isinstance(v, str)})  # text is train_vit's record
    write_json(METRICS / f"{model}.json", {model: results})  # keyed by the model, as `dvc exp show` names the columns
    t = results["test"]
    top5 = f", top-5 {t['top5_accuracy']:.4f}" if "top5_accuracy" in t else ""
    print(
        f"evaluate: {model}: train accuracy {results['train']['accuracy']:.4f}; test accuracy "
        f"{t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}{top5}"
    )
    if model == "vit" and not info.get("pretrained", True):
        print("evaluate: WARNING: the probe's backbone has random weights (train_vit.pretrained = false)")
    elif model == "vit" and weights_label(info):
        print(f"evaluate: vit: {weights_label(info)}")


if __name__ == "__main__":
    run_model_stage("evaluate", main)
