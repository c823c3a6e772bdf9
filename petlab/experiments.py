"""The two training recipes (CNN from scratch, probe on a frozen backbone) and what they save."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from petlab import distributed
from petlab.data import ImageDataset, PreparedData, TransformSpec, eval_transform, make_loader, train_transform
from petlab.downloads import file_digest
from petlab.features import extract_features, save_feature_cache
from petlab.models import (
    FrozenBackboneClassifier,
    count_parameters,
    create_model,
    load_backbone,
    load_pretrained_backbone,
    timm_data_config,
)
from petlab.outputs import WRITE_ERRNOS, load_torch, naming_failed_writes, save_torch, write_csv, write_json
from petlab.params import Params, TrainViTParams, load_params, to_dict
from petlab.probe import SWEEP_COLUMNS, fit_logistic_probe
from petlab.runtime import (
    PipelineError,
    Precision,
    Stopwatch,
    keep_freed_memory,
    seed_everything,
    select_device,
    select_precision,
    share_cpu,
)
from petlab.train import HISTORY_COLUMNS, SELECTION_RULE, EpochCallback, FitResult, StepContext, fit

if TYPE_CHECKING:  # the stages make it; the stages that only evaluate or profile need not import it
    from petlab.resume import Resume


@dataclass
class TrainedModel:
    model: nn.Module
    config: dict  # enough to rebuild the model with create_model()
    best_val: dict[str, float]  # validation metrics of the weights kept
    selection: dict  # how they were chosen: the rule, and the best and last epoch or the C kept and its grid
    curves: dict[str, tuple[list[dict], list[str]]]  # CSV name -> (rows, columns): per epoch, per C
    summary: dict  # what goes into the stage's metrics file besides the validation numbers
    # Wall times, kept out of the metrics and curves, which repeat byte for byte: the seconds of each epoch (none
    # for the L-BFGS probe) and those before the first that training needed (the probe's feature cache).
    epoch_seconds: list[float] = field(default_factory=list)
    setup_seconds: float = 0.0
    head_seconds: float = 0.0  # fitting the head (or the whole model): the L-BFGS sweep, or the loop's epochs


def fit_selection(result: FitResult) -> dict:
    """What the training loop kept: best and last epoch, so an early pick shows, and the steps an epoch took."""
    return {
        "selection": SELECTION_RULE,
        "best_epoch": result.best_epoch,
        "last_epoch": len(result.history),
        "steps_per_epoch": result.steps_per_epoch,
    }


def setup_stage(data_dir: Path) -> tuple[Params, PreparedData]:
    """What every stage after prepare does first: check all params, fix seeds, check the device, open the data."""
    params = load_params()
    share_cpu()
    keep_freed_memory()
    # A requested GPU that is missing, or that this torch has no kernels for, is reported before any work.
    seed_everything(params.seed, select_device(params.device))
    return params, PreparedData.open(data_dir)


def make_context(
    params: Params, amp: bool, channels_last: bool, input_spec: TransformSpec | None = None
) -> StepContext:
    """`input_spec`: how the model's image batches are normalised (None where it is fed features)."""
    device = select_device(params.device)
    return StepContext(device, select_precision(device, amp), channels_last and device.type != "mps", input_spec)


def cnn_config(params: Params, num_classes: int) -> dict:
    p = params.train_cnn
    # crop_pad trains on the whole image, so evaluation must not crop into it (crop_pct 1).
    spec = TransformSpec(size=p.image_size, crop_pct=1.0 if p.augment == "crop_pad" else 0.875)
    config = {
        "kind": p.arch,
        "num_classes": num_classes,
        "widths": list(p.widths),
        "dropout": p.dropout,
        "batch_norm": p.batch_norm,
        "transform": spec.as_dict(),
    }
    if p.arch == "mlp":
        config["input_size"] = p.image_size
    return config


def image_loader(
    data: PreparedData,
    split: str,
    spec: TransformSpec,
    batch_size: int,
    train: bool,
    params: Params,
    device: torch.device,
    augment: str = "rrc",
) -> DataLoader:
    transform = train_transform(spec, augment) if train else eval_transform(spec)
    dataset = ImageDataset(data.items(split), transform, seed=params.seed)
    return make_loader(dataset, batch_size, train, params.seed, device, params.loader)


