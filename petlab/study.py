"""The study: both models over seeds and training-set sizes (study/dvc.yaml; docs/study.md says why each rule).

A cell is one (model, seed, size): one DVC stage instance that trains one model on one seeded subset of the
train split and writes one JSON. This module holds what the cells share: where they write, which images a cell
trains on and the CNN's budget at each size (the statistics and rules of the report: petlab/study_stats.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from petlab.params import ALL_IMAGES, TrainCNNParams
from petlab.runtime import PipelineError
from petlab.stage import run_stage

MODELS = ("cnn", "probe")
CELLS = Path("study/cells")  # <model>/<seed>-<size>.json, one per cell; features.json: the shared extraction
FEATURES = Path("data/study/features.pt")  # every train, val and test image through the frozen backbone, once
FEATURES_RECORD = CELLS / "features.json"  # its wall seconds per split and the backbone's record


def cell_path(model: str, seed: int, size: int | str) -> Path:
    return CELLS / model / f"{seed}-{size}.json"


def parse_cell(model: str, argv: Sequence[str]) -> tuple[int, int | str]:
    """(seed, size) from a cell stage's command line: `0 5`, `2 all`."""
    usage = f"usage: python -m stages.study_{model} SEED IMAGES_PER_CLASS|{ALL_IMAGES}"
    size_ok = len(argv) == 2 and (argv[1] == ALL_IMAGES or argv[1].isdigit() and int(argv[1]) >= 1)
    if not size_ok or not argv[0].isdigit():
        raise PipelineError(f"{usage}; got {' '.join(argv) or 'nothing'}")
    return int(argv[0]), argv[1] if argv[1] == ALL_IMAGES else int(argv[1])


def run_cell(model: str, main: Callable[[int, int | str], None]) -> None:
    """A cell stage's entry point: its seed and size from the command line (refused in one line), then
    main(seed, size) run as a stage."""
    try:
        seed, size = parse_cell(model, sys.argv[1:])
    except PipelineError as err:
        sys.exit(f"study_{model}: error: {err}")
    run_stage(f"study/{model}-{seed}-{size}", lambda: main(seed, size))


# ---------------------------------------------------------------- which images a cell trains on


def draw_subset(labels: Sequence[int], size: int | str, seed: int) -> list[int]:
    """Indices (ascending) of the images a cell trains on: `size` per class (all of a class that has fewer).

    Each class's images are permuted by a generator seeded with (seed, class) and the first `size` kept, so a
    smaller subset is inside every larger one of the same seed (nested), each class gets the same number
    (stratified), and the draw depends neither on the other sizes of the ladder nor on the other classes.
    `labels` are those of the train split in its fixed order (PreparedData.items).
    """
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[int(label)].append(index)
    chosen = []
    for label, indices in sorted(by_class.items()):
        order = np.random.default_rng([seed, label]).permutation(len(indices))
        kept = order if size == ALL_IMAGES else order[:size]
        chosen += [indices[i] for i in kept]
    return sorted(chosen)


def subset_digest(images: Sequence[str]) -> str:
    """Names the images of a subset, so the report can check both models of a (seed, size) trained on the same."""
    return hashlib.sha256("\n".join(sorted(images)).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the CNN's budget


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    """As the training loader takes them on one process: the ragged last batch dropped, unless it is the only one."""
    return train_images // batch_size if train_images > batch_size else 1


def cnn_budget(optim: TrainCNNParams, train_images: int, min_steps: int) -> TrainCNNParams:
    """train_cnn's params for a subset: at least `min_steps` optimiser steps, in whole epochs.

    epochs = max(train_cnn.epochs, ceil(min_steps / steps per epoch)); warmup_epochs grows in the same ratio,
    so warmup keeps its share of the schedule (and the cosine decay its shape). At sizes where train_cnn.epochs
    already gives min_steps, the cell trains exactly as the main pipeline does.
    """
    epochs = max(optim.epochs, math.ceil(min_steps / steps_per_epoch(train_images, optim.batch_size)))
    return dataclasses.replace(optim, epochs=epochs, warmup_epochs=optim.warmup_epochs * epochs / optim.epochs)


def late_gain(val_macro_f1: Sequence[float]) -> float:
    """How much the last quarter of the epochs raised the best val macro-F1 (0 when they did not)."""
    if len(val_macro_f1) < 4:
        return 0.0
    cut = len(val_macro_f1) - len(val_macro_f1) // 4
    return max(0.0, max(val_macro_f1[cut:]) - max(val_macro_f1[:cut]))


def encode_predictions(preds: Sequence[int]) -> str:
    """A cell's predicted label per test image as one line of text (the cell JSON stays small and diffable)."""
    return " ".join(str(int(p)) for p in preds)


def decode_predictions(text: str) -> np.ndarray:
    return np.array([int(p) for p in text.split()], dtype=np.int64)


def scores(metrics: dict[str, float]) -> dict[str, float]:
    """What a cell keeps of a split's metrics: accuracy, macro-F1 (and loss where given), rounded. Not top-5,
    which the study does not compare (and which is 1 by construction with 5 classes or fewer)."""
    return {k: round(v, 6) for k, v in metrics.items() if k in ("accuracy", "macro_f1", "loss")}
