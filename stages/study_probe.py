"""Stage study/dvc.yaml:probe@SEED-SIZE: the L-BFGS linear probe on one seeded subset of the cached features.

python -m stages.study_probe SEED IMAGES_PER_CLASS|all. The subset is the CNN cell's of the same seed and size
(petlab.study.draw_subset on the same train split); the seed changes nothing else, since L-BFGS on fixed
features starts from zero and draws nothing. The C is chosen on val as in the main pipeline (train_vit.c_grid).
"""

import torch

from petlab.features import feature_split
from petlab.metrics import classification_metrics
from petlab.outputs import check_writable, load_torch, write_json
from petlab.params import load_params
from petlab.probe import fit_logistic_probe
from petlab.runtime import PipelineError, Stopwatch, share_cpu
from petlab.study import FEATURES, cell_path, draw_subset, encode_predictions, run_cell, scores, subset_digest


def main(seed: int, size) -> None:
    clock = Stopwatch()
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
    fit_clock = Stopwatch()
    probe = fit_logistic_probe((train[0][chosen], train[1][chosen]), val, num_classes, p.c_grid, p.max_iter,
                               name=f"study probe seed {seed}, {size} per class")
    fit_seconds = fit_clock.seconds()
    head = linear_head_from(probe.head_state)

    def scored(split) -> tuple[torch.Tensor, dict]:
        with torch.inference_mode():
            logits = head(split[0].float())
        return logits, scores(classification_metrics(logits, split[1], num_classes))

    _, train_metrics = scored((train[0][chosen], train[1][chosen]))
    test_logits, test_metrics = scored(test)
    selection = {k: v for k, v in probe.selection.items() if k != "c_grid"}
    write_json(out, {
        "model": "probe", "seed": seed, "images_per_class": size, "train_images": len(chosen),
        "subset": subset_digest([info["images"]["train"][i] for i in chosen]), **selection,
        "train": train_metrics, "val": scores(probe.best_val), "test": test_metrics,
        "test_predicted": encode_predictions(test_logits.argmax(1).tolist()),
        "seconds": {"fit": fit_seconds, "cell": clock.seconds()},
        "timm_model": info["timm_model"], "pretrained": info["pretrained"], "weights_source": info["weights_source"],
    })
    print(f"study probe seed {seed}, {size} per class ({len(chosen)} images, C {probe.c:g}): test macro-F1 "
          f"{test_metrics['macro_f1']:.4f}, accuracy {test_metrics['accuracy']:.4f} -> {out}")


def linear_head_from(state: dict) -> torch.nn.Linear:
    head = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    return head.eval()


if __name__ == "__main__":
    run_cell("probe", main)
