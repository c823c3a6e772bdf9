"""The one training loop both models use: train_one_epoch, validate, and fit around them."""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from petlab.core import distributed
from petlab.core.device import Precision
from petlab.core.metrics import classification_metrics, rounded
from petlab.core.params import OptimParams
from petlab.data.loaders import EpochSampler
from petlab.data.transforms import TransformSpec

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


@dataclass
class FitResult:
    best_epoch: int
    best_val: dict[str, float]
    best_state: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    steps_per_epoch: int = 0
    # Wall seconds of each epoch (training and validation): kept out of `history`, which must repeat byte for byte.
    epoch_seconds: list[float] = field(default_factory=list)


# Called after every epoch with the history so far and the best so far (fit's `on_epoch`).
EpochCallback = Callable[[list[dict], "FitResult"], None]


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    optim: OptimParams,
    ctx: StepContext,
    num_classes: int,
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
    interruption (petlab/core/resume.py); the result is the same, byte for byte, as that of an uninterrupted call.
    `on_epoch(history, best)`: called on rank 0 after every epoch with the rows so far and the best so far
    (the stages write them, so DVC's views move while a model trains).
    """
    eval_model = eval_model or model
    n_train = len(train_loader.dataset)
    if train_loader.batch_size > n_train and distributed.is_main():  # then the whole split is one batch
        print(
            f"{name}: WARNING: batch_size {train_loader.batch_size} is larger than the {n_train} training "
            f"samples: one full-batch step per epoch, {optim.epochs} steps in all",
            flush=True,
        )
    optimizer, scheduler = make_optimizer(param_groups or model.parameters(), optim, len(train_loader))
    scaler = ctx.precision.grad_scaler(ctx.device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss()
    loaders = {"train": train_loader, "val": val_loader}
    # What a checkpoint must have been made on besides the stage's inputs: results differ across these.
    run = {
        "device": ctx.device.type,
        "precision": ctx.precision.name,
        "channels_last": ctx.channels_last,
        "ranks": distributed.world_size(),
        "torch": str(torch.__version__),
        "steps_per_epoch": len(train_loader),
        "rng_per_rank": True,
    }
    saved = load_training_state(resume, run)
    best: FitResult | None = None
    best_key = None
    history, epoch_seconds, done = [], [], 0
    if saved is not None:
        done, history, epoch_seconds = saved["epoch"], saved["history"], saved["epoch_seconds"]
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["schedule"])
        if scaler is not None:
            scaler.load_state_dict(saved["scaler"])
        kept = saved["best"]
        best, best_key = FitResult(kept["epoch"], kept["val"], kept["state"]), tuple(kept["key"])
        for split, loader in loaders.items():
            if isinstance(loader.sampler, EpochSampler):  # the next epoch's order and augmentations
                loader.sampler.epoch = saved["sampler_epochs"][split]
        resume.say(f"resumed after epoch {done} ({resume.path})")
        for row in history if writer is not None else ():
            log_epoch(writer, model, row, 0)  # the logs of the epochs before, but for their histograms
        # Last: nothing else may draw random numbers before the next epoch. Each rank its own (they draw apart).
        set_rng_states(saved["rng"][distributed.rank()], ctx.device)
    train_model = distributed.wrap(model)  # `model` itself: the same weights, state_dict keys unprefixed
    epochs = tqdm(
        range(done + 1, optim.epochs + 1), desc=f"{name}: epochs", unit="epoch", disable=distributed.tqdm_disable()
    )
    for epoch in epochs:
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_m = train_one_epoch(
            train_model, train_loader, optimizer, loss_fn, ctx, num_classes, scaler, desc=f"{name}: epoch {epoch}"
        )
        val_m = validate(eval_model, val_loader, val_loss_fn, ctx, num_classes)
        scheduler.epoch_end(val_m["loss"])
        epoch_seconds.append(round(time.perf_counter() - started, 3))
        row = rounded(
            {
                "epoch": epoch,
                "lr": lr,
                **{f"train_{k}": v for k, v in train_m.items() if k != "top5_accuracy"},
                **{f"val_{k}": v for k, v in val_m.items()},
            }
        )
        history.append(row)
        if best is None or selection_key(val_m) > best_key:
            best, best_key = FitResult(epoch, rounded(val_m), copy.deepcopy(model.state_dict())), selection_key(val_m)
        # Every rank's generators, gathered on all of them (a collective), written by rank 0 alone.
        rng = distributed.gather_objects(rng_states(ctx.device)) if resume is not None else None
        if resume is not None and distributed.is_main():  # saved before the epoch's line: once it shows, it is kept
            resume.save(
                run,
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": rng,
                    "history": history,
                    "epoch_seconds": epoch_seconds,
                    "sampler_epochs": {
                        split: getattr(loader.sampler, "epoch", None) for split, loader in loaders.items()
                    },
                    "best": {
                        "epoch": best.best_epoch,
                        "val": best.best_val,
                        "key": list(best_key),
                        "state": best.best_state,
                    },
                },
            )
        if on_epoch is not None and distributed.is_main():
            on_epoch(history, best)
        epochs.set_postfix(val_acc=f"{val_m['accuracy']:.3f}", val_f1=f"{val_m['macro_f1']:.3f}")
        # No progress bar (not a terminal: CI, logs): one line per epoch instead, from rank 0 only.
        if epochs.disable and distributed.is_main():
            print(
                f"{name}: epoch {epoch}/{optim.epochs} train_loss {train_m['loss']:.4f} val_loss "
                f"{val_m['loss']:.4f} val_accuracy {val_m['accuracy']:.4f} val_macro_f1 {val_m['macro_f1']:.4f}",
                flush=True,
            )
        if writer is not None:
            log_epoch(writer, model, row, hist_every)
    best.history, best.steps_per_epoch, best.epoch_seconds = history, len(train_loader), epoch_seconds
    return best


def load_training_state(resume: Resume | None, run: dict) -> dict | None:
    """The state a checkpoint holds, if it was made from this run's inputs, on every rank or on none."""
    saved = resume.load(run) if resume is not None else None
    if distributed.world_size() > 1:  # a rank that cannot read it (another node's disk) would train apart
        epochs = distributed.gather_shards(torch.tensor([saved["epoch"] if saved is not None else -1]))
        if len(set(epochs.tolist())) > 1:
            resume.say(
                "starting from scratch: the ranks did not all find the same checkpoint "
                f"(after epochs {sorted(set(epochs.tolist()))}, -1: none)"
            )
            return None
    return saved


def rng_states(device: torch.device) -> dict:
    """Every random number generator training draws from (dropout, mostly), in forms torch.load(weights_only) reads."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":  # this rank's GPU
        states["cuda"] = torch.cuda.get_rng_state(device)
    if device.type == "mps":
        states["mps"] = torch.mps.get_rng_state()
    return states


def set_rng_states(states: dict, device: torch.device) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
    if device.type == "mps":
        torch.mps.set_rng_state(states["mps"])


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
