"""The one training loop both models use: train_one_epoch, validate, and fit around them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from petlab.core import distributed
from petlab.core.device import Precision
from petlab.core.metrics import classification_metrics
from petlab.core.params import OptimParams
from petlab.data.transforms import TransformSpec
from petlab.train.state import FitResult, TrainingState

if TYPE_CHECKING:  # fit only calls its load and save: the loop knows nothing of stages or dvc.yaml
    from petlab.core.resume import Resume

# timm warns that a cosine of one update (after warmup) has no effect; it has: the lr falls to 0 after it.
logging.getLogger("timm.scheduler.cosine_lr").setLevel(logging.ERROR)

HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "val_loss",
    "train_accuracy",
    "val_accuracy",
    "train_macro_f1",
    "val_macro_f1",
    "val_top5_accuracy",
    "lr",
]


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
        """A batch of images, features or labels on the device. Asynchronous (non_blocking) on CUDA only: torch has
        open reports of non-blocking CPU-to-MPS copies that arrive corrupted."""
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
    """A linear warmup over the first updates, then cosine decay per update, or ReduceLROnPlateau per epoch.

    timm's CosineLRScheduler gives the lr from the count of optimizer updates (t_in_epochs=False), so it holds
    no state of its own; after the warmup, plateau hands the lr to torch's ReduceLROnPlateau, which cuts it when
    the val loss stalls (epoch_end). timm's PlateauLRScheduler warms up per epoch only, and its state_dict
    leaves out the patience counters a resumed run needs.

    The schedule counts the updates the optimizer makes (a hook on optimizer.step), not the batches: GradScaler
    skips the step of a batch whose fp16 gradients overflowed (while its scale settles, in the first steps), and
    such a batch must not move the schedule on. That needs an optimizer that GradScaler does not step at all when
    it skips (fused optimizers check for inf themselves): make_optimizer's AdamW.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, optim: OptimParams, steps_per_epoch: int):
        total = max(1, optim.epochs * steps_per_epoch)
        self.warmup = int(round(optim.warmup_epochs * steps_per_epoch))
        self.updates = 0
        self.warmup_cosine = CosineLRScheduler(
            optimizer,
            t_initial=max(1, total - self.warmup),
            warmup_t=self.warmup,
            warmup_prefix=True,
            t_in_epochs=False,
        )
        self.plateau = None
        if optim.scheduler == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=optim.plateau_factor, patience=optim.plateau_patience
            )
        self.warmup_cosine.step_update(self.schedule_t(0))  # the lr of the first update
        optimizer.register_step_post_hook(self.after_update)

    def schedule_t(self, updates: int) -> int:
        """timm's t for the next update, after `updates` of them.

        The lr reaches its peak on the last warmup update and the cosine starts from the peak on the next one
        (two updates at the peak). timm's warmup ends where its cosine starts, at t = warmup_t, so during the
        warmup t counts the update about to be made, and afterwards those made.
        """
        return updates + 1 if updates < self.warmup else updates

    def after_update(self, optimizer, args, kwargs) -> None:
        self.updates += 1
        # After warmup the plateau scheduler owns the lr; the cosine schedule would reset it to the base lr.
        if self.plateau is None or self.updates <= self.warmup:
            self.warmup_cosine.step_update(self.schedule_t(self.updates))

    def epoch_end(self, val_loss: float) -> None:
        if self.plateau is not None and self.updates >= self.warmup:
            self.plateau.step(val_loss)

    def state_dict(self) -> dict:
        """The count of updates and the plateau's counters; the lr itself is in the optimizer's state."""
        return {"updates": self.updates, "plateau": self.plateau.state_dict() if self.plateau is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])


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
        param_groups += [
            {"params": [p for p in params if p.dim() > 1], "weight_decay": optim.weight_decay, "lr": lr},
            {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0, "lr": lr},
        ]
    optimizer = torch.optim.AdamW(param_groups, lr=optim.lr)
    return optimizer, LRSchedule(optimizer, optim, steps_per_epoch)


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer,
    loss_fn,
    ctx: StepContext,
    scaler: torch.amp.GradScaler | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns (loss, logits) detached, on the device. With `scaler` the optimizer
    may skip the step (gradients that overflowed); its LRSchedule then stays where it is."""
    x, y = ctx.to_device(x), ctx.to_device(y)
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


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer,
    loss_fn,
    ctx: StepContext,
    num_classes: int,
    scaler=None,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over the loader. Losses and logits stay on the device until the epoch ends: copying them to the
    host every step would wait for the step to finish, and leave a GPU idle until the next one is queued."""
    model.train()
    losses, all_logits, all_labels = [], [], []
    for x, y in tqdm(loader, desc=desc, leave=False, unit="batch", disable=distributed.tqdm_disable()):
        loss, logits = train_step(model, x, y, optimizer, loss_fn, ctx, scaler)
        losses.append(loss.float() * len(y))
        all_logits.append(logits.float())
        all_labels.append(y)
    distributed.share_buffers(model)
    # Every rank's samples, so the metrics are those of the whole epoch.
    logits = distributed.gather_shards(torch.cat(all_logits).cpu())
    labels = distributed.gather_shards(torch.cat(all_labels))
    metrics = classification_metrics(logits, labels, num_classes)
    metrics["loss"] = float(distributed.sum_over_ranks(torch.stack(losses).sum().cpu()) / len(labels))
    return metrics


