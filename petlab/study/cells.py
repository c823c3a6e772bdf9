"""The study: both models over seeds and training-set sizes (study/pipeline.yaml; docs/study.md says why each rule).

A cell is one DVC stage instance that trains one model on one seeded subset of the train split, chooses on a
seeded subset of the val split (the selection split), and writes one JSON: `cnn_tune@SIZE-LR-WD` tries one CNN
recipe at the first seed, `cnn@SEED-SIZE` trains the recipe chosen at its size, `cnn_long@SEED-SIZE` the same with
twice the steps (the budget check), `probe@SEED-SIZE` fits the linear probe with the C chosen at its size at the
first seed. This module holds what the cells share:
where they write, which images a cell trains and selects on, the CNN's budget at each size, and each cell's place
in the whole (the statistics and rules of the report: petlab/report/study_stats.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from petlab.core import paths
from petlab.core.errors import PipelineError
from petlab.core.params import ALL_IMAGES, StudyParams, TrainCNNParams
from petlab.core.stage import run_stage

MODELS = ("cnn", "probe")
FEATURES_RECORD = (
    paths.STUDY_CELLS / "features.json"
)  # its wall seconds per split, the backbone's record and its GFLOPs


def size_name(size) -> str:
    return "all" if size == ALL_IMAGES else str(size)


def cell_path(model: str, seed: int, size: int | str) -> Path:
    return paths.STUDY_CELLS / model / f"{seed}-{size}.json"


def tune_path(size: str, lr: str, weight_decay: str) -> Path:
    """A tuning cell's file, named by the values as its command line gives them (as DVC writes them)."""
    return paths.STUDY_CELLS / "cnn_tune" / size / f"{lr}-{weight_decay}.json"


def long_path(seed: int, size: int | str) -> Path:
    """The budget check's cell: the CNN of one seed at one size with twice its optimiser steps."""
    return paths.STUDY_CELLS / "cnn_long" / f"{seed}-{size}.json"


def probe_tune_path(size: int | str) -> Path:
    """The probe's tuning at a size: every C of study.probe_c_grid at the first seed."""
    return paths.STUDY_CELLS / "probe_tune" / f"{size_name(size)}.json"


def read_probe_tuning(size: int | str, study: StudyParams) -> dict:
    """The probe's tuning cell at a size, refused where it tried another grid than study.probe_c_grid."""
    path = probe_tune_path(size)
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run the study's tuning cells first (dvc repro {paths.STUDY_PIPELINE})")
    tuned = json.loads(path.read_text())
    if sorted(tuned["c_grid"]) != sorted(float(c) for c in study.probe_c_grid):
        raise PipelineError(
            f"{path} tried C {tuned['c_grid']}, not study.probe_c_grid; re-run it (dvc repro {paths.STUDY_PIPELINE})"
        )
    return tuned


def parse_size(text: str) -> int | str:
    if text == ALL_IMAGES:
        return ALL_IMAGES
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ValueError(text)


def parse_cell(model: str, argv: Sequence[str]) -> tuple[int, int | str]:
    """(seed, size) from a cell stage's command line: `0 5`, `2 all`."""
    usage = f"usage: python -m stages.study_{model} SEED IMAGES_PER_CLASS|{ALL_IMAGES}"
    try:
        if len(argv) != 2 or not argv[0].isdigit():
            raise ValueError
        return int(argv[0]), parse_size(argv[1])
    except ValueError:
        raise PipelineError(f"{usage}; got {' '.join(argv) or 'nothing'}") from None


# The line of study/pipeline.yaml that study/dvc.yaml holds the checked grid in instead (pipeline_text).
GRID_VARS = "  - ../params.yaml:study\n"


def pipeline_text(study: StudyParams) -> str:
    """study/dvc.yaml as `python -m petlab.study` writes it: study/pipeline.yaml with the grid its matrix stages
    expand (seeds, sizes, the CNN's recipes) written in, as params.yaml gives it once the schema accepted it.

    DVC expands a matrix while it reads a project's dvc.yaml files, before any stage runs, and a value it cannot
    expand (`seeds: "0,1"`, a scalar, null) stopped every DVC command of the project, the main pipeline's
    `dvc status` and `dvc repro` too, with an error naming no key. A grid written only after the schema checked it
    always expands; the schema names a wrong value in one line instead."""
    template = paths.STUDY_TEMPLATE.read_text()
    if GRID_VARS not in template:
        raise PipelineError(f"{paths.STUDY_TEMPLATE}: no line {GRID_VARS.strip()!r} for the study's grid to replace")
    grid = (
        f"  - study:  # params.yaml's study grid, as the schema accepted it\n"
        f"      seeds: {json.dumps(list(study.seeds))}\n"
        f"      images_per_class: {json.dumps(list(study.images_per_class))}\n"
        f"      cnn_grid: {{lr: {json.dumps(list(study.cnn_grid.lr))}, "
        f"weight_decay: {json.dumps(list(study.cnn_grid.weight_decay))}}}\n"
    )
    header = (
        f"# Written by `python -m petlab.study` from {paths.STUDY_TEMPLATE} and params.yaml's study section: write it again\n"
        "# after changing study.seeds, study.images_per_class or study.cnn_grid (the study's stages check it).\n"
    )
    return header + template.replace(GRID_VARS, grid)


