"""What both recipes share: a stage's set-up, the step context and loaders, TensorBoard, and the trained model saved (checkpoint, metrics, curves) and loaded back."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from petlab.core import distributed
from petlab.core.device import select_device, select_precision
from petlab.core.errors import PipelineError
from petlab.core.outputs import WRITE_ERRNOS, load_torch, naming_failed_writes, save_torch, write_csv, write_json
from petlab.core.params import LoaderParams, Params, load_params
from petlab.core.runtime import keep_freed_memory, seed_everything, share_cpu
from petlab.data.dataset import ImageDataset, PreparedData
from petlab.data.loaders import make_loader
from petlab.data.transforms import TransformSpec, eval_transform, train_transform
from petlab.models.registry import create_model
from petlab.train.loop import HISTORY_COLUMNS, EpochCallback, StepContext
from petlab.train.state import SELECTION_RULE, FitResult

if TYPE_CHECKING:  # the stages make it; the stages that only evaluate or profile need not import it
    pass


@dataclass
class TrainedModel:
    model: nn.Module
    config: dict  # enough to rebuild the model with create_model()
    best_val: dict[str, float]  # validation metrics of the weights kept
    selection: dict  # how they were chosen: the rule, and the best and last epoch or the C kept and its grid
    curves: dict[str, tuple[list[dict], list[str]]]  # CSV name -> (rows, columns): per epoch, per C
    summary: dict  # what goes into the stage's metrics file besides the validation numbers
    # Wall times, kept out of the metrics and curves, which repeat byte for byte: the seconds of each epoch (none
    # for the L-BFGS probe) and those before the first that training needed (the probe's feature cache).
    epoch_seconds: list[float] = field(default_factory=list)
    setup_seconds: float = 0.0
    head_seconds: float = 0.0  # fitting the head (or the whole model): the L-BFGS sweep, or the loop's epochs


def fit_selection(result: FitResult) -> dict:
    """What the training loop kept: best and last epoch, so an early pick shows, and the steps an epoch took."""
    return {
        "selection": SELECTION_RULE,
        "best_epoch": result.best_epoch,
        "last_epoch": len(result.history),
        "steps_per_epoch": result.steps_per_epoch,
    }


def setup_stage(data_dir: Path) -> tuple[Params, PreparedData]:
    """What every stage after prepare does first: check all params, fix seeds, check the device, open the data."""
    params = load_params()
    share_cpu()
    keep_freed_memory()
    # A requested GPU that is missing, or that this torch has no kernels for, is reported before any work.
    seed_everything(params.seed, select_device(params.device))
    return params, PreparedData.open(data_dir)


def make_context(device: str, amp: bool, channels_last: bool, input_spec: TransformSpec | None = None) -> StepContext:
    """`device`: the params' choice (petlab.core.device.select_device); `input_spec`: how the model's image batches
    are normalised (None where it is fed features)."""
    chosen = select_device(device)
    return StepContext(chosen, select_precision(chosen, amp), channels_last and chosen.type != "mps", input_spec)


def image_loader(
    data: PreparedData,
    split: str,
    spec: TransformSpec,
    batch_size: int,
    train: bool,
    device: torch.device,
    augment: str = "rrc",
    *,
    seed: int,
    loader: LoaderParams,
) -> DataLoader:
    """A split's images through the model's train (augmented by `augment`) or evaluation transform, batched; `seed`
    orders and augments them, `loader` says how they are read (workers, pinned memory)."""
    transform = train_transform(spec, augment) if train else eval_transform(spec)
    dataset = ImageDataset(data.items(split), transform, seed=seed)
    return make_loader(dataset, batch_size, train, seed, device, loader)


def tensor_loader(
    dataset: TensorDataset, batch_size: int, train: bool, *, seed: int, loader: LoaderParams
) -> DataLoader:
    return make_loader(dataset, batch_size, train, seed, torch.device("cpu"), loader)


def transform_spec(config: dict) -> TransformSpec:
    t = config["transform"]
    return TransformSpec(t["size"], tuple(t["mean"]), tuple(t["std"]), t["interpolation"], t["crop_pct"])


@contextlib.contextmanager
def tensorboard(log_dir: Path) -> Iterator[SummaryWriter | None]:
    """A TensorBoard writer on rank 0; None on the other ranks, which write nothing.

    Its event files are written by a thread of its own. A write that fails there (disk full) is raised again in the
    stage by the writer's next call, where the error names the log folder: the thread's own traceback is not
    printed, so the stage's one line is all the user sees."""
    if not distributed.is_main():
        yield None
        return
    previous_hook = threading.excepthook

    def quiet_failed_writes(args) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in WRITE_ERRNOS):
            previous_hook(args)

    threading.excepthook = quiet_failed_writes
    try:
        with naming_failed_writes(log_dir), SummaryWriter(str(log_dir)) as writer:
            yield writer
    finally:
        threading.excepthook = previous_hook


