"""The study's probe cells: probe_tune@SIZE (every C of study.probe_c_grid at the first seed) and probe@SEED-SIZE
(the C its size's tuning kept): the L-BFGS linear probe on one seeded subset of the cached features.

Tuned as the CNN is: the C is chosen once per size, at the first seed, on its selection subset, from
study.probe_c_grid (as many values as the CNN's recipes), and kept for every seed. The train and selection
subsets are the CNN cell's of the same seed and size (petlab.data.dataset.draw_subset on the same splits); the seed
changes nothing else, since L-BFGS on fixed features starts from zero and draws nothing.
"""

from __future__ import annotations

import torch

from petlab.core import paths
from petlab.core.errors import PipelineError
from petlab.core.metrics import classification_metrics
from petlab.core.outputs import load_torch
from petlab.core.params import Params
from petlab.data.dataset import draw_subset
from petlab.probe.features import feature_split
from petlab.probe.logistic import fit_logistic_probe
from petlab.study.cells import (
    calibration_record,
    encode_predictions,
    read_probe_tuning,
    scores,
    subset_digest,
    val_size,
)


def fit_gflops(train_images: int, feature_size: int, num_classes: int, sweep: list[dict]) -> float:
    """The fit's arithmetic: each L-BFGS iteration evaluates the loss and its gradient on the train features, about
    4 x images x feature size x classes FLOPs (a forward and a backward product)."""
    return round(4 * train_images * feature_size * num_classes * sum(row["iterations"] for row in sweep) / 1e9, 6)


def linear_head_from(state: dict) -> torch.nn.Linear:
    head = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    return head.eval()


def fit_cell(seed: int, size, tune: bool, params: Params) -> dict:
    """One probe cell's record (a tuning cell's: its sweep of C on the selection subset, and no test score)."""
    p = params.train_vit
    if not p.fits_lbfgs:
        raise PipelineError(
            "the study's probe is the L-BFGS linear probe on cached features (train_vit.solver: lbfgs, "
            "head: linear, augment: false, unfreeze: [])"
        )
    cache = load_torch(paths.STUDY_FEATURES)
    info = cache["info"]
    num_classes = len(info["class_names"])
    train, val, test = (feature_split(cache, split, paths.STUDY_FEATURES).tensors for split in ("train", "val", "test"))
    if tune:
        seed = params.study.seeds[0]
    chosen = draw_subset(train[1].tolist(), size, seed)
    selection = draw_subset(val[1].tolist(), val_size(size, params.study, params.data.val_fraction), seed)
    train_subset, val_subset = (train[0][chosen], train[1][chosen]), (val[0][selection], val[1][selection])
    grid = params.study.probe_c_grid if tune else [read_probe_tuning(size, params.study)["selected_c"]]
    probe = fit_logistic_probe(
        train_subset,
        val_subset,
        num_classes,
        grid,
        p.max_iter,
        name=f"study probe seed {seed}, {size} per class",
        grid_key="study.probe_c_grid",
    )
    compute = {"fit_gflops": fit_gflops(len(chosen), train[0].shape[1], num_classes, probe.sweep)}
    if tune:  # chooses on the selection subset alone: no test score is made
        return {
            "model": "probe",
            "kind": "probe_tune",
            "seed": seed,
            "images_per_class": size,
            "c_grid": [row["c"] for row in probe.sweep],
            "selected_c": probe.c,
            "sweep_val_macro_f1": [row["val_macro_f1"] for row in probe.sweep],
            "sweep_val_loss": [row["val_loss"] for row in probe.sweep],
            "compute": compute,
        }
    head = linear_head_from(probe.head_state)

    def logits(split) -> torch.Tensor:
        with torch.inference_mode():
            return head(split[0].float())

    test_logits = logits(test)
    kept = {k: v for k, v in probe.selection.items() if k not in ("c_grid", "selection")}
    return {
        "model": "probe",
        "kind": "probe",
        "seed": seed,
        "images_per_class": size,
        "train_images": len(chosen),
        "val_images": len(selection),
        "subset": subset_digest([info["images"]["train"][i] for i in chosen]),
        "val_subset": subset_digest([info["images"]["val"][i] for i in selection]),
        **kept,
        "train": scores(classification_metrics(logits(train_subset), train_subset[1], num_classes)),
        "val": scores(probe.best_val),
        "test": scores(classification_metrics(test_logits, test[1], num_classes)),
        "test_predicted": encode_predictions(test_logits.argmax(1).tolist()),
        **calibration_record(test_logits.numpy(), test[1].numpy(), seed),
        "compute": compute,
        "timm_model": info["timm_model"],
        "pretrained": info["pretrained"],
        "weights_source": info["weights_source"],
    }


def summary_line(record: dict, size, out) -> str:
    if record["kind"] == "probe_tune":
        return f"study probe tuning, {size} per class: C {record['selected_c']:g} kept -> {out}"
    return (
        f"study probe seed {record['seed']}, {size} per class ({record['train_images']} images, C "
        f"{record['selected_c']:g}): test macro-F1 {record['test']['macro_f1']:.4f} -> {out}"
    )
