"""The study's CNN cells: cnn_tune@SIZE-LR-WD (one recipe of study.cnn_grid at the first seed), cnn@SEED-SIZE (the
recipe its size's tuning kept) and cnn_long@SEED-SIZE (the same, twice the steps: the budget check).

The seed sets the initialisation, the data order and augmentation (as `seed` does in the main pipeline) and the
train and selection subsets drawn; test and the rest of the recipe (train_cnn's params) are the main pipeline's,
with at least study.min_steps optimiser steps (petlab.study.cells.cnn_budget). A cell stopped during an epoch
continues after the last one it finished (petlab/core/resume.py).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from petlab.core import paths
from petlab.core.device import select_device
from petlab.core.errors import PipelineError
from petlab.core.metrics import classification_metrics
from petlab.core.params import Params, TrainCNNParams
from petlab.core.resume import Resume
from petlab.core.runtime import seed_everything
from petlab.data.dataset import PreparedData, draw_subset
from petlab.models.registry import forward_gflops
from petlab.study.cells import (
    calibration_record,
    cell_path,
    chosen_recipe,
    cnn_budget,
    doubled,
    encode_predictions,
    long_path,
    parse_size,
    recipe,
    scores,
    subset_digest,
    tune_path,
    val_size,
)
from petlab.train.cnn import train_cnn
from petlab.train.loop import predict
from petlab.train.run import TrainedModel, image_loader, make_context, transform_spec

USAGE = (
    "usage: python -m stages.study_cnn SEED IMAGES_PER_CLASS | tune IMAGES_PER_CLASS LR WEIGHT_DECAY | "
    "long SEED IMAGES_PER_CLASS"
)


@dataclass(frozen=True)
class Subsets(PreparedData):
    """The prepared data with only a cell's subsets as its train and val splits; test stays whole."""

    train: tuple = ()
    val: tuple = ()

    def items(self, split: str) -> list[tuple[Path, int]]:
        return list(getattr(self, split)) if split in ("train", "val") else super().items(split)


@dataclass(frozen=True)
class Cell:
    kind: str  # cnn_tune | cnn | cnn_long
    size: int | str
    seed: int | None = None  # the tuning cells: the study's first seed
    lr: str | None = None  # a tuning cell's recipe, as its command line gives it
    weight_decay: str | None = None

    @property
    def stage(self) -> str:
        item = {
            "cnn_tune": f"{self.size}-{self.lr}-{self.weight_decay}",
            "cnn": f"{self.seed}-{self.size}",
            "cnn_long": f"{self.seed}-{self.size}",
        }[self.kind]
        return f"{self.kind}@{item}"

    @property
    def item(self) -> dict:
        """The values of its matrix stage, as study/pipeline.yaml names them."""
        values = {"size": self.size, "seed": self.seed, "lr": self.lr, "weight_decay": self.weight_decay}
        keys = {"cnn_tune": ("size", "lr", "weight_decay"), "cnn": ("seed", "size"), "cnn_long": ("seed", "size")}[
            self.kind
        ]
        return {k: values[k] for k in keys}

    @property
    def path(self) -> Path:
        if self.kind == "cnn_tune":
            return tune_path(str(self.size), self.lr, self.weight_decay)
        return cell_path("cnn", self.seed, self.size) if self.kind == "cnn" else long_path(self.seed, self.size)

    @property
    def record(self) -> dict:
        """What run_cell records of it beside its wall time."""
        return {"kind": self.kind, "size": str(self.size), **({"seed": self.seed} if self.seed is not None else {})}


def parse(argv: list[str]) -> Cell:
    try:
        if argv[:1] == ["tune"] and len(argv) == 4:
            float(argv[2]), float(argv[3])
            return Cell("cnn_tune", parse_size(argv[1]), lr=argv[2], weight_decay=argv[3])
        if argv[:1] == ["long"] and len(argv) == 3 and argv[1].isdigit():
            return Cell("cnn_long", parse_size(argv[2]), seed=int(argv[1]))
        if len(argv) == 2 and argv[0].isdigit():
            return Cell("cnn", parse_size(argv[1]), seed=int(argv[0]))
    except ValueError:
        pass
    raise PipelineError(f"{USAGE}; got {' '.join(argv) or 'nothing'}")


def draw(data: PreparedData, split: str, size, seed: int) -> list[tuple[Path, int]]:
    items = data.items(split)
    return [items[i] for i in draw_subset([label for _, label in items], size, seed)]


def cell_budget(cell: Cell, params: Params, train_images: int) -> tuple[TrainCNNParams, dict | None]:
    """A cell's recipe (its own for a tuning cell, else the one its size's tuning kept: doubled for cnn_long) on
    the budget of its training-set size, and the tuning record it came from (None for a tuning cell)."""
    budget = cnn_budget(params.train_cnn, train_images, params.study.min_steps)
    if cell.kind == "cnn_tune":
        return recipe(budget, float(cell.lr), float(cell.weight_decay)), None
    chosen = chosen_recipe(cell.size, params.study)
    budget = recipe(budget, chosen["lr"], chosen["weight_decay"])
    return (doubled(budget) if cell.kind == "cnn_long" else budget), chosen


