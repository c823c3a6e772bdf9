"""Stage probe@SEED-SIZE of the study (study/pipeline.yaml): the L-BFGS linear probe on one seeded subset of the
cached features.

python -m stages.study_probe SEED IMAGES_PER_CLASS|all. The train and selection subsets are the CNN cell's of the
same seed and size (petlab.data.draw_subset on the same splits); the seed changes nothing else, since L-BFGS on
fixed features starts from zero and draws nothing. The C is chosen on the selection subset from study.probe_c_grid,
as many values as the CNN's recipes tried (the same tuning budget).
"""

import sys

import torch

from petlab.calibration import calibration_summary
from petlab.data import draw_subset
from petlab.features import feature_split
from petlab.metrics import classification_metrics
from petlab.outputs import check_writable, load_torch, write_json
from petlab.params import load_params
from petlab.probe import fit_logistic_probe
from petlab.runtime import PipelineError, share_cpu
from petlab.study import (FEATURES, cell_path, encode_predictions, parse_cell, run_cell, scores,
                          subset_digest, val_size)


def main(seed: int, size) -> None:
    out = cell_path("probe", seed, size)
    check_writable([out])
    params = load_params()
    share_cpu()
    p = params.train_vit
    if not p.fits_lbfgs:
        raise PipelineError("the study's probe is the L-BFGS linear probe on cached features (train_vit.solver: lbfgs, "
                            "head: linear, augment: false, unfreeze: [])")
    cache = load_torch(FEATURES)
    info = cache["info"]
    num_classes = len(info["class_names"])
    train, val, test = (feature_split(cache, split, FEATURES).tensors for split in ("train", "val", "test"))
    chosen = draw_subset(train[1].tolist(), size, seed)
    selection = draw_subset(val[1].tolist(), val_size(size, params.study, params.data.val_fraction), seed)
    train_subset, val_subset = (train[0][chosen], train[1][chosen]), (val[0][selection], val[1][selection])
    probe = fit_logistic_probe(train_subset, val_subset, num_classes, params.study.probe_c_grid, p.max_iter,
                               name=f"study probe seed {seed}, {size} per class", grid_key="study.probe_c_grid")
    head = linear_head_from(probe.head_state)

    def logits(split) -> torch.Tensor:
        with torch.inference_mode():
            return head(split[0].float())

    test_logits, val_logits = logits(test), logits(val_subset)
    kept = {k: v for k, v in probe.selection.items() if k not in ("c_grid", "selection")}
    write_json(out, {
        "model": "probe", "kind": "probe", "seed": seed, "images_per_class": size, "train_images": len(chosen),
        "val_images": len(selection), "subset": subset_digest([info["images"]["train"][i] for i in chosen]),
        "val_subset": subset_digest([info["images"]["val"][i] for i in selection]), **kept,
        "configurations_tried": len(probe.sweep),
        "sweep_val_macro_f1": [row["val_macro_f1"] for row in probe.sweep],
        "train": scores(classification_metrics(logits(train_subset), train_subset[1], num_classes)),
        "val": scores(probe.best_val), "test": scores(classification_metrics(test_logits, test[1], num_classes)),
        "test_predicted": encode_predictions(test_logits.argmax(1).tolist()),
        "calibration": calibration_summary(val_logits.numpy(), val_subset[1].numpy(), test_logits.numpy(),
                                           test[1].numpy()),
        # The fit's arithmetic: each L-BFGS iteration evaluates the loss and its gradient on the train features,
        # about 4 x images x feature size x classes FLOPs (a forward and a backward product).
        "compute": {"fit_gflops": round(4 * len(chosen) * train[0].shape[1] * num_classes
                                        * sum(row["iterations"] for row in probe.sweep) / 1e9, 6)},
        "timm_model": info["timm_model"], "pretrained": info["pretrained"], "weights_source": info["weights_source"],
    })
    print(f"study probe seed {seed}, {size} per class ({len(chosen)} images, C {probe.c:g}): test macro-F1 "
          f"{scores(classification_metrics(test_logits, test[1], num_classes))['macro_f1']:.4f} -> {out}")


def linear_head_from(state: dict) -> torch.nn.Linear:
    head = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    return head.eval()


if __name__ == "__main__":
    try:
        cell_seed, cell_size = parse_cell("probe", sys.argv[1:])
    except PipelineError as err:
        sys.exit(f"study_probe: error: {err}")
    run_cell(f"probe@{cell_seed}-{cell_size}", {"kind": "probe", "size": str(cell_size), "seed": cell_seed},
             lambda: main(cell_seed, cell_size))
