"""The two training recipes (CNN from scratch, probe on a frozen backbone) and what they save."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from petlab.data import ImageDataset, PreparedData, TransformSpec, eval_transform, make_loader, train_transform
from petlab.features import extract_features, save_feature_cache
from petlab.downloads import file_digest
from petlab.models import (FrozenBackboneClassifier, count_parameters, create_model, load_backbone,
                           load_pretrained_backbone, timm_data_config)
from petlab.outputs import save_torch, write_csv, write_json
from petlab.params import Params, load_params, to_dict
from petlab.runtime import Precision, Stopwatch, seed_everything, select_device, select_precision
from petlab.train import HISTORY_COLUMNS, FitResult, StepContext, fit


@dataclass
class TrainedModel:
    model: nn.Module
    config: dict  # enough to rebuild the model with create_model()
    result: FitResult
    summary: dict  # what goes into the stage's metrics file besides the validation numbers
    setup_seconds: float = 0.0  # wall time before the first epoch that training needed (the probe's feature cache)


def setup_stage(data_dir: Path) -> tuple[Params, PreparedData]:
    """What every stage after prepare does first: check all params, fix seeds, check the device, open the data."""
    params = load_params()
    seed_everything(params.seed)
    select_device(params.device)  # a requested GPU that is missing is reported before any work
    return params, PreparedData.open(data_dir)


def make_context(params: Params, amp: bool, channels_last: bool, input_spec: TransformSpec | None = None) -> StepContext:
    """`input_spec`: how the model's image batches are normalised (None where it is fed features)."""
    device = select_device(params.device)
    return StepContext(device, select_precision(device, amp), channels_last and device.type != "mps", input_spec)


def cnn_config(params: Params, num_classes: int) -> dict:
    p = params.train_cnn
    # crop_pad trains on the whole image, so evaluation must not crop into it (crop_pct 1).
    spec = TransformSpec(size=p.image_size, crop_pct=1.0 if p.augment == "crop_pad" else 0.875)
    config = {"kind": p.arch, "num_classes": num_classes, "widths": list(p.widths), "dropout": p.dropout,
              "batch_norm": p.batch_norm, "transform": spec.as_dict()}
    if p.arch == "mlp":
        config["input_size"] = p.image_size
    return config


def image_loader(data: PreparedData, split: str, spec: TransformSpec, batch_size: int, train: bool,
                 params: Params, device: torch.device, augment: str = "rrc") -> DataLoader:
    transform = train_transform(spec, augment) if train else eval_transform(spec)
    dataset = ImageDataset(data.items(split), transform, seed=params.seed)
    return make_loader(dataset, batch_size, train, params.seed, device, params.loader)


def tensor_loader(dataset: TensorDataset, batch_size: int, train: bool, params: Params) -> DataLoader:
    return make_loader(dataset, batch_size, train, params.seed, torch.device("cpu"), params.loader)


