"""The sanity stage's report: the prepared data checked (petlab.sanity.checks) and both models overfitting a few
training batches (petlab.sanity.overfit), every failure listed in one place."""

from __future__ import annotations

from pathlib import Path

import torch

from petlab.core.params import Params
from petlab.data.dataset import PreparedData
from petlab.models.registry import create_model
from petlab.probe.recipe import build_probe
from petlab.sanity.checks import check_data, prepare_report
from petlab.sanity.overfit import image_batches, overfit, overfit_items, standardize
from petlab.train.cnn import cnn_config
from petlab.train.run import make_context, tensorboard, transform_spec


def overfit_both(params: Params, data: PreparedData, items: list, backbone: Path, log_dir: Path) -> dict[str, dict]:
    """The CNN on the images and the probe's head on their standardized features, each trained on the same few
    batches, in fp32 for both: this checks learning, not speed."""
    s = params.sanity
    with tensorboard(log_dir) as writer:
        config = cnn_config(params.train_cnn, data.num_classes)
        ctx = make_context(params.device, amp=False, channels_last=False, input_spec=transform_spec(config))
        cnn = create_model({**config, "dropout": 0.0}).to(ctx.device)
        cnn_batches = image_batches(items, ctx.input_spec, s.batch_size)
        result = {"cnn": overfit(cnn, cnn_batches, ctx, s.lr, s.max_steps, writer, "cnn")}

        probe, config = build_probe(params.train_vit, data.num_classes, backbone)
        ctx = make_context(params.device, amp=False, channels_last=False, input_spec=transform_spec(config))
        probe.to(ctx.device)
        with torch.no_grad():  # inference tensors could not be trained on below
            feature_batches = [
                (probe.features(ctx.to_device(x)).cpu(), y)
                for x, y in image_batches(items, ctx.input_spec, s.batch_size)
            ]
        result["probe"] = overfit(probe.head, standardize(feature_batches), ctx, s.lr, s.max_steps, writer, "probe")
        result["probe"]["weights_source"] = config["info"]["weights_source"]
    return result


def sanity_report(params: Params, data: PreparedData, backbone: Path, log_dir: Path) -> dict:
    """Every check's findings, with "passed" and the "failures" (one line each) last."""
    s = params.sanity
    items = overfit_items(data, s.overfit_batches, s.batch_size, params.seed)  # a size check, before decoding
    report, failures = check_data(data)
    report["prepare"] = prepare_report(data)
    if report["cross_split_duplicates"]["count"] and s.fail_on_overlap:
        failures.append(
            f"{report['cross_split_duplicates']['count']} image(s) appear in more than one split "
            f"(a leak): {report['cross_split_duplicates']['groups'][:5]}"
        )
    for name, result in overfit_both(params, data, items, backbone, log_dir).items():
        report[f"overfit_{name}"] = result
        if result["steps_to_100pct"] is None:
            failures.append(
                f"the {name} did not reach 100% train accuracy on {result['images']} images in "
                f"{result['max_steps']} steps (final accuracy {result['final_accuracy']:.3f}, loss "
                f"{result['final_loss']:.3f}); check the model, the labels and sanity.lr"
            )
    report["passed"] = not failures
    report["failures"] = failures
    return report