def check_pipeline_copy(study: StudyParams) -> None:
    """The study runs from study/dvc.yaml as pipeline_text writes it for the current code and params: an older copy
    would run the cells with the deps of an older version of the code (and DVC would keep results the current code
    would not produce), one written for another grid would run other cells than params.yaml asks for."""
    if (
        paths.STUDY_PIPELINE.is_file()
        and paths.STUDY_TEMPLATE.is_file()
        and paths.STUDY_PIPELINE.read_text() != pipeline_text(study)
    ):
        raise PipelineError(
            f"{paths.STUDY_PIPELINE} is not the study's pipeline for this code and params.yaml's study grid (a "
            f"copy from an older version, or the grid changed since); write it again: "
            f"python -m petlab.study"
        )


def write_pipeline() -> None:
    """`python -m petlab.study`: params.yaml checked in full, then study/dvc.yaml written (pipeline_text)."""
    from petlab.core.outputs import write_text
    from petlab.core.params import load_params

    study = load_params().study
    write_text(paths.STUDY_PIPELINE, pipeline_text(study))
    print(
        f"wrote {paths.STUDY_PIPELINE}: {len(study.seeds)} seeds x {len(study.images_per_class)} sizes, {cell_count(study)} cells; "
        f"run it with: dvc repro {paths.STUDY_PIPELINE}"
    )


def run_cell(stage: str, cell: dict, main: Callable[[], None]) -> None:
    """A study stage's entry point: the study's pipeline checked, where the cell stands in the whole said, then
    main() run as a stage whose wall seconds go to study/timing/<stage>.json with the cell and the machine.

    `stage` as DVC names it (cnn@0-5, cnn_tune@5-0.001-0.05), `cell` what it is: {"kind", "size"[, "seed"]}."""

    def checked_main() -> None:
        from petlab.core.params import load_params

        study = load_params().study
        check_pipeline_copy(study)
        print(progress_line(cell, study), flush=True)
        main()

    run_stage(
        f"study/{stage}",
        checked_main,
        timing_file=timing_path(stage),
        timing_extra={"machine": machine(), "cell": cell},
    )


def timing_path(stage: str) -> Path:
    """study/timing/cnn-0-5.json for cnn@0-5: as the study's pipeline declares it."""
    return paths.STUDY_TIMING / f"{stage.replace('@', '-')}.json"


def machine() -> str:
    """This machine, for estimates from cells run here (cells restored from a remote may have run elsewhere)."""
    return f"{platform.node()} ({platform.processor() or platform.machine()})"


# ---------------------------------------------------------------- the cells of a study, and where one stands


def cell_count(study: StudyParams) -> int:
    """Every cell of the study: the CNN's tuning, its seeds and budget checks, the probe's seeds."""
    sizes, seeds = len(study.images_per_class), len(study.seeds)
    return sizes * (len(study.cnn_grid.lr) * len(study.cnn_grid.weight_decay) + 1 + 3 * seeds)


def in_study(cell: dict, study: StudyParams) -> bool:
    """Whether a finished cell (its timing record's `cell`) is one of this study's, not of an earlier ladder's."""
    sizes = [size_name(n) for n in study.images_per_class]
    return cell.get("size") in sizes and cell.get("seed", study.seeds[0]) in study.seeds


def progress_line(cell: dict, study: StudyParams) -> str:
    """Where a cell stands: how many of the study's cells have finished (their timing records are here), and an
    estimate of the time left: every cell still to run at the mean time of the finished cells of its kind and size
    on this machine (of its kind alone where none of its size has finished here)."""
    records = (
        [json.loads(p.read_text()) for p in sorted(paths.STUDY_TIMING.glob("*.json"))]
        if paths.STUDY_TIMING.is_dir()
        else []
    )
    done = [r for r in records if "cell" in r and in_study(r["cell"], study) and r["cell"] != cell]
    total = cell_count(study)
    name = ", ".join(f"{k} {v}" for k, v in cell.items())
    line = f"study: {name}: {len(done)} of {total} cells done"
    here = [r for r in done if r.get("machine") == machine()]
    if not here:
        return line + "; time left: no estimate yet (no cell has finished on this machine)"
    kinds = {
        "cnn_tune": len(study.cnn_grid.lr) * len(study.cnn_grid.weight_decay),
        "cnn": len(study.seeds),
        "cnn_long": len(study.seeds),
        "probe_tune": 1,
        "probe": len(study.seeds),
    }  # cells of each kind, a size
    seconds, untimed = 0.0, 0
    for kind, per_size in kinds.items():
        for size in (size_name(n) for n in study.images_per_class):
            left = per_size - sum(r["cell"]["kind"] == kind and r["cell"]["size"] == size for r in done)
            similar = [r["seconds"] for r in here if (r["cell"]["kind"], r["cell"]["size"]) == (kind, size)] or [
                r["seconds"] for r in here if r["cell"]["kind"] == kind
            ]
            if similar:
                seconds += left * float(np.mean(similar))
            else:
                untimed += left
    rest = f", besides {untimed} cells of a kind not yet timed here" if untimed else ""
    return line + f"; about {seconds / 60:.0f} min left, this one included (by {len(here)} cells finished here{rest})"