def train_cnn(params: Params, data: PreparedData, log_dir: Path) -> TrainedModel:
    p = params.train_cnn
    config = cnn_config(params, data.num_classes)
    spec = transform_spec(config)
    ctx = make_context(params, p.amp, p.channels_last, spec)
    model = create_model(config).to(ctx.device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader = image_loader(data, "train", spec, p.batch_size, True, params, ctx.device, p.augment)
    val_loader = image_loader(data, "val", spec, p.batch_size, False, params, ctx.device)
    with SummaryWriter(str(log_dir)) as writer:
        result = fit(model, train_loader, val_loader, p, ctx, data.num_classes, writer, params.log.hist_every,
                     name="train_cnn")
        log_hparams(writer, to_dict(p), result)
    model.load_state_dict(result.best_state)
    summary = {"device": ctx.device.type, "precision": ctx.precision.name, "channels_last": ctx.channels_last,
               "parameters": count_parameters(model)}
    return TrainedModel(model, config, result, summary)


def build_probe(params: Params, num_classes: int,
                backbone_file: Path | None = None) -> tuple[FrozenBackboneClassifier, dict]:
    """The backbone (frozen but for train_vit.unfreeze) with a fresh head, and the config that rebuilds it.

    The stages load the backbone from `backbone_file`, the weights the backbone_weights stage resolved and DVC
    versions; without one (tests, the benchmark) it is resolved here from train_vit's params.
    info.feature_cache says whether features of the backbone are fixed, so cached ones may stand for
    the images; with a fine-tuned backbone the evaluate stage must run the images through the model.
    """
    p = params.train_vit
    if backbone_file is None:
        backbone, source = load_pretrained_backbone(p.model, p.pretrained, p.weights, p.weights_sha256)
        weights = {"pretrained": p.pretrained, "weights_source": source}
    else:
        backbone, recorded = load_backbone(backbone_file, p.model)
        weights = {"pretrained": recorded["pretrained"], "weights_source": recorded["source"],
                   "backbone_sha256": file_digest(backbone_file)}
    spec = TransformSpec.from_timm(timm_data_config(backbone))
    model = FrozenBackboneClassifier(backbone, num_classes, p.unfreeze, p.head, p.head_hidden, p.head_dropout)
    config = {"kind": "timm_probe", "num_classes": num_classes, "timm_model": p.model, "unfreeze": list(p.unfreeze),
              "head": p.head, "head_hidden": p.head_hidden, "head_dropout": p.head_dropout,
              "transform": spec.as_dict(), "info": {**weights, "feature_cache": not p.unfreeze}}
    return model, config


def transform_spec(config: dict) -> TransformSpec:
    t = config["transform"]
    return TransformSpec(t["size"], tuple(t["mean"]), tuple(t["std"]), t["interpolation"], t["crop_pct"])


def train_vit(params: Params, data: PreparedData, log_dir: Path, features_path: Path,
              backbone_file: Path | None = None) -> TrainedModel:
    p = params.train_vit
    model, config = build_probe(params, data.num_classes, backbone_file)
    spec = transform_spec(config)
    ctx = make_context(params, p.amp, channels_last=False, input_spec=spec)
    head_ctx = StepContext(ctx.device, Precision(None, False))  # a linear layer gains nothing from autocast
    model.to(ctx.device)
    fine_tune = model.trains_backbone  # features change while training: nothing can be cached
    splits = () if fine_tune else ("val", "test") if p.augment else ("train", "val", "test")
    extraction = Stopwatch()
    cached = {s: extract_features(model.backbone, image_loader(data, s, spec, p.feature_batch_size, False, params,
                                                                ctx.device), ctx, desc=f"train_vit: {s} features")
              for s in splits}
    save_feature_cache(features_path, cached, {"timm_model": p.model, **config["info"], "transform": spec.as_dict(),
                                                "class_names": data.class_names})
    setup_seconds = extraction.seconds()
    if fine_tune:
        val_loader = image_loader(data, "val", spec, p.batch_size, False, params, ctx.device)
    else:
        val_loader = tensor_loader(TensorDataset(*cached["val"]), p.batch_size, False, params)
    with SummaryWriter(str(log_dir)) as writer:
        if fine_tune:
            train_loader = image_loader(data, "train", spec, p.batch_size, True, params, ctx.device,
                                        "rrc" if p.augment else "none")
            groups = [{"params": list(model.head.parameters())},
                      {"params": [q for q in model.backbone.parameters() if q.requires_grad], "lr": p.backbone_lr}]
            result = fit(model, train_loader, val_loader, p, ctx, data.num_classes, writer, params.log.hist_every,
                         name="train_vit", param_groups=groups)
            model.load_state_dict(result.best_state)
        elif p.augment:
            train_loader = image_loader(data, "train", spec, p.batch_size, True, params, ctx.device)
            result = fit(model, train_loader, val_loader, p, ctx, data.num_classes, writer, params.log.hist_every,
                         eval_model=model.head, name="train_vit")
            model.load_state_dict(result.best_state)
        else:
            train_loader = tensor_loader(TensorDataset(*cached["train"]), p.batch_size, True, params)
            result = fit(model.head, train_loader, val_loader, p, head_ctx, data.num_classes, writer,
                         params.log.hist_every, name="train_vit")
            model.head.load_state_dict(result.best_state)
        log_hparams(writer, to_dict(p), result)
    route = "fine_tuned" if fine_tune else "augmented_images" if p.augment else "cached_features"
    summary = {"device": ctx.device.type, "precision": ctx.precision.name, "route": route, **config["info"],
               "parameters": count_parameters(model)}
    return TrainedModel(model, config, result, summary, setup_seconds)


def log_hparams(writer: SummaryWriter, hparams: dict, result: FitResult) -> None:
    flat = {k: (str(v) if isinstance(v, (list, tuple)) or v is None else v) for k, v in hparams.items()}
    writer.add_hparams(flat, {"best/val_macro_f1": result.best_val["macro_f1"],
                              "best/val_accuracy": result.best_val["accuracy"],
                              "best/epoch": result.best_epoch}, run_name="hparams")


def save_trained(stage: str, trained: TrainedModel, class_names: list[str], checkpoint: Path, metrics: Path,
                 history: Path, epoch_times: Path) -> None:
    """The best checkpoint (loadable with weights_only=True), the metrics file, the per-epoch history and times.

    Wall times go to their own file (`epoch_times`): the history repeats byte for byte, they do not.
    `elapsed_seconds` counts from the start of training, including setup such as the probe's feature cache.
    """
    state = {k: v.detach().cpu() for k, v in trained.model.state_dict().items()}
    save_torch(checkpoint, {"model_state": state, "model_config": trained.config, "class_names": class_names,
                            "epoch": trained.result.best_epoch, "val_metrics": trained.result.best_val})
    write_csv(history, trained.result.history, HISTORY_COLUMNS)
    elapsed = trained.setup_seconds
    times = []
    for epoch, seconds in enumerate(trained.result.epoch_seconds, start=1):
        elapsed += seconds
        times.append({"epoch": epoch, "seconds": seconds, "elapsed_seconds": round(elapsed, 3)})
    write_csv(epoch_times, times, ["epoch", "seconds", "elapsed_seconds"])
    write_json(metrics, {"best_epoch": trained.result.best_epoch, "epochs": len(trained.result.history),
                         **{f"val_{k}": v for k, v in trained.result.best_val.items()}, **trained.summary})
    best = trained.result.best_val
    print(f"{stage}: best epoch {trained.result.best_epoch}, val accuracy {best['accuracy']:.4f}, "
          f"val macro-F1 {best['macro_f1']:.4f} -> {checkpoint}")


def load_trained(checkpoint: dict) -> nn.Module:
    model = create_model(checkpoint["model_config"])
    model.load_state_dict(checkpoint["model_state"])
    return model.eval()
