"""Stages probe_tune@SIZE and probe@SEED-SIZE of the study (study/pipeline.yaml): the L-BFGS linear probe on one
seeded subset of the cached features.

    python -m stages.study_probe tune IMAGES_PER_CLASS|all   # every C of study.probe_c_grid at the first seed
    python -m stages.study_probe SEED IMAGES_PER_CLASS|all   # the C its size's tuning kept

Tuned as the CNN is: the C is chosen once per size, at the first seed, on its selection subset, from
study.probe_c_grid (as many values as the CNN's recipes), and kept for every seed. The train and selection
subsets are the CNN cell's of the same seed and size (petlab.data.dataset.draw_subset on the same splits); the seed
changes nothing else, since L-BFGS on fixed features starts from zero and draws nothing.
"""

import sys

import torch

from petlab.core.errors import PipelineError
from petlab.core.metrics import classification_metrics
from petlab.core.outputs import check_writable, load_torch, write_json
from petlab.core.params import load_params
from petlab.core.runtime import share_cpu
from petlab.data.dataset import draw_subset
from petlab.probe.features import feature_split
from petlab.probe.logistic import fit_logistic_probe
from petlab.study.cells import (
    FEATURES,
    calibration_record,
    cell_path,
    encode_predictions,
    parse_cell,
    probe_tune_path,
    read_probe_tuning,
    run_cell,
    scores,
    subset_digest,
    val_size,
)


def fit_gflops(train_images: int, feature_size: int, num_classes: int, sweep: list[dict]) -> float:
    """The fit's arithmetic: each L-BFGS iteration evaluates the loss and its gradient on the train features, about
    4 x images x feature size x classes FLOPs (a forward and a backward product)."""
    return round(4 * train_images * feature_size * num_classes * sum(row["iterations"] for row in sweep) / 1e9, 6)


def main(seed: int, size, tune: bool = False) -> None:
    out = probe_tune_path(size) if tune else cell_path("probe", seed, size)
    check_writable([out])
    params = load_params()
    share_cpu()
    p = params.train_vit
    if not p.fits_lbfgs:
        raise PipelineError(
            "the study's probe is the L-BFGS linear probe on cached features (train_vit.solver: lbfgs, "
            "head: linear, augment: false, unfreeze: [])"
        )
    cache = load_torch(FEATURES)
    info = cache["info"]
    num_classes = len(info["class_names"])
    train, val, test = (feature_split(cache, split, FEATURES).tensors for split in ("train", "val", "test"))
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
        write_json(
            out,
            {
                "model": "probe",
                "kind": "probe_tune",
                "seed": seed,
                "images_per_class": size,
                "c_grid": [row["c"] for row in probe.sweep],
                "selected_c": probe.c,
                "sweep_val_macro_f1": [row["val_macro_f1"] for row in probe.sweep],
                "sweep_val_loss": [row["val_loss"] for row in probe.sweep],
                "compute": compute,
            },
        )
        print(f"study probe tuning, {size} per class: C {probe.c:g} kept -> {out}")
        return
    head = linear_head_from(probe.head_state)

    def logits(split) -> torch.Tensor:
        with torch.inference_mode():
            return head(split[0].float())

    test_logits = logits(test)
    kept = {k: v for k, v in probe.selection.items() if k not in ("c_grid", "selection")}
    write_json(
        out,
        {
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
        },
    )
    print(
        f"study probe seed {seed}, {size} per class ({len(chosen)} images, C {probe.c:g}): test macro-F1 "
        f"{scores(classification_metrics(test_logits, test[1], num_classes))['macro_f1']:.4f} -> {out}"
    )


def linear_head_from(state: dict) -> torch.nn.Linear:
    head = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    return head.eval()


if __name__ == "__main__":
    try:
        if sys.argv[1:2] == ["tune"] and len(sys.argv) == 3:
            tune_size = parse_cell("probe", ["0", sys.argv[2]])[1]
        else:
            tune_size = None
            cell_seed, cell_size = parse_cell("probe", sys.argv[1:])
    except PipelineError as err:
        sys.exit(f"study_probe: error: {err}; or: python -m stages.study_probe tune IMAGES_PER_CLASS")
    if tune_size is not None:
        run_cell(
            f"probe_tune@{tune_size}",
            {"kind": "probe_tune", "size": str(tune_size)},
            lambda: main(0, tune_size, tune=True),
        )
    else:
        run_cell(
            f"probe@{cell_seed}-{cell_size}",
            {"kind": "probe", "size": str(cell_size), "seed": cell_seed},
            lambda: main(cell_seed, cell_size),
        )
