"""The CNN's recipe: its config from params, then the training loop."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from petlab.core import distributed
from petlab.core.params import Params, TrainCNNParams, to_dict
from petlab.data.dataset import PreparedData
from petlab.data.transforms import TransformSpec
from petlab.models.registry import count_parameters, create_model
from petlab.train.loop import HISTORY_COLUMNS, EpochCallback, fit
from petlab.train.run import (
    TrainedModel,
    fit_selection,
    image_loader,
    log_hparams,
    make_context,
    tensorboard,
    transform_spec,
)

if TYPE_CHECKING:  # the stages make it; the stages that only evaluate or profile need not import it
    from petlab.core.resume import Resume


def cnn_config(p: TrainCNNParams, num_classes: int) -> dict:
    """The config a CNN is built from (petlab.models.registry.create_model) and its checkpoint records."""
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


def train_cnn(
    params: Params,
    data: PreparedData,
    log_dir: Path,
    resume: Resume | None = None,
    name: str = "train_cnn",
    on_epoch: EpochCallback | None = None,
) -> TrainedModel:
    """`resume`: where its end-of-epoch checkpoint is kept, and continued from (petlab/core/resume.py); `name` leads its
    progress lines; `on_epoch` is called after every epoch (petlab.train.loop.fit, progress_writer)."""
    p = params.train_cnn
    config = cnn_config(p, data.num_classes)
    spec = transform_spec(config)
    ctx = make_context(params.device, p.amp, p.channels_last, spec)
    model = create_model(config).to(ctx.device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader = image_loader(
        data, "train", spec, p.batch_size, True, ctx.device, p.augment, seed=params.seed, loader=params.loader
    )
    val_loader = image_loader(
        data, "val", spec, p.batch_size, False, ctx.device, seed=params.seed, loader=params.loader
    )
    with tensorboard(log_dir) as writer:
        result = fit(
            model,
            train_loader,
            val_loader,
            p,
            ctx,
            data.num_classes,
            writer=writer,
            hist_every=params.log.hist_every,
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