@torch.inference_mode()
def predict(
    model: nn.Module, loader: DataLoader, ctx: StepContext, desc: str = "predict"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (fp32, on the CPU) and labels for a whole loader: logits, or features for a backbone.

    Filled into tensors made once: collecting batches and concatenating them would need twice
    the memory of the result, which for a feature cache is the whole cache. On CUDA that tensor is in
    pinned memory and each batch's outputs are copied into it asynchronously: the device holds one batch
    of outputs at a time, and nothing waits for the GPU until the last batch is in.
    """
    model.eval()
    n = len(loader.dataset)
    pinned = ctx.device.type == "cuda"
    outputs, labels, filled = None, torch.empty(n, dtype=torch.long), 0
    for x, y in tqdm(loader, desc=desc, leave=False, unit="batch", disable=distributed.tqdm_disable()):
        with ctx.precision.autocast(ctx.device):
            out = model(ctx.to_device(x))
        if outputs is None:
            outputs = torch.empty(n, *out.shape[1:], dtype=torch.float32, pin_memory=pinned)
        outputs[filled : filled + len(y)].copy_(out.float(), non_blocking=pinned)
        labels[filled : filled + len(y)] = y
        filled += len(y)
    if pinned:
        torch.cuda.current_stream(ctx.device).synchronize()  # the asynchronous copies have landed
    outputs, labels = outputs[:filled], labels[:filled]
    if isinstance(loader.sampler, DistributedSampler):  # this rank's shard: the whole split from all ranks
        outputs, labels = distributed.gather_shards(outputs)[:n], distributed.gather_shards(labels)[:n]
    return outputs, labels


def validate(model: nn.Module, loader: DataLoader, loss_fn, ctx: StepContext, num_classes: int) -> dict[str, float]:
    logits, labels = predict(model, loader, ctx, desc="validate")
    metrics = classification_metrics(logits, labels, num_classes)
    metrics["loss"] = float(loss_fn(logits, labels))
    return metrics


# Called after every epoch with the history so far and the best so far (fit's `on_epoch`).
EpochCallback = Callable[[list[dict], "FitResult"], None]


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    optim: OptimParams,
    ctx: StepContext,
    num_classes: int,
    *,
    writer=None,
    hist_every: int = 0,
    eval_model: nn.Module | None = None,
    name: str = "model",
    param_groups: list[dict] | None = None,
    resume: Resume | None = None,
    on_epoch: EpochCallback | None = None,
) -> FitResult:
    """Train for optim.epochs, keeping the state that is best by SELECTION_RULE on validation.

    `eval_model` validates instead of `model` when validation runs on other inputs (the probe's head
    on cached features while training on augmented images); it must share the trained weights.
    `param_groups` gives parts of the model their own lr (a fine-tuned backbone); default: all at optim.lr.
    `resume`: where the state after every epoch is kept, and continued from by the next call after an
    interruption (petlab.train.state.TrainingState); the result is the same, byte for byte, as that of an
    uninterrupted call. `on_epoch(history, best)`: called on rank 0 after every epoch with the rows so far and the
    best so far (the stages write them, so DVC's views move while a model trains).
    """
    warn_full_batch(train_loader, optim.epochs, name)
    optimizer, scheduler = make_optimizer(param_groups or model.parameters(), optim, len(train_loader))
    scaler = ctx.precision.grad_scaler(ctx.device)
    state = TrainingState(model, optimizer, scheduler, scaler, {"train": train_loader, "val": val_loader}, ctx)
    if state.resume_from(resume) and writer is not None:
        for row in state.history:
            log_epoch(writer, model, row, 0)  # the logs of the epochs before, but for their histograms
    state.restore_generators()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss()
    train_model = distributed.wrap(model)  # `model` itself: the same weights, state_dict keys unprefixed
    epochs = tqdm(
        range(state.epoch + 1, optim.epochs + 1),
        desc=f"{name}: epochs",
        unit="epoch",
        disable=distributed.tqdm_disable(),
    )
    for epoch in epochs:
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_m = train_one_epoch(
            train_model, train_loader, optimizer, loss_fn, ctx, num_classes, scaler, desc=f"{name}: epoch {epoch}"
        )
        val_m = validate(eval_model or model, val_loader, val_loss_fn, ctx, num_classes)
        scheduler.epoch_end(val_m["loss"])
        row = state.end_epoch(epoch, lr, train_m, val_m, round(time.perf_counter() - started, 3))
        state.save(resume)  # before the epoch's line: once it shows, it is kept
        if on_epoch is not None and distributed.is_main():
            on_epoch(state.history, state.best)
        show_epoch(epochs, name, epoch, optim.epochs, train_m, val_m)
        if writer is not None:
            log_epoch(writer, model, row, hist_every)
    return state.result()


def warn_full_batch(train_loader: DataLoader, epochs: int, name: str) -> None:
    n_train = len(train_loader.dataset)
    if train_loader.batch_size > n_train and distributed.is_main():  # then the whole split is one batch
        print(
            f"{name}: WARNING: batch_size {train_loader.batch_size} is larger than the {n_train} training "
            f"samples: one full-batch step per epoch, {epochs} steps in all",
            flush=True,
        )


def show_epoch(epochs: tqdm, name: str, epoch: int, total: int, train_m: dict, val_m: dict) -> None:
    epochs.set_postfix(val_acc=f"{val_m['accuracy']:.3f}", val_f1=f"{val_m['macro_f1']:.3f}")
    # No progress bar (not a terminal: CI, logs): one line per epoch instead, from rank 0 only.
    if epochs.disable and distributed.is_main():
        print(
            f"{name}: epoch {epoch}/{total} train_loss {train_m['loss']:.4f} val_loss "
            f"{val_m['loss']:.4f} val_accuracy {val_m['accuracy']:.4f} val_macro_f1 {val_m['macro_f1']:.4f}",
            flush=True,
        )


def log_epoch(writer, model: nn.Module, row: dict, hist_every: int) -> None:
    """One epoch's row of the history in TensorBoard, with the weights' and gradients' histograms every
    `hist_every` epochs."""
    epoch = row["epoch"]
    for key in ("loss", "accuracy", "macro_f1"):
        writer.add_scalar(f"{key}/train", row[f"train_{key}"], epoch)
        writer.add_scalar(f"{key}/val", row[f"val_{key}"], epoch)
    writer.add_scalar("lr", row["lr"], epoch)
    if hist_every and epoch % hist_every == 0:
        for pname, p in model.named_parameters():
            if p.requires_grad:
                writer.add_histogram(f"weights/{pname}", p.detach().float().cpu(), epoch)
                if p.grad is not None:
                    writer.add_histogram(f"gradients/{pname}", p.grad.detach().float().cpu(), epoch)
    writer.flush()