def tensor_loader(dataset: TensorDataset, batch_size: int, train: bool, params: Params) -> DataLoader:
    return make_loader(dataset, batch_size, train, params.seed, torch.device("cpu"), params.loader)


def train_cnn(
    params: Params,
    data: PreparedData,
    log_dir: Path,
    resume: Resume | None = None,
    name: str = "train_cnn",
    on_epoch: EpochCallback | None = None,
) -> TrainedModel:
    """`resume`: where its end-of-epoch checkpoint is kept, and continued from (petlab/resume.py); `name` leads its
    progress lines; `on_epoch` is called after every epoch (petlab.train.fit, progress_writer)."""
    p = params.train_cnn
    config = cnn_config(params, data.num_classes)
    spec = transform_spec(config)
    ctx = make_context(params, p.amp, p.channels_last, spec)
    model = create_model(config).to(ctx.device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader = image_loader(data, "train", spec, p.batch_size, True, params, ctx.device, p.augment)
    val_loader = image_loader(data, "val", spec, p.batch_size, False, params, ctx.device)
    with tensorboard(log_dir) as writer:
        result = fit(
            model,
            train_loader,
            val_loader,
            p,
            ctx,
            data.num_classes,
            writer,
            params.log.hist_every,
            name=name,
            resume=resume,
            on_epoch=on_epoch,
        )
        log_hparams(writer, to_dict(p), result.best_val, fit_selection(result))
    model.load_state_dict(result.best_state)
    summary = {
        "device": ctx.device.type,
        "precision": ctx.precision.name,
        "channels_last": ctx.channels_last,
        "ranks": distributed.world_size(),
        "parameters": count_parameters(model),
    }
    return TrainedModel(
        model,
        config,
        result.best_val,
        fit_selection(result),
        {"history.csv": (result.history, HISTORY_COLUMNS)},
        summary,
        result.epoch_seconds,
    )


def build_probe(
    params: Params, num_classes: int, backbone_file: Path | None = None
) -> tuple[FrozenBackboneClassifier, dict]:
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
        weights = {
            "pretrained": recorded["pretrained"],
            "weights_source": recorded["source"],
            "backbone_sha256": file_digest(backbone_file),
        }
    spec = TransformSpec.from_timm(timm_data_config(backbone))
    model = FrozenBackboneClassifier(backbone, num_classes, p.unfreeze, p.head, p.head_hidden, p.head_dropout)
    config = {
        "kind": "timm_probe",
        "num_classes": num_classes,
        "timm_model": p.model,
        "unfreeze": list(p.unfreeze),
        "head": p.head,
        "head_hidden": p.head_hidden,
        "head_dropout": p.head_dropout,
        "transform": spec.as_dict(),
        "info": {**weights, "feature_cache": not p.unfreeze},
    }
    return model, config


def transform_spec(config: dict) -> TransformSpec:
    t = config["transform"]
    return TransformSpec(t["size"], tuple(t["mean"]), tuple(t["std"]), t["interpolation"], t["crop_pct"])


@dataclass
class ProbeFit:
    """What a probe route kept (its weights already in the model): their validation metrics, how they were chosen,
    and the curves: per epoch for the loop's routes, per C for the L-BFGS probe."""

    best_val: dict[str, float]
    selection: dict
    history: list[dict] = field(default_factory=list)
    sweep: list[dict] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)


def loop_fit(result: FitResult) -> ProbeFit:
    return ProbeFit(result.best_val, fit_selection(result), history=result.history, epoch_seconds=result.epoch_seconds)


