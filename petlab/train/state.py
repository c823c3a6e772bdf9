"""What one fit carries from epoch to epoch (the model, its optimiser, schedule and gradient scaler, the loaders'
epochs, the history, the best so far), and so what its checkpoint after each epoch holds: saved to a Resume after
every epoch and restored from it, so that a stopped fit continues as if it had not stopped (petlab/core/resume.py
says when a checkpoint is used)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from petlab.core import distributed
from petlab.core.metrics import rounded
from petlab.core.resume import Resume, rng_states, set_rng_states
from petlab.data.loaders import EpochSampler

if TYPE_CHECKING:  # the loop's context: loop imports this module
    from petlab.train.loop import StepContext

SELECTION_RULE = "highest val macro-F1, ties broken by lower val loss"


def selection_key(val: dict[str, float]) -> tuple[float, float]:
    """What model selection maximises, for epochs and for a probe's regularisation alike (SELECTION_RULE).

    On a small val set many epochs give the same predictions, so the same macro-F1: keeping the earliest of
    them keeps an under-trained model. The val loss still tells them apart, and prefers the one that fits
    val better.
    """
    return val["macro_f1"], -val["loss"]


@dataclass
class FitResult:
    best_epoch: int
    best_val: dict[str, float]
    best_state: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    steps_per_epoch: int = 0
    # Wall seconds of each epoch (training and validation): kept out of `history`, which must repeat byte for byte.
    epoch_seconds: list[float] = field(default_factory=list)


@dataclass
class TrainingState:
    """One fit's state after its last finished epoch (`epoch`), and its inputs' record (`run`) a checkpoint must
    match besides the stage's."""

    model: nn.Module
    optimizer: Any
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    loaders: dict[str, DataLoader]
    ctx: StepContext
    epoch: int = 0  # the epochs done
    history: list[dict] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best: FitResult | None = None
    best_key: tuple | None = None
    _generators: dict | None = None  # a checkpoint's generators, restored last (restore_generators)

    @property
    def run(self) -> dict:
        """What a checkpoint must have been made on besides the stage's inputs: results differ across these."""
        return {
            "device": self.ctx.device.type,
            "precision": self.ctx.precision.name,
            "channels_last": self.ctx.channels_last,
            "ranks": distributed.world_size(),
            "torch": str(torch.__version__),
            "steps_per_epoch": len(self.loaders["train"]),
            "rng_per_rank": True,
        }

    def resume_from(self, resume: Resume | None) -> bool:
        """Restore the state after the last epoch a checkpoint of this run's inputs holds; False where none does."""
        saved = load_training_state(resume, self.run)
        if saved is None:
            return False
        self.epoch, self.history, self.epoch_seconds = saved["epoch"], saved["history"], saved["epoch_seconds"]
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["schedule"])
        if self.scaler is not None:
            self.scaler.load_state_dict(saved["scaler"])
        kept = saved["best"]
        self.best, self.best_key = FitResult(kept["epoch"], kept["val"], kept["state"]), tuple(kept["key"])
        for split, loader in self.loaders.items():
            if isinstance(loader.sampler, EpochSampler):  # the next epoch's order and augmentations
                loader.sampler.epoch = saved["sampler_epochs"][split]
        resume.say(f"resumed after epoch {self.epoch} ({resume.path})")
        self._generators = saved["rng"][distributed.rank()]  # each rank its own (they draw apart)
        return True

    def restore_generators(self) -> None:
        """The random generators as they were after the last finished epoch: called last, once the fit is set up,
        since nothing may draw random numbers between this and the next epoch."""
        if self._generators is not None:
            set_rng_states(self._generators, self.ctx.device)
            self._generators = None

    def end_epoch(self, epoch: int, lr: float, train_m: dict, val_m: dict, seconds: float) -> dict:
        """The epoch's row of the history, and its state kept if it is the best so far (SELECTION_RULE)."""
        self.epoch = epoch
        self.epoch_seconds.append(seconds)
        row = rounded(
            {
                "epoch": epoch,
                "lr": lr,
                **{f"train_{k}": v for k, v in train_m.items() if k != "top5_accuracy"},
                **{f"val_{k}": v for k, v in val_m.items()},
            }
        )
        self.history.append(row)
        if self.best is None or selection_key(val_m) > self.best_key:
            self.best = FitResult(epoch, rounded(val_m), copy.deepcopy(self.model.state_dict()))
            self.best_key = selection_key(val_m)
        return row

    def save(self, resume: Resume | None) -> None:
        """The checkpoint after this epoch. Every rank's generators, gathered on all of them (a collective), written
        by rank 0 alone."""
        if resume is None:
            return
        rng = distributed.gather_objects(rng_states(self.ctx.device))
        if not distributed.is_main():
            return
        best = self.best
        resume.save(
            self.run,
            {
                "epoch": self.epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rng,
                "history": self.history,
                "epoch_seconds": self.epoch_seconds,
                "sampler_epochs": {
                    split: getattr(loader.sampler, "epoch", None) for split, loader in self.loaders.items()
                },
                "best": {
                    "epoch": best.best_epoch,
                    "val": best.best_val,
                    "key": list(self.best_key),
                    "state": best.best_state,
                },
            },
        )

    def result(self) -> FitResult:
        best = self.best
        best.history, best.steps_per_epoch, best.epoch_seconds = (
            self.history,
            len(self.loaders["train"]),
            self.epoch_seconds,
        )
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
