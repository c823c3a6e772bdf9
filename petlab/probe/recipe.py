"""The probe's recipe: the frozen backbone's features, then the head by the route its params choose (L-BFGS on cached features, or the training loop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from petlab.core import distributed
from petlab.core.checksums import file_digest
from petlab.core.device import Precision
from petlab.core.errors import PipelineError
from petlab.core.params import Params, TrainViTParams, to_dict
from petlab.core.runtime import Stopwatch
from petlab.data.dataset import PreparedData
from petlab.data.transforms import TransformSpec
from petlab.models.backbone import FrozenBackboneClassifier, load_backbone, load_pretrained_backbone, timm_data_config
from petlab.models.registry import count_parameters
from petlab.probe.features import extract_features, save_feature_cache
from petlab.probe.logistic import SWEEP_COLUMNS, fit_logistic_probe
from petlab.train.loop import HISTORY_COLUMNS, EpochCallback, StepContext, fit
from petlab.train.run import (
    TrainedModel,
    fit_selection,
    image_loader,
    log_hparams,
    make_context,
    tensor_loader,
    tensorboard,
    transform_spec,
)
from petlab.train.state import FitResult

if TYPE_CHECKING:  # the stages make it; the stages that only evaluate or profile need not import it
    from petlab.core.resume import Resume


def build_probe(
    p: TrainViTParams, num_classes: int, backbone_file: Path | None = None
) -> tuple[FrozenBackboneClassifier, dict]:
    """The backbone (frozen but for train_vit.unfreeze) with a fresh head, and the config that rebuilds it.

    The stages load the backbone from `backbone_file`, the weights the backbone_weights stage resolved and DVC
    versions; without one (tests, the benchmark) it is resolved here from train_vit's params.
    info.feature_cache says whether features of the backbone are fixed, so cached ones may stand for
    the images; with a fine-tuned backbone the evaluate stage must run the images through the model.
    """
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


def train_probe(
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
    (petlab/core/resume.py); the L-BFGS probe and the loop on cached features take seconds, and restart. `on_epoch`: as
    train_cnn's, for the routes with epochs."""
    p = params.train_vit
    model, config = build_probe(params.train_vit, data.num_classes, backbone_file)
    spec = transform_spec(config)
    ctx = make_context(params.device, p.amp, channels_last=False, input_spec=spec)
    model.to(ctx.device)
    # The splits each route reads from the cache: a fine-tuned backbone's features change while it trains, so none;
    # the head on augmented images sees new train images at every step, so only val and test (never augmented).
    splits = {"fine_tuned": (), "augmented_images": ("val", "test"), "cached_features": ("train", "val", "test")}
    extraction = Stopwatch()
    cached = {
        s: extract_features(
            model.backbone,
            image_loader(
                data, s, spec, p.feature_batch_size, False, ctx.device, seed=params.seed, loader=params.loader
            ),
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
    val_loader = tensor_loader(
        TensorDataset(*cached["val"]), p.batch_size, False, seed=params.seed, loader=params.loader
    )
    train_loader = tensor_loader(
        TensorDataset(*cached["train"]), p.batch_size, True, seed=params.seed, loader=params.loader
    )
    return fit_by_loop(model.head, train_loader, val_loader, params, head_ctx, num_classes, writer, on_epoch=on_epoch)


def fit_by_loop(
    trained: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    params: Params,
    ctx: StepContext,
    num_classes: int,
    writer: SummaryWriter | None,
    **fit_options,
) -> ProbeFit:
    """A route through the training loop (petlab.train.loop.fit, with `fit_options`): `trained` (the head, or the
    whole model) trained on train_vit's recipe and left holding the state kept on val."""
    result = fit(
        trained,
        train_loader,
        val_loader,
        params.train_vit,
        ctx,
        num_classes,
        writer=writer,
        hist_every=params.log.hist_every,
        name="train_vit",
        **fit_options,
    )
    trained.load_state_dict(result.best_state)
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
    val_loader = tensor_loader(
        TensorDataset(*cached["val"]), p.batch_size, False, seed=params.seed, loader=params.loader
    )
    train_loader = image_loader(
        data, "train", spec, p.batch_size, True, ctx.device, seed=params.seed, loader=params.loader
    )
    return fit_by_loop(
        model,
        train_loader,
        val_loader,
        params,
        ctx,
        data.num_classes,
        writer,
        eval_model=model.head,
        resume=resume,
        on_epoch=on_epoch,
    )


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
    val_loader = image_loader(
        data, "val", spec, p.batch_size, False, ctx.device, seed=params.seed, loader=params.loader
    )
    augment = "rrc" if p.augment else "none"
    train_loader = image_loader(
        data, "train", spec, p.batch_size, True, ctx.device, augment, seed=params.seed, loader=params.loader
    )
    groups = [
        {"params": list(model.head.parameters())},
        {"params": [q for q in model.backbone.parameters() if q.requires_grad], "lr": p.backbone_lr},
    ]
    return fit_by_loop(
        model,
        train_loader,
        val_loader,
        params,
        ctx,
        data.num_classes,
        writer,
        param_groups=groups,
        resume=resume,
        on_epoch=on_epoch,
    )


def probe_ranks(params: Params) -> int:
    """How many ranks train the probe: dist.nproc_per_node for the image routes (augment, unfreeze), one for the
    head on cached features (refused under torchrun, which would start it several times). Says, once, which params
    changed but are not used by the route train_vit takes."""
    p = params.train_vit
    if not p.image_route and distributed.launched_by_torchrun():
        raise PipelineError(
            "the probe on cached features trains in one process; run it without torchrun "
            "(several ranks serve train_vit.augment or train_vit.unfreeze)"
        )
    ranks = params.dist.nproc_per_node if p.image_route else 1
    if ranks < params.dist.nproc_per_node:
        print(
            "train_vit: the head on cached features trains in one process (dist.nproc_per_node serves "
            "the augment and unfreeze routes)"
        )
    unused = p.unused_changes()
    if unused and not distributed.launched_by_torchrun():  # once, before any ranks start
        route = (
            "the L-BFGS probe (set train_vit.solver: sgd to train the head by the loop)"
            if p.fits_lbfgs
            else "the training loop (c_grid and max_iter serve only solver lbfgs with a linear head on cached "
            "features: no augment, unfreeze or mlp head)"
        )
        print(f"train_vit: WARNING: {', '.join(f'train_vit.{k}' for k in unused)} changed but not used by {route}")
    return ranks