def train_vit(
    params: Params,
    data: PreparedData,
    log_dir: Path,
    features_path: Path,
    backbone_file: Path | None = None,
    resume: Resume | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainedModel:
    """The probe: features of the splits its route reads from the cache extracted and saved, then the one route
    its params choose (TrainViTParams.route and fits_lbfgs) trains it.

    `resume`: where the image routes (augment, unfreeze) keep their end-of-epoch checkpoint, and continue from it
    (petlab/resume.py); the L-BFGS probe and the loop on cached features take seconds, and restart. `on_epoch`: as
    train_cnn's, for the routes with epochs."""
    p = params.train_vit
    model, config = build_probe(params, data.num_classes, backbone_file)
    spec = transform_spec(config)
    ctx = make_context(params, p.amp, channels_last=False, input_spec=spec)
    model.to(ctx.device)
    # The splits each route reads from the cache: a fine-tuned backbone's features change while it trains, so none;
    # the head on augmented images sees new train images at every step, so only val and test (never augmented).
    splits = {"fine_tuned": (), "augmented_images": ("val", "test"), "cached_features": ("train", "val", "test")}
    extraction = Stopwatch()
    cached = {
        s: extract_features(
            model.backbone,
            image_loader(data, s, spec, p.feature_batch_size, False, params, ctx.device),
            ctx,
            desc=f"train_vit: {s} features",
        )
        for s in splits[p.route]
    }
    if distributed.is_main():
        save_feature_cache(
            features_path,
            cached,
            {"timm_model": p.model, **config["info"], "transform": spec.as_dict(), "class_names": data.class_names},
        )
    setup_seconds = extraction.seconds()

    head_fit = Stopwatch()
    with tensorboard(log_dir) as writer:
        if p.fits_lbfgs:  # the standard linear probe: a linear head on cached features
            fitted = fit_lbfgs_probe(model, cached, p, data.num_classes)
        elif p.route == "cached_features":
            fitted = fit_head_on_cached_features(model, cached, params, data.num_classes, ctx.device, writer, on_epoch)
        elif p.route == "augmented_images":
            fitted = fit_head_on_augmented_images(model, cached, params, data, spec, ctx, writer, resume, on_epoch)
        else:
            fitted = fine_tune_backbone(model, params, data, spec, ctx, writer, resume, on_epoch)
        head_seconds = head_fit.seconds()
        log_hparams(writer, to_dict(p), fitted.best_val, fitted.selection)
    summary = {
        "device": ctx.device.type,
        "precision": ctx.precision.name,
        "route": p.route,
        "solver": "lbfgs" if p.fits_lbfgs else "sgd",
        **config["info"],
        "ranks": distributed.world_size(),
        "parameters": count_parameters(model),
    }
    # Both files always exist (DVC outputs); the one the route does not make holds its header only.
    curves = {"history.csv": (fitted.history, HISTORY_COLUMNS), "c_sweep.csv": (fitted.sweep, SWEEP_COLUMNS)}
    return TrainedModel(
        model,
        config,
        fitted.best_val,
        fitted.selection,
        curves,
        summary,
        fitted.epoch_seconds,
        setup_seconds,
        head_seconds,
    )


def fit_lbfgs_probe(model: FrozenBackboneClassifier, cached: dict, p: TrainViTParams, num_classes: int) -> ProbeFit:
    """The linear head as L2-regularised logistic regression on the cached train features, by L-BFGS for every C
    of the grid, keeping the best C on the cached val features."""
    probe = fit_logistic_probe(cached["train"], cached["val"], num_classes, p.c_grid, p.max_iter, name="train_vit")
    model.head.load_state_dict(probe.head_state)
    return ProbeFit(probe.best_val, probe.selection, sweep=probe.sweep)


def fit_head_on_cached_features(
    model: FrozenBackboneClassifier,
    cached: dict,
    params: Params,
    num_classes: int,
    device: torch.device,
    writer: SummaryWriter | None,
    on_epoch: EpochCallback | None = None,
) -> ProbeFit:
    """The head alone (linear or mlp) by the training loop on the cached train features, kept on the cached val."""
    p = params.train_vit
    head_ctx = StepContext(device, Precision(None, False))  # a linear layer gains nothing from autocast
    val_loader = tensor_loader(TensorDataset(*cached["val"]), p.batch_size, False, params)
    train_loader = tensor_loader(TensorDataset(*cached["train"]), p.batch_size, True, params)
    result = fit(
        model.head,
        train_loader,
        val_loader,
        p,
        head_ctx,
        num_classes,
        writer,
        params.log.hist_every,
        name="train_vit",
        on_epoch=on_epoch,
    )
    model.head.load_state_dict(result.best_state)
    return loop_fit(result)


def fit_head_on_augmented_images(
    model: FrozenBackboneClassifier,
    cached: dict,
    params: Params,
    data: PreparedData,
    spec: TransformSpec,
    ctx: StepContext,
    writer: SummaryWriter | None,
    resume: Resume | None = None,
    on_epoch: EpochCallback | None = None,
) -> ProbeFit:
    """The head by the training loop on augmented train images through the frozen backbone at every step, kept on
    the cached val features (val images are not augmented, so their features are fixed)."""
    p = params.train_vit
    val_loader = tensor_loader(TensorDataset(*cached["val"]), p.batch_size, False, params)
    train_loader = image_loader(data, "train", spec, p.batch_size, True, params, ctx.device)
    result = fit(
        model,
        train_loader,
        val_loader,
        p,
        ctx,
        data.num_classes,
        writer,
        params.log.hist_every,
        eval_model=model.head,
        name="train_vit",
        resume=resume,
        on_epoch=on_epoch,
    )
    model.load_state_dict(result.best_state)
    return loop_fit(result)


def fine_tune_backbone(
    model: FrozenBackboneClassifier,
    params: Params,
    data: PreparedData,
    spec: TransformSpec,
    ctx: StepContext,
    writer: SummaryWriter | None,
    resume: Resume | None = None,
    on_epoch: EpochCallback | None = None,
) -> ProbeFit:
    """The head and the unfrozen backbone parts (train_vit.unfreeze, at backbone_lr) by the training loop on train
    images (augmented where train_vit.augment), kept on val images."""
    p = params.train_vit
    val_loader = image_loader(data, "val", spec, p.batch_size, False, params, ctx.device)
    train_loader = image_loader(
        data, "train", spec, p.batch_size, True, params, ctx.device, "rrc" if p.augment else "none"
    )
    groups = [
        {"params": list(model.head.parameters())},
        {"params": [q for q in model.backbone.parameters() if q.requires_grad], "lr": p.backbone_lr},
    ]
    result = fit(
        model,
        train_loader,
        val_loader,
        p,
        ctx,
        data.num_classes,
        writer,
        params.log.hist_every,
        name="train_vit",
        param_groups=groups,
        resume=resume,
        on_epoch=on_epoch,
    )
    model.load_state_dict(result.best_state)
    return loop_fit(result)


@contextlib.contextmanager
def tensorboard(log_dir: Path) -> Iterator[SummaryWriter | None]:
    """A TensorBoard writer on rank 0; None on the other ranks, which write nothing.

    Its event files are written by a thread of its own. A write that fails there (disk full) is raised again in the
    stage by the writer's next call, where the error names the log folder: the thread's own traceback is not
    printed, so the stage's one line is all the user sees."""
    if not distributed.is_main():
        yield None
        return
    previous_hook = threading.excepthook

    def quiet_failed_writes(args) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in WRITE_ERRNOS):
            previous_hook(args)

    threading.excepthook = quiet_failed_writes
    try:
        with naming_failed_writes(log_dir), SummaryWriter(str(log_dir)) as writer:
            yield writer
    finally:
        threading.excepthook = previous_hook