def train_cell(cell: Cell, params: Params, data: PreparedData) -> tuple[dict, Resume]:
    """Train one cell's CNN on its subsets; its record (what the study's report reads) and the resumable state to
    remove once the record is written."""
    seed = params.study.seeds[0] if cell.kind == "cnn_tune" else cell.seed
    cell = dataclasses.replace(cell, seed=seed)
    train, val = (
        draw(data, "train", cell.size, seed),
        draw(data, "val", val_size(cell.size, params.study, params.data.val_fraction), seed),
    )
    subsets = Subsets(data.root, data.class_names, tuple(train), tuple(val))
    budget, chosen = cell_budget(cell, params, len(train))
    # The cell's seed stands for `seed`; no TensorBoard histograms (the cell keeps no logs).
    params = dataclasses.replace(params, seed=seed, train_cnn=budget, log=dataclasses.replace(params.log, hist_every=0))
    seed_everything(seed, select_device(params.device))
    resume = Resume.for_stage(cell.stage, params, paths.STUDY_PIPELINE, cell.item)
    with tempfile.TemporaryDirectory() as logs:
        trained = train_cnn(params, subsets, Path(logs), resume, name=cell.stage)
    history, _ = trained.curves["history.csv"]
    record = {
        "model": "cnn",
        "kind": cell.kind,
        "seed": seed,
        "images_per_class": cell.size,
        "train_images": len(train),
        "val_images": len(val),
        "subset": subset_digest([p.relative_to(data.root).as_posix() for p, _ in train]),
        "val_subset": subset_digest([p.relative_to(data.root).as_posix() for p, _ in val]),
        "lr": budget.lr,
        "weight_decay": budget.weight_decay,
        "epochs": budget.epochs,
        "warmup_epochs": round(budget.warmup_epochs, 6),
        "steps": trained.selection["steps_per_epoch"] * budget.epochs,
        **trained.selection,
        "val": scores(trained.best_val),
        "val_curve": {
            "val_macro_f1": [row["val_macro_f1"] for row in history],
            "val_accuracy": [row["val_accuracy"] for row in history],
        },
    }
    if cell.kind != "cnn_tune":  # a tuning cell chooses on val alone: no test score is made for it
        record.update(scored(trained, params, data, subsets, budget))
        record["recipe"] = chosen
    return record, resume


def scored(trained: TrainedModel, params: Params, data: PreparedData, subsets: Subsets, budget) -> dict:
    """The kept model, in eval mode, on its un-augmented training subset (as the probe is scored), its selection
    subset and the test split: scores, test predictions, calibration (petlab.study.cells.calibration_record) and what
    its training cost in forward passes."""
    spec = transform_spec(trained.config)
    ctx = make_context(params.device, budget.amp, budget.channels_last, spec)

    def logits_of(images: PreparedData, split: str):
        loader = image_loader(
            images, split, spec, budget.batch_size, False, ctx.device, seed=params.seed, loader=params.loader
        )
        return predict(trained.model, loader, ctx, desc=f"study cnn: {split}")

    train_logits, train_labels = logits_of(subsets, "train")
    test_logits, test_labels = logits_of(data, "test")
    gflops = forward_gflops(trained.model.float(), spec.size, ctx.device)
    return {
        "train": scores(classification_metrics(train_logits, train_labels, data.num_classes)),
        "test": scores(classification_metrics(test_logits, test_labels, data.num_classes)),
        "test_predicted": encode_predictions(test_logits.argmax(1).tolist()),
        **calibration_record(test_logits.numpy(), test_labels.numpy(), params.seed),
        # An epoch trains on whole batches (the ragged last one is dropped), or on all when they fit in one.
        "compute": {
            "forward_gflops_per_image": gflops,
            "train_images_per_epoch": min(len(subsets.train), trained.selection["steps_per_epoch"] * budget.batch_size),
            "val_images_per_epoch": len(subsets.val),
        },
        "device": trained.summary["device"],
        "precision": trained.summary["precision"],
    }


def summary_line(cell: Cell, record: dict) -> str:
    where = (
        f"val macro-F1 {record['val']['macro_f1']:.4f}"
        if cell.kind == "cnn_tune"
        else f"test macro-F1 {record['test']['macro_f1']:.4f}, accuracy {record['test']['accuracy']:.4f}"
    )
    return (
        f"study {cell.stage} ({record['train_images']} images, {record['epochs']} epochs, lr {record['lr']:g}, "
        f"weight decay {record['weight_decay']:g}): {where} -> {cell.path}"
    )
