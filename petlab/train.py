"""The one training loop both models use: train_one_epoch, validate, and fit around them."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from petlab import distributed
from petlab.data import TransformSpec
from petlab.metrics import classification_metrics, rounded
from petlab.params import OptimParams
from petlab.runtime import Precision

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "train_macro_f1",
                   "val_macro_f1", "val_top5_accuracy", "lr"]

SELECTION_RULE = "highest val macro-F1, ties broken by lower val loss"


def selection_key(val: dict[str, float]) -> tuple[float, float]:
    """What model selection maximises, for epochs and for a probe's regularisation alike (SELECTION_RULE).

    On a small val set many epochs give the same predictions, so the same macro-F1: keeping the earliest of
    them keeps an under-trained model. The val loss still tells them apart, and prefers the one that fits
    val better.
    """
    return val["macro_f1"], -val["loss"]


@dataclass
class StepContext:
    """Where and how batches run: shared by training, validation, prediction and profiling.

    `input_spec` normalises uint8 image batches into the model's input; batches of features need none.
    """

    device: torch.device
    precision: Precision
    channels_last: bool = False
    input_spec: TransformSpec | None = None

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        non_blocking = self.device.type == "cuda"
        # Layout first, while the batch is still uint8: a quarter of the bytes to rearrange.
        if self.channels_last and x.dim() == 4:
            x = x.to(self.device, non_blocking=non_blocking, memory_format=torch.channels_last)
        else:
            x = x.to(self.device, non_blocking=non_blocking)
        if x.dtype == torch.uint8:
            if self.input_spec is None:
                raise ValueError("a uint8 image batch reached a StepContext without an input_spec to normalise it")
            x = self.input_spec.normalize(x)
        return x


class LRSchedule:
    """A linear warmup over the first steps, then cosine decay per batch, or ReduceLROnPlateau per epoch.

    step() runs after every batch; epoch_end(val_loss) after every validation (only plateau uses it).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, optim: OptimParams, steps_per_epoch: int):
        total = max(1, optim.epochs * steps_per_epoch)
        self.warmup = int(round(optim.warmup_epochs * steps_per_epoch))
        self.steps = 0
        self.plateau = None
        if optim.scheduler == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=optim.plateau_factor, patience=optim.plateau_patience)

        def factor(step: int) -> float:
            if step < self.warmup:
                return (step + 1) / self.warmup
            if self.plateau is not None:
                return 1.0
            progress = (step - self.warmup) / max(1, total - self.warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        self.per_step = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def step(self) -> None:
        self.steps += 1
        # After warmup the plateau scheduler owns the lr; LambdaLR would reset it to the base lr.
        if self.plateau is None or self.steps <= self.warmup:
            self.per_step.step()

    def epoch_end(self, val_loss: float) -> None:
        if self.plateau is not None and self.steps >= self.warmup:
            self.plateau.step(val_loss)

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.per_step.optimizer.param_groups]


def make_optimizer(parameters: Iterable[nn.Parameter] | Iterable[dict], optim: OptimParams, steps_per_epoch: int):
    """AdamW and its LRSchedule. `parameters` may be groups ({"params": [...], "lr": x}) with their own lr."""
    groups = list(parameters)
    if not groups or not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    param_groups = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        lr = group.get("lr", optim.lr)
        # Weight decay on weights only: decaying norms and biases hurts and buys nothing.
        param_groups += [{"params": [p for p in params if p.dim() > 1], "weight_decay": optim.weight_decay, "lr": lr},
                         {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0, "lr": lr}]
    optimizer = torch.optim.AdamW(param_groups, lr=optim.lr)
    return optimizer, LRSchedule(optimizer, optim, steps_per_epoch)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer, loss_fn, ctx: StepContext,
               scaler: torch.amp.GradScaler | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns (loss, logits) detached."""
    x, y = ctx.to_device(x), y.to(ctx.device, non_blocking=True)
    with ctx.precision.autocast(ctx.device):
        logits = model(x)
    loss = loss_fn(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), logits.detach()


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer, scheduler, loss_fn, ctx: StepContext,
                    num_classes: int, scaler=None, desc: str = "train") -> dict[str, float]:
    model.train()
    losses, all_logits, all_labels = [], [], []
    for x, y in tqdm(loader, desc=desc, leave=False, unit="batch", disable=distributed.tqdm_disable()):
        loss, logits = train_step(model, x, y, optimizer, loss_fn, ctx, scaler)
        scheduler.step()
        losses.append(loss.float().cpu() * len(y))
        all_logits.append(logits.float().cpu())
        all_labels.append(y)
    distributed.share_buffers(model)
    # Every rank's samples, so the metrics are those of the whole epoch.
    logits = distributed.gather_shards(torch.cat(all_logits))
    labels = distributed.gather_shards(torch.cat(all_labels))
    metrics = classification_metrics(logits, labels, num_classes)
    metrics["loss"] = float(distributed.sum_over_ranks(torch.stack(losses).sum()) / len(labels))
    return metrics


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, ctx: StepContext, desc: str = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (fp32, on the CPU) and labels for a whole loader: logits, or features for a backbone.

    Filled into tensors made once: collecting batches and concatenating them would need twice
    the memory of the result, which for a feature cache is the whole cache.
    """
    model.eval()
    n = len(loader.dataset)
    outputs, labels, filled = None, torch.empty(n, dtype=torch.long), 0
    for x, y in tqdm(loader, desc=desc, leave=False, unit="batch", disable=distributed.tqdm_disable()):
        with ctx.precision.autocast(ctx.device):
            out = model(ctx.to_device(x))
        if outputs is None:
            outputs = torch.empty(n, *out.shape[1:], dtype=torch.float32)
        outputs[filled:filled + len(y)] = out
        labels[filled:filled + len(y)] = y
        filled += len(y)
    outputs, labels = outputs[:filled], labels[:filled]
    if isinstance(loader.sampler, DistributedSampler):  # this rank's shard: the whole split from all ranks
        outputs, labels = distributed.gather_shards(outputs)[:n], distributed.gather_shards(labels)[:n]
    return outputs, labels