def log_hparams(writer: SummaryWriter | None, hparams: dict, best_val: dict, selection: dict) -> None:
    if writer is None:
        return
    flat = {k: (str(v) if isinstance(v, (list, tuple)) or v is None else v) for k, v in hparams.items()}
    kept = {f"best/{k}": selection[k] for k in ("best_epoch", "selected_c") if k in selection}
    writer.add_hparams(
        flat,
        {"best/val_macro_f1": best_val["macro_f1"], "best/val_accuracy": best_val["accuracy"], **kept},
        run_name="hparams",
    )


def progress_writer(metrics: Path, history_file: Path) -> EpochCallback:
    """What a training stage writes after every epoch, atomically: its history so far and a metrics file of the
    best so far (the kept epoch, the last one, the kept val scores), so `dvc exp show`, `dvc plots show` and an
    editor's DVC view move while a model trains, not only TensorBoard. save_trained writes the final files over them,
    the same bytes as a run without them."""

    def write(history: list[dict], best: FitResult) -> None:
        write_csv(history_file, history, HISTORY_COLUMNS)
        write_json(
            metrics,
            {
                "best_epoch": best.best_epoch,
                "last_epoch": history[-1]["epoch"],
                "in_progress": True,
                **{f"val_{k}": v for k, v in best.best_val.items()},
            },
        )

    return write


