"""Stage sanity_data: data checks (counts, decoding, leaks, sizes) and the overfit-a-few-batches check."""

from pathlib import Path

import numpy as np
import torch

from petlab.core.errors import PipelineError
from petlab.core.layout import SPLITS
from petlab.core.outputs import save_figure, write_json
from petlab.core.stage import run_stage
from petlab.figures import plots
from petlab.models.registry import create_model
from petlab.probe.recipe import build_probe
from petlab.sanity.checks import check_data, metrics_summary, prepare_report
from petlab.sanity.overfit import image_batches, overfit, overfit_items, standardize
from petlab.train.cnn import cnn_config
from petlab.train.run import make_context, setup_stage, tensorboard, transform_spec

DATA = Path("data/oxford_pets")
METRICS = Path("metrics/sanity.json")  # the scalars worth comparing
PLOTS = Path("plots/sanity")
REPORT = PLOTS / "report.json"  # everything, lists of files included
LOG_DIR = Path("runs/sanity")
PASSED = Path("data/checks/sanity_passed.json")  # what the training stages depend on
BACKBONE = Path("models/backbone.safetensors")  # written by the backbone_weights stage


def main() -> None:
    params, data = setup_stage(DATA)
    s = params.sanity
    items = overfit_items(data, s.overfit_batches, s.batch_size, params.seed)  # a size check, before decoding

    report, failures = check_data(data)
    report["prepare"] = prepare_report(data)
    if report["cross_split_duplicates"]["count"] and s.fail_on_overlap:
        failures.append(
            f"{report['cross_split_duplicates']['count']} image(s) appear in more than one split "
            f"(a leak): {report['cross_split_duplicates']['groups'][:5]}"
        )

    with tensorboard(LOG_DIR) as writer:
        # fp32 for both: this checks learning, not speed
        config = cnn_config(params, data.num_classes)
        ctx = make_context(params, amp=False, channels_last=False, input_spec=transform_spec(config))
        cnn = create_model({**config, "dropout": 0.0}).to(ctx.device)
        cnn_batches = image_batches(items, ctx.input_spec, s.batch_size)
        report["overfit_cnn"] = overfit(cnn, cnn_batches, ctx, s.lr, s.max_steps, writer, "cnn")

        probe, config = build_probe(params, data.num_classes, BACKBONE)
        ctx = make_context(params, amp=False, channels_last=False, input_spec=transform_spec(config))
        probe.to(ctx.device)
        with torch.no_grad():  # inference tensors could not be trained on below
            feature_batches = [
                (probe.features(ctx.to_device(x)).cpu(), y)
                for x, y in image_batches(items, ctx.input_spec, s.batch_size)
            ]
        report["overfit_probe"] = overfit(
            probe.head, standardize(feature_batches), ctx, s.lr, s.max_steps, writer, "probe"
        )
        report["overfit_probe"]["weights_source"] = config["info"]["weights_source"]
    for name in ("cnn", "probe"):
        if report[f"overfit_{name}"]["steps_to_100pct"] is None:
            r = report[f"overfit_{name}"]
            failures.append(
                f"the {name} did not reach 100% train accuracy on {r['images']} images in "
                f"{r['max_steps']} steps (final accuracy {r['final_accuracy']:.3f}, loss "
                f"{r['final_loss']:.3f}); check the model, the labels and sanity.lr"
            )

    report["passed"] = not failures
    report["failures"] = failures
    write_json(REPORT, report)
    write_json(METRICS, metrics_summary(report))
    save_figure(
        plots.class_counts_figure({sp: report["counts"][sp]["per_class"] for sp in SPLITS}, data.class_names),
        PLOTS / "class_counts.png",
    )
    rng = np.random.default_rng(params.seed)
    for split in SPLITS:
        split_items = data.items(split)
        pick = sorted(rng.choice(len(split_items), size=min(s.grid_images, len(split_items)), replace=False))
        save_figure(
            plots.sample_grid_figure([split_items[i] for i in pick], data.class_names, f"{split} samples"),
            PLOTS / f"samples_{split}.png",
        )
    if failures:
        raise PipelineError("sanity checks failed:\n  - " + "\n  - ".join(failures))
    # Unchanged content when the checks pass again, so DVC re-runs no training for a sanity-only change.
    write_json(PASSED, {"passed": True})
    print(
        f"sanity_data: all checks passed; CNN overfit in {report['overfit_cnn']['steps_to_100pct']} steps, "
        f"probe head in {report['overfit_probe']['steps_to_100pct']} steps"
    )


if __name__ == "__main__":
    run_stage("sanity_data", main, live_dirs=[LOG_DIR])