# ---------------------------------------------------------------- which images a cell trains on


def val_size(size: int | str, study: StudyParams, val_fraction: float) -> int | str:
    """Selection images per class at a training size: `study.val_per_class` as an integer or "all", or "scaled":
    ceil(size x val : train), the prepared split's own ratio (data.val_fraction of trainval went to val); all of
    val at size "all"."""
    if study.val_per_class != "scaled":
        return study.val_per_class
    if size == ALL_IMAGES:
        return ALL_IMAGES
    return math.ceil(size * val_fraction / (1 - val_fraction))


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


def doubled(optim: TrainCNNParams) -> TrainCNNParams:
    """The same recipe with twice the epochs (and warmup), so twice the optimiser steps: the budget check."""
    return dataclasses.replace(optim, epochs=2 * optim.epochs, warmup_epochs=2 * optim.warmup_epochs)


def recipe(optim: TrainCNNParams, lr: float, weight_decay: float) -> TrainCNNParams:
    return dataclasses.replace(optim, lr=lr, weight_decay=weight_decay)


def chosen_recipe(size: int | str, study: StudyParams) -> dict:
    """The CNN recipe kept at a size: of its tuning cells (one per lr x weight_decay of study.cnn_grid), the one
    whose best epoch scored highest on the selection split, ties to the lower val loss (petlab.train.state.SELECTION_RULE),
    then to the grid's order. Files of recipes no longer in the grid (an earlier study's) are left aside.
    Returns {"lr", "weight_decay", "tried": [{"lr", "weight_decay", "val_macro_f1", "val_loss"}, ...]}."""
    folder = paths.STUDY_CELLS / "cnn_tune" / size_name(size)
    found = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        cell = json.loads(path.read_text())
        found[cell["lr"], cell["weight_decay"]] = cell["val"]
    grid = [(lr, wd) for lr in study.cnn_grid.lr for wd in study.cnn_grid.weight_decay]
    missing = [f"lr {lr:g}, weight_decay {wd:g}" for lr, wd in grid if (lr, wd) not in found]
    if missing:
        raise PipelineError(
            f"{folder}: no tuning cell for {'; '.join(missing)}; run the study's tuning cells first "
            f"(dvc repro {paths.STUDY_PIPELINE})"
        )
    tried = [
        {"lr": lr, "weight_decay": wd, "val_macro_f1": found[lr, wd]["macro_f1"], "val_loss": found[lr, wd]["loss"]}
        for lr, wd in grid
    ]
    best = max(tried, key=lambda t: (t["val_macro_f1"], -t["val_loss"]))  # max keeps the first of equals
    return {"lr": best["lr"], "weight_decay": best["weight_decay"], "tried": tried}


def encode_predictions(preds: Sequence[int]) -> str:
    """A cell's predicted label per test image as one line of text (the cell JSON stays small and diffable)."""
    return " ".join(str(int(p)) for p in preds)


def decode_predictions(text: str) -> np.ndarray:
    return np.array([int(p) for p in text.split()], dtype=np.int64)


def encode_values(values: Sequence[float]) -> str:
    """A value per test image (NLL, Brier) as one line of text, to 6 significant digits."""
    return " ".join(f"{float(v):.6g}" for v in values)


def decode_values(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.split()], dtype=np.float64)


def calibration_record(test_logits: np.ndarray, test_labels: np.ndarray, seed: int) -> dict:
    """What a cell keeps of its test calibration: the summary (petlab.core.calibration.calibration_summary) and each
    image's NLL and Brier score, which the report pairs image by image between the models."""
    from petlab.core.calibration import calibration_summary, per_image_scores

    nll, brier = per_image_scores(test_logits, test_labels)
    return {
        "calibration": calibration_summary(test_logits, test_labels, seed),
        "test_nll": encode_values(nll),
        "test_brier": encode_values(brier),
    }


def scores(metrics: dict[str, float]) -> dict[str, float]:
    """What a cell keeps of a split's metrics: accuracy, macro-F1 (and loss where given), rounded. Not top-5,
    which the study does not compare (and which is 1 by construction with 5 classes or fewer)."""
    return {k: round(v, 6) for k, v in metrics.items() if k in ("accuracy", "macro_f1", "loss")}
