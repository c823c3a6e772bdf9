"""Stage study/dvc.yaml:cnn@SEED-SIZE: the CNN from scratch on one seeded subset; one JSON with what the report needs.

python -m stages.study_cnn SEED IMAGES_PER_CLASS|all. The seed sets the initialisation, the data order and the
augmentation (as `seed` does in the main pipeline) and the subset drawn; val, test and the recipe
(train_cnn's params) are the main pipeline's, with at least study.min_steps optimiser steps
(petlab.study.cnn_budget). One process per cell: cells run side by side, not as ranks.
"""

import dataclasses
from dataclasses import dataclass
import tempfile
from pathlib import Path

from petlab.data import PreparedData
from petlab.experiments import image_loader, make_context, setup_stage, train_cnn, transform_spec
from petlab.metrics import classification_metrics
from petlab.outputs import check_writable, write_json
from petlab.runtime import Stopwatch, seed_everything, select_device
from petlab.study import (cell_path, cnn_budget, draw_subset, encode_predictions, late_gain, run_cell, scores,
                          subset_digest)
from petlab.train import predict

DATA = Path("data/oxford_pets")


@dataclass(frozen=True)
class TrainSubset(PreparedData):
    """The prepared data with only a cell's subset as its train split; val and test stay whole."""

    train: tuple = ()

    def items(self, split: str) -> list[tuple[Path, int]]:
        return list(self.train) if split == "train" else super().items(split)


def main(seed: int, size) -> None:
    clock = Stopwatch()
    out = cell_path("cnn", seed, size)
    check_writable([out])
    params, data = setup_stage(DATA)
    items = data.items("train")
    chosen = [items[i] for i in draw_subset([label for _, label in items], size, seed)]
    subset = TrainSubset(data.root, data.class_names, tuple(chosen))
    budget = cnn_budget(params.train_cnn, len(chosen), params.study.min_steps)
    # The cell's seed stands for `seed`; no TensorBoard histograms (the cell keeps no logs).
    params = dataclasses.replace(params, seed=seed, train_cnn=budget, log=dataclasses.replace(params.log, hist_every=0))
    seed_everything(seed, select_device(params.device))
    with tempfile.TemporaryDirectory() as logs:
        trained = train_cnn(params, subset, Path(logs))
    history, _ = trained.curves["history.csv"]
    spec = transform_spec(trained.config)
    ctx = make_context(params, budget.amp, budget.channels_last, spec)

    def scored(images: PreparedData, split: str):
        loader = image_loader(images, split, spec, budget.batch_size, False, params, ctx.device)
        logits, labels = predict(trained.model, loader, ctx, desc=f"study cnn: {split}")
        return logits, scores(classification_metrics(logits, labels, data.num_classes))

    train_logits, train_metrics = scored(subset, "train")  # un-augmented, eval mode: as the probe is scored
    test_logits, test_metrics = scored(data, "test")
    elapsed, total = [], 0.0
    for seconds in trained.epoch_seconds:
        total += seconds
        elapsed.append(round(total, 3))
    val_f1 = [row["val_macro_f1"] for row in history]
    write_json(out, {
        "model": "cnn", "seed": seed, "images_per_class": size, "train_images": len(chosen),
        "subset": subset_digest([p.relative_to(data.root).as_posix() for p, _ in chosen]),
        "epochs": budget.epochs, "warmup_epochs": round(budget.warmup_epochs, 6),
        "steps": trained.selection["steps_per_epoch"] * budget.epochs, **trained.selection,
        "late_gain": round(late_gain(val_f1), 6), "train": train_metrics,
        "train_augmented_last_epoch_accuracy": history[-1]["train_accuracy"],
        "val": scores(trained.best_val), "test": test_metrics,
        "test_predicted": encode_predictions(test_logits.argmax(1).tolist()),
        "val_curve": {"val_macro_f1": val_f1, "val_accuracy": [row["val_accuracy"] for row in history],
                      "elapsed_seconds": elapsed},
        "seconds": {"fit": round(total, 3), "cell": clock.seconds()},
        "device": trained.summary["device"], "precision": trained.summary["precision"],
    })
    print(f"study cnn seed {seed}, {size} per class ({len(chosen)} images, {budget.epochs} epochs): test macro-F1 "
          f"{test_metrics['macro_f1']:.4f}, accuracy {test_metrics['accuracy']:.4f} -> {out}")


if __name__ == "__main__":
    run_cell("cnn", main)