RUN_RECORD = "run.json"  # in a training stage's plots folder: how the run went, in words (save_trained)


def save_trained(
    stage: str,
    trained: TrainedModel,
    class_names: list[str],
    checkpoint: Path,
    metrics: Path,
    plots_dir: Path,
    epoch_times: Path,
) -> None:
    """The kept checkpoint (loadable with weights_only=True), the metrics file and the run's record (RUN_RECORD),
    the curves (per epoch, per C) and the epochs' wall times.

    Wall times go to their own file (`epoch_times`; header only for the L-BFGS probe, which has no epochs): the
    curves repeat byte for byte, they do not. `elapsed_seconds` counts from the start of training, including
    setup such as the probe's feature cache.
    """
    state = {k: v.detach().cpu() for k, v in trained.model.state_dict().items()}
    selection = trained.selection
    save_torch(
        checkpoint,
        {
            "model_state": state,
            "model_config": trained.config,
            "class_names": class_names,
            "epoch": selection.get("best_epoch"),
            "selection": selection,
            "val_metrics": trained.best_val,
        },
    )
    for name, (rows, columns) in trained.curves.items():
        write_csv(plots_dir / name, rows, columns)
    elapsed, times = trained.setup_seconds, []
    for epoch, seconds in enumerate(trained.epoch_seconds, start=1):
        elapsed += seconds
        times.append({"epoch": epoch, "seconds": seconds, "elapsed_seconds": round(elapsed, 3)})
    write_csv(epoch_times, times, ["epoch", "seconds", "elapsed_seconds"])
    # The rule's wording and the C grid stay in the checkpoint: the same text in every run, nothing to compare.
    compared = {k: v for k, v in selection.items() if k not in ("selection", "c_grid")}
    recorded = {**compared, **{f"val_{k}": v for k, v in trained.best_val.items()}, **trained.summary}
    # The metrics file holds what runs are compared by (numbers, and flags such as `converged`); how the run went
    # (device, precision, route, solver, the weights' source and digest: text) goes beside the curves, so that
    # `dvc metrics show` and `dvc metrics diff` stay about the models.
    write_json(metrics, {k: v for k, v in recorded.items() if not isinstance(v, str)})
    write_json(plots_dir / RUN_RECORD, {k: v for k, v in recorded.items() if isinstance(v, str)})
    kept = (
        f"C {selection['selected_c']:g}"
        if "selected_c" in selection
        else f"epoch {selection['best_epoch']} of {selection['last_epoch']}"
    )
    best = trained.best_val
    print(
        f"{stage}: kept {kept} ({selection['selection']}), val accuracy {best['accuracy']:.4f}, "
        f"val macro-F1 {best['macro_f1']:.4f} -> {checkpoint}"
    )


def load_trained(checkpoint: dict) -> nn.Module:
    model = create_model(checkpoint["model_config"])
    model.load_state_dict(checkpoint["model_state"])
    return model.eval()


def load_checkpoint_for(path: Path, data: PreparedData) -> dict:
    """A training stage's checkpoint, refused in one line when it was trained on other classes than `data`."""
    checkpoint = load_torch(path)
    if checkpoint["class_names"] != data.class_names:
        raise PipelineError(f"{path} was trained on other classes than {data.root}; re-run its training stage")
    return checkpoint


def trained_on_device(checkpoint: dict, params: Params, name: str) -> tuple[nn.Module, StepContext, TransformSpec]:
    """A saved model ready to score images as it was trained to: on the device, at its precision (train_cnn's or
    train_vit's amp), the CNN in channels_last where it trained so; with its input transform. `name`: cnn or vit."""
    optim = params.train_cnn if name == "cnn" else params.train_vit
    spec = transform_spec(checkpoint["model_config"])
    ctx = make_context(params, optim.amp, name == "cnn" and params.train_cnn.channels_last, spec)
    model = load_trained(checkpoint).to(ctx.device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, ctx, spec
