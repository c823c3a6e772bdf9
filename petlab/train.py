"""The one training loop both models use: train_one_epoch, validate, and fit around them."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from petlab.metrics import classification_metrics, rounded
from petlab.params import OptimParams
from petlab.runtime import Precision

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "train_macro_f1",
                   "val_macro_f1", "val_top5_accuracy", "lr"]


@dataclass
class StepContext:
    """Where and how batches run: shared by training, validation, prediction and profiling."""

    device: torch.device
    precision: Precision
    channels_last: bool = False

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        non_blocking = self.device.type == "cuda"
        if self.channels_last and x.dim() == 4:
            return x.to(self.device, non_blocking=non_blocking, memory_format=torch.channels_last)
        return x.to(self.device, non_blocking=non_blocking)


def make_optimizer(parameters: Iterable[nn.Parameter], optim: OptimParams, steps_per_epoch: int):
    """AdamW with a linear warmup then cosine decay, stepped every batch."""
    parameters = [p for p in parameters if p.requires_grad]
    # Weight decay on weights only: decaying norms and biases hurts and buys nothing.
    decay = [p for p in parameters if p.dim() > 1]
    no_decay = [p for p in parameters if p.dim() <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=optim.lr)
    total = max(1, optim.epochs * steps_per_epoch)
    warmup = int(round(optim.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
    for x, y in tqdm(loader, desc=desc, leave=False, unit="batch", disable=None):
        loss, logits = train_step(model, x, y, optimizer, loss_fn, ctx, scaler)
        scheduler.step()
        losses.append(loss.float().cpu() * len(y))
        all_logits.append(logits.float().cpu())
        all_labels.append(y)
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    metrics = classification_metrics(logits, labels, num_classes)
    metrics["loss"] = float(torch.stack(losses).sum() / len(labels))
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
    for x, y in tqdm(loader, desc=desc, leave=False, unit="batch", disable=None):
        with ctx.precision.autocast(ctx.device):
            out = model(ctx.to_device(x))
        if outputs is None:
            outputs = torch.empty(n, *out.shape[1:], dtype=torch.float32)
        outputs[filled:filled + len(y)] = out
        labels[filled:filled + len(y)] = y
        filled += len(y)
    return outputs[:filled], labels[:filled]


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


def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, optim: OptimParams, ctx: StepContext,
        num_classes: int, writer=None, hist_every: int = 0, eval_model: nn.Module | None = None,
        name: str = "model") -> FitResult:
    """Train for optim.epochs, keeping the state with the best validation macro-F1 (earliest on ties).

    `eval_model` validates instead of `model` when validation runs on other inputs (the probe's head
    on cached features while training on augmented images); it must share the trained weights.
    """
    eval_model = eval_model or model
    optimizer, scheduler = make_optimizer(model.parameters(), optim, len(train_loader))
    scaler = torch.amp.GradScaler(ctx.device.type) if ctx.precision.grad_scaling else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss()
    best: FitResult | None = None
    history = []
    epochs = tqdm(range(1, optim.epochs + 1), desc=f"{name}: epochs", unit="epoch", disable=None)
    for epoch in epochs:
        lr = optimizer.param_groups[0]["lr"]
        train_m = train_one_epoch(model, train_loader, optimizer, scheduler, loss_fn, ctx, num_classes,
                                  scaler, desc=f"{name}: epoch {epoch}")
        val_m = validate(eval_model, val_loader, val_loss_fn, ctx, num_classes)
        row = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in train_m.items() if k != "top5_accuracy"},
               **{f"val_{k}": v for k, v in val_m.items()}}
        history.append(rounded(row))
        epochs.set_postfix(val_acc=f"{val_m['accuracy']:.3f}", val_f1=f"{val_m['macro_f1']:.3f}")
        if epochs.disable:  # no progress bar (not a terminal: CI, logs): one line per epoch instead
            print(f"{name}: epoch {epoch}/{optim.epochs} train_loss {train_m['loss']:.4f} val_loss "
                  f"{val_m['loss']:.4f} val_accuracy {val_m['accuracy']:.4f} val_macro_f1 {val_m['macro_f1']:.4f}",
                  flush=True)
        if writer is not None:
            log_epoch(writer, model, epoch, train_m, val_m, lr, hist_every)
        if best is None or val_m["macro_f1"] > best.best_val["macro_f1"]:
            best = FitResult(epoch, rounded(val_m), copy.deepcopy(model.state_dict()))
    best.history = history
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