def validate(model: nn.Module, loader: DataLoader, loss_fn, ctx: StepContext, num_classes: int) -> dict[str, float]:
    logits, labels = predict(model, loader, ctx, desc="validate")
    metrics = classification_metrics(logits, labels, num_classes)
    metrics["loss"] = float(loss_fn(logits, labels))
    return metrics


@dataclass
class FitResult:
    best_epoch: int
    best_val: dict[str, float]
    best_state: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    steps_per_epoch: int = 0
    # Wall seconds of each epoch (training and validation): kept out of `history`, which must repeat byte for byte.
    epoch_seconds: list[float] = field(default_factory=list)


def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, optim: OptimParams, ctx: StepContext,
        num_classes: int, writer=None, hist_every: int = 0, eval_model: nn.Module | None = None,
        name: str = "model", param_groups: list[dict] | None = None) -> FitResult:
    """Train for optim.epochs, keeping the state that is best by SELECTION_RULE on validation.

    `eval_model` validates instead of `model` when validation runs on other inputs (the probe's head
    on cached features while training on augmented images); it must share the trained weights.
    `param_groups` gives parts of the model their own lr (a fine-tuned backbone); default: all at optim.lr.
    """
    eval_model = eval_model or model
    train_model = distributed.wrap(model)  # `model` itself: the same weights, state_dict keys unprefixed
    n_train = len(train_loader.dataset)
    if train_loader.batch_size > n_train and distributed.is_main():  # then the whole split is one batch
        print(f"{name}: WARNING: batch_size {train_loader.batch_size} is larger than the {n_train} training "
              f"samples: one full-batch step per epoch, {optim.epochs} steps in all", flush=True)
    optimizer, scheduler = make_optimizer(param_groups or model.parameters(), optim, len(train_loader))
    scaler = torch.amp.GradScaler(ctx.device.type) if ctx.precision.grad_scaling else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss()
    best: FitResult | None = None
    best_key = None
    history, epoch_seconds = [], []
    epochs = tqdm(range(1, optim.epochs + 1), desc=f"{name}: epochs", unit="epoch", disable=distributed.tqdm_disable())
    for epoch in epochs:
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_m = train_one_epoch(train_model, train_loader, optimizer, scheduler, loss_fn, ctx, num_classes,
                                  scaler, desc=f"{name}: epoch {epoch}")
        val_m = validate(eval_model, val_loader, val_loss_fn, ctx, num_classes)
        scheduler.epoch_end(val_m["loss"])
        epoch_seconds.append(round(time.perf_counter() - started, 3))
        row = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in train_m.items() if k != "top5_accuracy"},
               **{f"val_{k}": v for k, v in val_m.items()}}
        history.append(rounded(row))
        epochs.set_postfix(val_acc=f"{val_m['accuracy']:.3f}", val_f1=f"{val_m['macro_f1']:.3f}")
        # No progress bar (not a terminal: CI, logs): one line per epoch instead, from rank 0 only.
        if epochs.disable and distributed.is_main():
            print(f"{name}: epoch {epoch}/{optim.epochs} train_loss {train_m['loss']:.4f} val_loss "
                  f"{val_m['loss']:.4f} val_accuracy {val_m['accuracy']:.4f} val_macro_f1 {val_m['macro_f1']:.4f}",
                  flush=True)
        if writer is not None:
            log_epoch(writer, model, epoch, train_m, val_m, lr, hist_every)
        if best is None or selection_key(val_m) > best_key:
            best, best_key = FitResult(epoch, rounded(val_m), copy.deepcopy(model.state_dict())), selection_key(val_m)
    best.history, best.steps_per_epoch, best.epoch_seconds = history, len(train_loader), epoch_seconds
    return best


def log_epoch(writer, model: nn.Module, epoch: int, train_m: dict, val_m: dict, lr: float, hist_every: int) -> None:
    for key in ("loss", "accuracy", "macro_f1"):
        writer.add_scalar(f"{key}/train", train_m[key], epoch)
        writer.add_scalar(f"{key}/val", val_m[key], epoch)
    writer.add_scalar("lr", lr, epoch)
    if hist_every and epoch % hist_every == 0:
        for pname, p in model.named_parameters():
            if p.requires_grad:
                writer.add_histogram(f"weights/{pname}", p.detach().float().cpu(), epoch)
                if p.grad is not None:
                    writer.add_histogram(f"gradients/{pname}", p.grad.detach().float().cpu(), epoch)
    writer.flush()
