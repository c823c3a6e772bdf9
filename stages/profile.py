"""Stage profile@MODEL (cnn, vit): torch.profiler over one model's real training steps, and its cost (the report sets
the two side by side)."""

import os

# torch's memory profiling logs "CPUAllocator.cpp:245 Memory block of unknown size was allocated before the
# profiling started ..." (a C++ warning, not a Python one) whenever a block allocated before profiling (the model,
# the data) is freed during it, i.e. on every run. c10 reads its log level once, when torch loads, so this stage
# sets it first, before anything imports torch; set TORCH_CPP_LOG_LEVEL yourself to see such lines.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

from pathlib import Path

import torch
from torch import nn

from petlab.core.outputs import load_torch, write_json
from petlab.core.stage import run_model_stage
from petlab.data.dataset import PreparedData
from petlab.measure.profiling import forward_gflops, profile_steps, step_stats, time_calls
from petlab.models.registry import count_parameters
from petlab.train.loop import StepContext, make_optimizer, train_step
from petlab.train.run import image_loader, load_trained, make_context, setup_stage, transform_spec

DATA = Path("data/oxford_pets")
CHECKPOINTS = {"cnn": Path("models/cnn.pt"), "vit": Path("models/vit.pt")}
METRICS = Path("metrics/profile")  # <model>.json
TOP_OPS = Path("plots/profile")  # top_ops_<model>.json: lists, so not beside the metrics
TRACES = Path("runs/profile")


def profile_model(
    name: str, model: nn.Module, config: dict, ctx: StepContext, params, data: PreparedData, optim
) -> dict:
    """Profile full training steps from images; the probe's step is its frozen forward plus the head update."""
    p = params.profile
    spec = transform_spec(config)
    loader = image_loader(data, "train", spec, p.batch_size, True, params, ctx.device)
    optimizer, _ = make_optimizer(model.parameters(), optim, steps_per_epoch=1)
    scaler = ctx.precision.grad_scaler(ctx.device)  # the step the training loop runs: fp16 scales its gradients
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    stats = profile_steps(
        lambda x, y: train_step(model, x, y, optimizer, loss_fn, ctx, scaler),
        loader,
        p,
        ctx.device,
        TRACES / name,
        desc=f"profile: {name}",
    )
    counts = count_parameters(model)
    stats.update(
        {
            "trainable_parameters": counts["trainable"],
            "total_parameters": counts["total"],
            "gflops_per_image": forward_gflops(model, spec.size, ctx.device),
            "batch_size": p.batch_size,
            "precision": ctx.precision.name,
            "device": ctx.device.type,
            "input_size": spec.size,
        }
    )
    return stats


def probe_costs(model, ctx: StepContext, params, data: PreparedData, config: dict) -> dict:
    """The cached route's two parts: extracting features once, and one head step on cached features."""
    p = params.profile
    x, _ = next(iter(image_loader(data, "train", transform_spec(config), p.batch_size, False, params, ctx.device)))
    x = ctx.to_device(x)

    def extract():
        with torch.inference_mode(), ctx.precision.autocast(ctx.device):
            return model.backbone(x)

    extraction = step_stats(time_calls(extract, ctx.device, repeats=10), len(x))
    feats = extract().float().clone()
    y = torch.randint(0, data.num_classes, (len(feats),))
    head_ctx = StepContext(ctx.device, make_context(params, amp=False, channels_last=False).precision)
    optimizer, _ = make_optimizer(model.head.parameters(), params.train_vit, steps_per_epoch=1)
    loss_fn = nn.CrossEntropyLoss()
    head = step_stats(
        time_calls(
            lambda: train_step(model.head, feats, y, optimizer, loss_fn, head_ctx, None), ctx.device, repeats=50
        ),
        len(feats),
    )
    return {"feature_extraction": extraction, "cached_head_step": head}


def main(model: str) -> None:
    params, data = setup_stage(DATA)
    checkpoint = load_torch(CHECKPOINTS[model])
    trained = load_trained(checkpoint)
    optim = params.train_cnn if model == "cnn" else params.train_vit
    ctx = make_context(
        params,
        optim.amp,
        channels_last=model == "cnn" and params.train_cnn.channels_last,
        input_spec=transform_spec(checkpoint["model_config"]),
    )
    trained.to(ctx.device)
    if ctx.channels_last:
        trained = trained.to(memory_format=torch.channels_last)
    result = profile_model(model, trained, checkpoint["model_config"], ctx, params, data, optim)
    if model == "vit":
        result.update(probe_costs(trained, ctx, params, data, checkpoint["model_config"]))
    write_json(TOP_OPS / f"top_ops_{model}.json", {model: result.pop("top_ops")})
    p = params.profile
    result["schedule"] = {"wait": p.wait, "warmup": p.warmup, "active": p.active}
    write_json(METRICS / f"{model}.json", {model: result})
    print(
        f"profile: {model}: {result['step_ms_mean']:.1f} ms/step (p95 {result['step_ms_p95']:.1f}), "
        f"{result['throughput_images_per_s']:.0f} images/s, {result['gflops_per_image']:.3f} GFLOPs/image"
    )


if __name__ == "__main__":
    run_model_stage("profile", main, live_dir=str(TRACES / "{model}"))