def log_hparams(writer: SummaryWriter | None, hparams: dict, best_val: dict, selection: dict) -> None:
    if writer is None:
        return
    flat = {k: (str(v) if isinstance(v, (list, tuple)) or v is None else v) for k, v in hparams.items()}
    kept = {f"best/{k}": selection[k] for k in ("best_epoch", "selected_c") if k in selection}
    writer.add_hparams(
        flat,
        {"best/val_macro_f1": best_val["macro_f1"], "best/val_accuracy": best_val["accuracy"], **kept},
        run_name="hparams",
    )


def progress_writer(metrics: Path, history_file: Path) -> EpochCallback:
    """What a training stage writes after every epoch, atomically: its history so far and a metrics file of the
    best so far (the kept epoch, the last one, the kept val scores), so `dvc exp show`, `dvc plots show` and an
    editor's DVC view move while a model trains, not only TensorBoard. save_trained writes the final files over them,
    the same bytes as a run without them."""

    def write(history: list[dict], best: FitResult) -> None:
        write_csv(history_file, history, HISTORY_COLUMNS)
        write_json(
            metrics,
            {
                "best_epoch": best.best_epoch,
                "last_epoch": history[-1]["epoch"],
                "in_progress": True,
                **{f"val_{k}": v for k, v in best.best_val.items()},
            },
        )

    return write


RUN_RECORD = "run.json"  # in a training stage's plots folder: how the run went, in words (save_trained)


def save_trained(
    stage: str,
    trained: TrainedModel,
    class_names: list[str],
    checkpoint: Path,
    metrics: Path,
    plots_dir: Path,
    epoch_times: Path,
) -> None:
    """The kept checkpoint (loadable with weights_only=True), the metrics file and the run's record (RUN_RECORD),
    the curves (per epoch, per C) and the epochs' wall times.

    Wall times go to their own file (`epoch_times`; header only for the L-BFGS probe, which has no epochs): the
    curves repeat byte for byte, they do not. `elapsed_seconds` counts from the start of training, including
    setup such as the probe's feature cache.
    """
    state = {k: v.detach().cpu() for k, v in trained.model.state_dict().items()}
    selection = trained.selection
    save_torch(
        checkpoint,
        {
            "model_state": state,
            "model_config": trained.config,
            "class_names": class_names,
            "epoch": selection.get("best_epoch"),
            "selection": selection,
            "val_metrics": trained.best_val,
        },
    )
    for name, (rows, columns) in trained.curves.items():
        write_csv(plots_dir / name, rows, columns)
    elapsed, times = trained.setup_seconds, []
    for epoch, seconds in enumerate(trained.epoch_seconds, start=1):
        elapsed += seconds
        times.append({"epoch": epoch, "seconds": seconds, "elapsed_seconds": round(elapsed, 3)})
    write_csv(epoch_times, times, ["epoch", "seconds", "elapsed_seconds"])
    # The rule's wording and the C grid stay in the checkpoint: the same text in every run, nothing to compare.
    compared = {k: v for k, v in selection.items() if k not in ("selection", "c_grid")}
    recorded = {**compared, **{f"val_{k}": v for k, v in trained.best_val.items()}, **trained.summary}
    # The metrics file holds what runs are compared by (numbers, and flags such as `converged`); how the run went
    # (device, precision, route, solver, the weights' source and digest: text) goes beside the curves, so that
    # `dvc metrics show` and `dvc metrics diff` stay about the models.
    write_json(metrics, {k: v for k, v in recorded.items() if not isinstance(v, str)})
    write_json(plots_dir / RUN_RECORD, {k: v for k, v in recorded.items() if isinstance(v, str)})
    kept = (
        f"C {selection['selected_c']:g}"
        if "selected_c" in selection
        else f"epoch {selection['best_epoch']} of {selection['last_epoch']}"
    )
    best = trained.best_val
    print(
        f"{stage}: kept {kept} ({selection['selection']}), val accuracy {best['accuracy']:.4f}, "
        f"val macro-F1 {best['macro_f1']:.4f} -> {checkpoint}"
    )


def load_trained(checkpoint: dict) -> nn.Module:
    model = create_model(checkpoint["model_config"])
    model.load_state_dict(checkpoint["model_state"])
    return model.eval()


def load_checkpoint_for(path: Path, data: PreparedData) -> dict:
    """A training stage's checkpoint, refused in one line when it was trained on other classes than `data`."""
    checkpoint = load_torch(path)
    if checkpoint["class_names"] != data.class_names:
        raise PipelineError(f"{path} was trained on other classes than {data.root}; re-run its training stage")
    return checkpoint


def trained_on_device(checkpoint: dict, params: Params, name: str) -> tuple[nn.Module, StepContext, TransformSpec]:
    """A saved model ready to score images as it was trained to: on the device, at its precision (train_cnn's or
    train_vit's amp), the CNN in channels_last where it trained so; with its input transform. `name`: cnn or vit."""
    optim = params.train_cnn if name == "cnn" else params.train_vit
    spec = transform_spec(checkpoint["model_config"])
    ctx = make_context(params.device, optim.amp, name == "cnn" and params.train_cnn.channels_last, spec)
    model = load_trained(checkpoint).to(ctx.device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, ctx, spec
