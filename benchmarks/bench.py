"""Side-by-side benchmark: the pipeline's way against the plain way, on one generated dataset and one machine.

    python -m benchmarks.bench --out bench.json          # the full run (a few minutes on 2 cores)
    python -m benchmarks.bench --quick --out quick.json  # every row on tiny data and models: checks it all works

Each comparison runs both ways on the same data, alternating them when repeated, so a
machine whose load drifts slows both alike; the ratios are what to read. The ViT has
random weights (there is no network here): that changes what it predicts, not its speed.
The CNN step's row also says how close it runs to the CPU's limit: its GFLOP/s (FLOPs counted
by FlopCounterMode) against its largest convolution's, measured alone in the same rounds.
A tool around the pipeline: nothing in petlab/ or stages/ imports it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2

from petlab.core.device import Precision, cpu_supports_bf16, default_num_workers, select_precision
from petlab.core.errors import PipelineError
from petlab.core.metrics import classification_metrics
from petlab.core.outputs import stage_names, timing_file, write_json
from petlab.core.params import DataParams, OptimParams, Params, TrainCNNParams, TrainViTParams, parse_params, to_dict
from petlab.core.runtime import keep_freed_memory
from petlab.data.dataset import ImageDataset, PreparedData
from petlab.data.transforms import TransformSpec, eval_transform, interpolation_mode, train_transform
from petlab.measure.profiling import PeakMemory
from petlab.models.backbone import FrozenBackboneClassifier, load_pretrained_backbone, timm_data_config
from petlab.models.cnn import SimpleCNN
from petlab.prepare.splits import prepare_oxford_pets
from petlab.prepare.synthetic import make_fake_pets
from petlab.probe.features import load_feature_split
from petlab.probe.logistic import fit_logistic_probe
from petlab.probe.recipe import train_probe
from petlab.train.loop import StepContext, fit, make_optimizer, predict, train_step
from petlab.train.run import image_loader, tensor_loader
from petlab.train.state import selection_key

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")

# Originals about the size of the real photos (most are 500x375 or 375x500).
# probe_head: the probe's head alone, on features the size of Oxford-IIIT Pet's train and val splits (2,944 and
# 736 images) from ViT-Tiny (192 features), 37 classes; "params" change train_vit's defaults (none at full size).
SIZES = {
    "full": {
        "classes": 5,
        "trainval": 32,
        "test": 8,
        "size_range": (375, 500),
        "vit": "vit_tiny_patch16_224",
        "image_size": 224,
        "cnn_batch": 64,
        "cnn_steps": 2,
        "repeats": 3,
        "data_images": 120,
        "probe_epochs": 10,
        "probe_head": {"train": 2944, "val": 736, "features": 192, "classes": 37, "params": {}},
    },
    "quick": {
        "classes": 3,
        "trainval": 8,
        "test": 3,
        "size_range": (120, 160),
        "vit": "test_vit",
        "image_size": 64,
        "cnn_batch": 8,
        "cnn_steps": 2,
        "repeats": 1,
        "data_images": 12,
        "probe_epochs": 2,
        "probe_head": {
            "train": 200,
            "val": 50,
            "features": 32,
            "classes": 5,
            "params": {"epochs": 3, "warmup_epochs": 1.0, "batch_size": 32, "c_grid": [0.1, 1.0, 10.0]},
        },
    },
}

# The whole pipeline under `dvc repro`: small training settings, so the run takes minutes, not hours.
PIPELINE_PARAMS = {
    "full": {
        "sanity": {"batch_size": 8, "max_steps": 200, "grid_images": 8},
        "train_cnn": {"image_size": 112, "epochs": 2, "batch_size": 32, "warmup_epochs": 0.5},
        "train_vit": {"pretrained": False, "epochs": 10, "batch_size": 64, "warmup_epochs": 1.0},
        "profile": {"wait": 1, "warmup": 1, "active": 3, "batch_size": 16},
    },
    "quick": {
        "data": {"val_fraction": 0.25},
        "sanity": {"batch_size": 8, "max_steps": 200, "grid_images": 4},
        "train_cnn": {"image_size": 64, "widths": [8, 16], "epochs": 1, "batch_size": 8, "warmup_epochs": 0.5},
        "train_vit": {"model": "test_vit", "pretrained": False, "epochs": 2, "batch_size": 8, "warmup_epochs": 1.0},
        "profile": {"wait": 1, "warmup": 1, "active": 2, "batch_size": 8},
    },
}

# The least time the CNN row's reference (the largest convolution alone) runs in each round.
REFERENCE_SECONDS = 1.0

# ---------------------------------------------------------------- measuring


def measure(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(seconds, peak RSS rise in MB, fn's result) of one call."""
    with PeakMemory(CPU) as memory:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return seconds, memory.peak_mb, result


def side_by_side(
    plain: Callable[[], object],
    pipeline: Callable[[], object],
    repeats: int,
    also: dict[str, Callable[[], object]] | None = None,
) -> dict:
    """Run the two ways alternately `repeats` times; median seconds and the largest peak-RSS rise of each.

    `also`: more functions measured in the same rounds, under the same load, each under its own name.
    """
    fns = {"plain": plain, "pipeline": pipeline, **(also or {})}
    runs = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds, peak_mb, _ = measure(fn)
            runs[name].append((seconds, peak_mb))
    out = {
        name: {
            "seconds": round(statistics.median(s for s, _ in r), 4),
            "seconds_all": [round(s, 4) for s, _ in r],
            "peak_rss_rise_mb": round(max(m for _, m in r), 1),
        }
        for name, r in runs.items()
    }
    out["speedup"] = round(out["plain"]["seconds"] / out["pipeline"]["seconds"], 2)
    return out


def add_rates(result: dict, images: int) -> dict:
    for name in ("plain", "pipeline"):
        result[name]["images_per_s"] = round(images / result[name]["seconds"], 2)
    return result


# ---------------------------------------------------------------- the plain ways


def plain_train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer, loss_fn) -> torch.Tensor:
    """fp32, NCHW, eager: the straightforward step."""
    loss = loss_fn(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


class PlainImageDataset(Dataset):
    """The usual dataset: PIL decodes each image and a per-image transform makes its float tensor."""

    def __init__(self, items, transform: Callable):
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label


def plain_train_transform(spec: TransformSpec) -> Callable:
    crop = v2.RandomResizedCrop(spec.size, interpolation=interpolation_mode(spec.interpolation), antialias=True)
    return v2.Compose(
        [
            crop,
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(spec.mean, spec.std),
        ]
    )


def plain_eval_transform(spec: TransformSpec) -> Callable:
    resize = v2.Resize(
        math.floor(spec.size / spec.crop_pct), interpolation=interpolation_mode(spec.interpolation), antialias=True
    )
    return v2.Compose(
        [
            resize,
            v2.CenterCrop(spec.size),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(spec.mean, spec.std),
        ]
    )


def plain_loader(items, transform, batch_size: int, train: bool, seed: int) -> DataLoader:
    """In-process loading of normalised float images, shuffled with the same generator as the pipeline's
    in-memory loaders."""
    dataset = PlainImageDataset(items, transform)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        generator=torch.Generator().manual_seed(seed),
        drop_last=train and len(dataset) > batch_size,
    )


def probe_from_images(
    model: FrozenBackboneClassifier, data: PreparedData, spec: TransformSpec, optim: OptimParams, seed: int
) -> nn.Module:
    """The probe trained the plain way: every image through the frozen backbone, every epoch, in fp32.

    Same optimiser, schedule, batch order and epoch selection as the cached route with train_vit.solver sgd,
    so with augmentation off both train the same head; only where the features come from differs.
    """
    train = plain_loader(data.items("train"), plain_eval_transform(spec), optim.batch_size, True, seed)
    val = plain_loader(data.items("val"), plain_eval_transform(spec), optim.batch_size, False, seed)
    optimizer, _ = make_optimizer(model.head.parameters(), optim, len(train))  # its schedule follows optimizer.step
    loss_fn = nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
    best_key, best_state = None, None
    for _ in range(optim.epochs):
        model.train()
        for x, y in train:
            plain_train_step(model, x, y, optimizer, loss_fn)
        model.eval()
        with torch.no_grad():
            logits, labels = (torch.cat(t) for t in zip(*[(model(x), y) for x, y in val]))
        val_m = {
            **classification_metrics(logits, labels, data.num_classes),
            "loss": float(nn.functional.cross_entropy(logits, labels)),
        }
        if best_key is None or selection_key(val_m) > best_key:
            best_key, best_state = selection_key(val_m), copy.deepcopy(model.head.state_dict())
    model.head.load_state_dict(best_state)
    return model.head


# ---------------------------------------------------------------- the comparisons


def bench_probe(data: PreparedData, params: Params, workdir: Path) -> dict:
    """Linear probe, 10 epochs: head on cached features (the pipeline) vs the backbone every epoch (plain)."""
    p = params.train_vit
    fp32 = replace(params, train_vit=replace(p, amp=False))

    def plain():
        backbone, _ = load_pretrained_backbone(p.model, False, None)
        model = FrozenBackboneClassifier(backbone, data.num_classes)
        return probe_from_images(model, data, transform_spec_of(model), p, params.seed)

    def pipeline(run_params: Params, name: str):
        return lambda: train_probe(run_params, data, workdir / "runs" / name, workdir / f"{name}.pt")

    result = side_by_side(plain, pipeline(params, "features"), repeats=1)
    # The same cached route in fp32: how much of the gain is caching alone.
    seconds, peak_mb, _ = measure(pipeline(fp32, "features_fp32"))
    result["pipeline_fp32"] = {"seconds": round(seconds, 4), "peak_rss_rise_mb": round(peak_mb, 1)}
    result["speedup_caching_alone"] = round(result["plain"]["seconds"] / seconds, 2)
    cache = workdir / "features.pt"
    result.update(
        {
            "epochs": p.epochs,
            "model": p.model,
            "weights": "random (no network; speed is the same)",
            "pipeline_precision": select_precision(CPU, p.amp).name,
            "plain_precision": "fp32",
            "train_images": len(data.items("train")),
            "val_images": len(data.items("val")),
            "feature_cache_mb": round(cache.stat().st_size / 2**20, 3),
            "note": "pipeline time includes extracting train, val and test features once",
        }
    )
    return result


def synthetic_features(n: int, shape: dict, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian classes of features (balanced labels), far enough apart for a linear head to tell most apart."""
    means = torch.randn(shape["classes"], shape["features"], generator=torch.Generator().manual_seed(0)) * 0.2
    labels = torch.arange(n) % shape["classes"]
    return means[labels] + torch.randn(n, shape["features"], generator=generator), labels


def bench_probe_head(params: Params, size: dict) -> dict:
    """The probe's head alone, on cached features of the real split's size: the default L-BFGS sweep over
    train_vit.c_grid (pipeline) vs the head the training loop used to train by default, 100 epochs of AdamW at
    batch 256 with validation every epoch (plain). Generated features: the time, not the scores, is the point."""
    shape = size["probe_head"]
    generator = torch.Generator().manual_seed(params.seed)
    train, val = (synthetic_features(shape[split], shape, generator) for split in ("train", "val"))
    p = TrainViTParams(solver="sgd", **shape["params"])
    ctx = StepContext(CPU, Precision(None, False))
    scores = {}

    def plain():
        torch.manual_seed(params.seed)
        head = nn.Linear(shape["features"], shape["classes"])
        result = fit(
            head,
            tensor_loader(TensorDataset(*train), p.batch_size, True, seed=params.seed, loader=params.loader),
            tensor_loader(TensorDataset(*val), p.batch_size, False, seed=params.seed, loader=params.loader),
            p,
            ctx,
            shape["classes"],
            name="bench: old probe head",
        )
        scores["plain"] = result.best_val

    def pipeline():
        scores["pipeline"] = fit_logistic_probe(
            train, val, shape["classes"], p.c_grid, p.max_iter, name="bench: probe head"
        ).best_val

    result = side_by_side(plain, pipeline, repeats=1)
    for name in ("plain", "pipeline"):
        result[name].update({f"val_{k}": scores[name][k] for k in ("accuracy", "macro_f1")})
    result["plain"].update({"solver": "sgd (AdamW)", "epochs": p.epochs, "batch_size": p.batch_size, "lr": p.lr})
    result["pipeline"].update({"solver": "lbfgs", "c_grid": list(p.c_grid), "max_iter": p.max_iter})
    result.update(
        {
            "train": shape["train"],
            "val": shape["val"],
            "features": shape["features"],
            "classes": shape["classes"],
            "note": "generated Gaussian features; val scores show both fits work",
        }
    )
    return result


def transform_spec_of(model: FrozenBackboneClassifier) -> TransformSpec:
    return TransformSpec.from_timm(timm_data_config(model.backbone))


def cnn_setup(data: PreparedData, size: dict, seed: int):
    """One real training batch in memory (uint8, as the pipeline's loader gives it), the CNN at its pipeline
    settings, and the pipeline's step context."""
    p = TrainCNNParams(image_size=size["image_size"], batch_size=size["cnn_batch"])
    spec = TransformSpec(size=p.image_size)
    dataset = ImageDataset(data.items("train"), train_transform(spec), seed=seed)
    x, y = next(iter(DataLoader(dataset, batch_size=p.batch_size)))
    torch.manual_seed(seed)
    model = SimpleCNN(data.num_classes, list(p.widths), p.dropout)
    ctx = StepContext(CPU, select_precision(CPU, p.amp), p.channels_last, input_spec=spec)
    return p, x, y, model, ctx


def pipeline_model(model: nn.Module, ctx: StepContext) -> nn.Module:
    model = copy.deepcopy(model)
    return model.to(memory_format=torch.channels_last) if ctx.channels_last else model


def bench_cnn_step(data: PreparedData, size: dict, seed: int, try_compile: bool) -> dict:
    p, x, y, model, ctx = cnn_setup(data, size, seed)
    x_float = ctx.input_spec.normalize(x)  # the plain step gets its input ready-made; the pipeline's step normalises
    loss_fn = nn.CrossEntropyLoss(label_smoothing=p.label_smoothing)
    plain_model, fast_model = copy.deepcopy(model), pipeline_model(model, ctx)
    plain_opt, _ = make_optimizer(plain_model.parameters(), p, 1)
    fast_opt, _ = make_optimizer(fast_model.parameters(), p, 1)
    steps = size["cnn_steps"]

    def plain():
        for _ in range(steps):
            plain_train_step(plain_model, x_float, y, plain_opt, loss_fn)

    def pipeline_with(m, optimizer):
        def run():
            for _ in range(steps):
                train_step(m, x, y, optimizer, loss_fn, ctx, None)

        return run

    plain_train_step(plain_model, x_float, y, plain_opt, loss_fn)  # warm-up: first-call allocations, oneDNN primitives
    # The pipeline's warm-up step, counted: its FLOPs and the inputs of its convolutions.
    step_flops, conv_flops, conv_inputs = count_step_flops(fast_model, x, y, fast_opt, loss_fn, ctx)
    conv_name = largest_conv(fast_model, conv_flops)
    conv = conv_pass(fast_model.get_submodule(conv_name), conv_inputs[conv_name], ctx)
    with FlopCounterMode(display=False) as counter:  # the reference's warm-up, counted the same way
        conv()
    # A pass can take a few hundredths of a second (bf16 on AMX), too short to time steadily on a shared machine:
    # each round runs the reference for at least REFERENCE_SECONDS.
    conv_passes = max(steps, math.ceil(REFERENCE_SECONDS / measure(conv)[0]))

    def conv_steps():
        for _ in range(conv_passes):
            conv()

    result = add_rates(
        side_by_side(plain, pipeline_with(fast_model, fast_opt), size["repeats"], also={"largest_conv": conv_steps}),
        steps * len(x),
    )
    for name, runs, flops in (
        ("plain", steps, step_flops),
        ("pipeline", steps, step_flops),
        ("largest_conv", conv_passes, counter.get_total_flops()),
    ):
        result[name]["gflop_per_s"] = round(runs * flops / result[name]["seconds"] / 1e9, 2)
    module = fast_model.get_submodule(conv_name)
    result.update(
        {
            "batch_size": len(x),
            "image_size": p.image_size,
            "widths": list(p.widths),
            "steps_per_measurement": steps,
            "pipeline": {
                **result["pipeline"],
                "precision": ctx.precision.name,
                "channels_last": ctx.channels_last,
                "compiled": False,
            },
            "plain": {**result["plain"], "precision": "fp32", "channels_last": False, "compiled": False},
            "flops": {
                "per_image_gflop": round(step_flops / len(x) / 1e9, 4),
                "per_step_gflop": round(step_flops / 1e9, 4),
                "counted_by": FLOP_COUNT,
            },
            "largest_conv": {
                "module": conv_name,
                "in_channels": module.in_channels,
                "out_channels": module.out_channels,
                "kernel_size": list(module.kernel_size),
                "stride": list(module.stride),
                "padding": list(module.padding),
                "input_shape": list(conv_inputs[conv_name]["shape"]),
                "input_requires_grad": conv_inputs[conv_name]["requires_grad"],
                "precision": ctx.precision.name,
                "channels_last": ctx.channels_last,
                "gflop_per_pass": round(counter.get_total_flops() / 1e9, 4),
                "gflop_in_step": round(conv_flops[conv_name] / 1e9, 4),
                **result["largest_conv"],
                "passes_per_measurement": conv_passes,
                "note": "forward and backward of the step's convolution with the most FLOPs, "
                "alone, at the step's batch size, layout and precision, measured in the "
                "same rounds as the steps",
            },
            "pipeline_fraction_of_conv_rate": round(
                result["pipeline"]["gflop_per_s"] / result["largest_conv"]["gflop_per_s"], 3
            ),
        }
    )
    if try_compile:
        result["torch_compile"] = bench_compile(model, ctx, p, x, y, loss_fn, steps, result["pipeline"]["seconds"])
    return result


FLOP_COUNT = (
    "torch.utils.flop_counter.FlopCounterMode over one real training step, forward and backward: "
    "convolutions and matrix products, a multiply-add counted as 2 FLOPs, each backward product as "
    "computed (the first convolution computes no input gradient); BatchNorm, ReLU, pooling and the "
    "optimizer count none, though they take time"
)


def count_step_flops(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer, loss_fn, ctx: StepContext
) -> tuple[int, dict[str, int], dict[str, dict]]:
    """One real training step under FlopCounterMode (see FLOP_COUNT): its FLOPs in all, those of each
    convolution (forward and backward) by module name, and what each convolution received (shape, dtype,
    whether its input needs a gradient)."""
    convs = {name: module for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
    inputs = {}

    def record(name: str):
        def hook(_module, args):
            inputs[name] = {
                "shape": tuple(args[0].shape),
                "dtype": args[0].dtype,
                "requires_grad": args[0].requires_grad,
            }

        return hook

    hooks = [module.register_forward_pre_hook(record(name)) for name, module in convs.items()]
    try:
        with FlopCounterMode(display=False) as counter:
            train_step(model, x, y, optimizer, loss_fn, ctx, None)
    finally:
        for hook in hooks:
            hook.remove()
    per_module = counter.get_flop_counts()  # keyed by the model's class name, then the module's own name
    conv_flops = {name: sum(per_module[f"{type(model).__name__}.{name}"].values()) for name in convs}
    return counter.get_total_flops(), conv_flops, inputs


def largest_conv(model: nn.Module, conv_flops: dict[str, int]) -> str:
    """The convolution with the most FLOPs in the step; of equals (32-64-128 has two), the one with more
    weights, whose wider matrices run closer to the CPU's peak."""
    return max(conv_flops, key=lambda name: (conv_flops[name], model.get_submodule(name).weight.numel()))


def conv_pass(conv: nn.Conv2d, received: dict, ctx: StepContext) -> Callable[[], None]:
    """Forward and backward of one convolution alone, as the step runs it: a copy of the module (same layout),
    an input of the shape and dtype it received, in the step's layout and precision, and the gradients the
    step computes (weight, bias, and the input's where the step needs it)."""
    conv = copy.deepcopy(conv)
    memory_format = torch.channels_last if ctx.channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(received["shape"], generator=generator)
    x = x.to(dtype=received["dtype"], memory_format=memory_format).requires_grad_(received["requires_grad"])
    wrt = [t for t in (x, *conv.parameters()) if t.requires_grad]
    with torch.no_grad(), ctx.precision.autocast(CPU):
        out = conv(x)  # the output's shape and dtype, for the gradient that comes back into it
    grad = torch.randn(out.shape, generator=generator).to(dtype=out.dtype, memory_format=memory_format)

    def run() -> None:
        for t in wrt:  # as the step's zero_grad(set_to_none=True): backward assigns the gradients, adds nothing
            t.grad = None
        with ctx.precision.autocast(CPU):
            out = conv(x)
        out.backward(grad)

    return run


def bench_compile(
    model: nn.Module, ctx: StepContext, p: TrainCNNParams, x, y, loss_fn, steps: int, eager_seconds: float
) -> dict:
    """The pipeline step under torch.compile: its one-off compile time and the steps it takes to pay that back."""
    import torch._inductor.config

    torch._inductor.config.fallback_random = True  # dropout masks as in eager mode: same training
    compiled = pipeline_model(model, ctx)
    compiled.compile()
    optimizer, _ = make_optimizer(compiled.parameters(), p, 1)
    start = time.perf_counter()
    train_step(compiled, x, y, optimizer, loss_fn, ctx, None)
    compile_seconds = time.perf_counter() - start
    seconds, peak_mb, _ = measure(
        lambda: [train_step(compiled, x, y, optimizer, loss_fn, ctx, None) for _ in range(steps)]
    )
    saved_per_step = (eager_seconds - seconds) / steps
    steps_per_epoch = 2944 // p.batch_size  # Oxford-IIIT Pet train split at val_fraction 0.2
    break_even = compile_seconds / saved_per_step if saved_per_step > 0 else None
    return {
        "compile_seconds": round(compile_seconds, 2),
        "seconds": round(seconds, 4),
        "images_per_s": round(steps * len(x) / seconds, 2),
        "peak_rss_rise_mb": round(peak_mb, 1),
        "speedup_vs_eager_pipeline": round(eager_seconds / seconds, 2),
        "break_even_steps": None if break_even is None else round(break_even, 1),
        "oxford_pets_steps_per_epoch": steps_per_epoch,
        "note": "training graph only; evaluation in eval mode and a ragged last batch compile again",
    }


def bench_data_path(prepared: PreparedData, originals: PreparedData, size: dict, seed: int) -> dict:
    """Decode + training augmentation, through to normalised float batches.

    plain: original-size images, decoded by PIL, each cropped, flipped, made float and normalised.
    pipeline: prepared images (shorter side 256) through the pipeline's dataset (decoded straight to uint8,
    cropped and flipped with tensor kernels, per-sample seeding) and its per-batch normalisation.
    The pipeline's way on the original-size images tells how much the prepared sizes alone bring.
    On one torch thread, as in a DataLoader worker: with several, torch's thread pool costs more
    than it saves on one image's small tensor ops (about 6x slower on a 2-core machine).
    """
    spec = TransformSpec(size=size["image_size"])
    n, batch = size["data_images"], size["cnn_batch"]

    def plain():
        dataset = PlainImageDataset(originals.items("train")[:n], plain_train_transform(spec))
        images = [dataset[i][0] for i in range(n)]
        return [torch.stack(images[i : i + batch]) for i in range(0, n, batch)]

    def pipeline_way(data: PreparedData):
        def run():
            dataset = ImageDataset(data.items("train")[:n], train_transform(spec), seed=seed)
            images = [dataset[i][0] for i in range(n)]
            return [spec.normalize(torch.stack(images[i : i + batch])) for i in range(0, n, batch)]

        return run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = add_rates(side_by_side(plain, pipeline_way(prepared), size["repeats"]), n)
        sizes_alone = add_rates(side_by_side(pipeline_way(originals), pipeline_way(prepared), size["repeats"]), n)
    finally:
        torch.set_num_threads(threads)
    result.update(
        {
            "images": n,
            "output_size": spec.size,
            "prepared_max_side": 256,
            "original_mean_pixels": mean_pixels(originals, n),
            "prepared_mean_pixels": mean_pixels(prepared, n),
            "pipeline_on_originals": sizes_alone["plain"],
            "speedup_from_prepared_sizes_alone": sizes_alone["speedup"],
        }
    )
    return result


def mean_pixels(data: PreparedData, n: int) -> int:
    sizes = []
    for path, _ in data.items("train")[:n]:
        with Image.open(path) as image:
            sizes.append(image.size[0] * image.size[1])
    return int(statistics.mean(sizes))


def bench_loader(prepared: PreparedData, params: Params, size: dict) -> dict:
    """Batches per second through the pipeline's DataLoader (workers from the core count; batch normalisation
    included) vs in-process loading, both on the prepared images."""
    spec = TransformSpec(size=size["image_size"])
    n_items = prepared.items("train")
    batch = size["cnn_batch"]

    def plain():
        for _ in plain_loader(n_items, plain_train_transform(spec), batch, True, params.seed):
            pass

    loader = image_loader(prepared, "train", spec, batch, True, CPU, seed=params.seed, loader=params.loader)
    iter(loader)  # start the persistent workers outside the timing, as after the first epoch

    def pipeline():
        for x, _ in loader:
            spec.normalize(x)

    result = add_rates(side_by_side(plain, pipeline, size["repeats"]), len(loader) * batch)
    result.update(
        {
            "workers": default_num_workers(CPU) if params.loader.num_workers is None else params.loader.num_workers,
            "pin_memory": bool(loader.pin_memory),
            "note": "in-process loading also runs each image's tensor ops on torch's full thread pool, which "
            "is slow for such small ops; the pipeline's peak RSS leaves out its worker processes",
        }
    )
    return result


def bench_evaluate(prepared: PreparedData, params: Params, size: dict, workdir: Path) -> dict:
    """CNN: batched inference_mode at the training precision vs fp32 NCHW no_grad, on test images decoded in memory.
    Probe: the head on cached test features vs a backbone pass over the test images."""
    p, _, _, model, ctx = cnn_setup(prepared, size, params.seed)
    batch = params.evaluate.batch_size
    dataset = ImageDataset(prepared.items("test"), eval_transform(ctx.input_spec))
    decoded = [dataset[i] for i in range(len(dataset))]
    x, y = torch.stack([x for x, _ in decoded]), torch.tensor([y for _, y in decoded])
    batches = tensor_loader(
        TensorDataset(x, y), batch, False, seed=params.seed, loader=params.loader
    )  # uint8: the pipeline normalises per batch
    float_batches = tensor_loader(
        TensorDataset(ctx.input_spec.normalize(x), y), batch, False, seed=params.seed, loader=params.loader
    )
    images = len(decoded)
    plain_model, fast_model = copy.deepcopy(model).eval(), pipeline_model(model, ctx).eval()

    def plain_cnn():
        with torch.no_grad():
            return torch.cat([plain_model(x) for x, _ in float_batches])

    cnn = add_rates(side_by_side(plain_cnn, lambda: predict(fast_model, batches, ctx), size["repeats"]), images)
    logits_plain, (logits_fast, _) = plain_cnn(), predict(fast_model, batches, ctx)
    cnn.update(
        {
            "precision": ctx.precision.name,
            "channels_last": ctx.channels_last,
            "max_abs_logit_difference": round(float((logits_plain - logits_fast).abs().max()), 5),
            "argmax_agreement": round(float((logits_plain.argmax(1) == logits_fast.argmax(1)).float().mean()), 4),
        }
    )

    cache = workdir / "features.pt"  # written by the probe comparison
    probe_model = FrozenBackboneClassifier(
        load_pretrained_backbone(params.train_vit.model, False, None)[0], prepared.num_classes
    ).eval()
    vit_spec = transform_spec_of(probe_model)

    def plain_probe():
        with torch.no_grad():
            return [
                probe_model(x)
                for x, _ in plain_loader(
                    prepared.items("test"), plain_eval_transform(vit_spec), batch, False, params.seed
                )
            ]

    def cached_probe():
        loader = tensor_loader(load_feature_split(cache, "test"), batch, False, seed=params.seed, loader=params.loader)
        return predict(probe_model.head, loader, StepContext(CPU, select_precision(CPU, False)))

    probe = add_rates(side_by_side(plain_probe, cached_probe, size["repeats"]), len(prepared.items("test")))
    probe["note"] = "the pipeline loads the cached test features written by train_vit; no backbone pass"
    return {"cnn": cnn, "probe": probe, "batch_size": batch}


# ---------------------------------------------------------------- the whole pipeline


def pipeline_params(mode: str, pets: Path) -> dict:
    """The schema's defaults (the committed params.yaml's values), never the workspace's params.yaml, which an
    experiment may have changed, with the benchmark's own settings on top."""
    params = to_dict(Params())
    for group, values in {
        **PIPELINE_PARAMS[mode],
        "data": {**PIPELINE_PARAMS[mode].get("data", {}), "root": str(pets)},
    }.items():
        params[group].update(values)
    parse_params(params, source="the benchmark's pipeline params")  # refused here, before any work
    return params


def bench_pipeline(pets: Path, mode: str, workdir: Path) -> dict:
    """`dvc repro` of every stage in a temporary copy of the project, with each stage's own wall time."""
    project = workdir / "project"
    project.mkdir()
    shutil.copy2(REPO / "dvc.yaml", project / "dvc.yaml")
    for name in ("petlab", "stages"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "params.yaml").write_text(yaml.safe_dump(pipeline_params(mode, pets), sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, env=env, check=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()] or proc.stderr.splitlines()
        raise PipelineError(f"`dvc repro` of the benchmark's project failed: {' | '.join(errors[-3:])}")
    return {**pipeline_summary(project, seconds), "params": PIPELINE_PARAMS[mode]}


def pipeline_summary(project: Path, seconds: float) -> dict:
    """What a finished `dvc repro` of the whole pipeline in `project` took: `seconds` of wall time, each stage's own."""
    # Each stage writes its own wall time to metrics/timing/<stage>.json (petlab.core.stage.run_stage); other files
    # there hold other timings (train_vit_fit.json: the probe's features and head), so read the stages by name.
    stages = {
        name: json.loads((project / timing_file(name)).read_text())["seconds"]
        for name in stage_names(project / "dvc.yaml")
    }
    # ru_maxrss of children: the largest of the stage processes dvc ran (KiB on Linux).
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "dvc_repro_seconds": round(seconds, 2),
        "stage_seconds": stages,
        "stages_total_seconds": round(sum(stages.values()), 2),
        # dvc's own work plus every stage process's start-up and imports (torch, torchvision, timm)
        "outside_stages_seconds": round(seconds - sum(stages.values()), 2),
        "peak_rss_largest_process_mb": round(peak_kib / 1024, 1),
        "probe_fit_seconds": json.loads((project / "metrics/timing/train_vit_fit.json").read_text()),
    }


# ---------------------------------------------------------------- running it all


def prepare_both(pets: Path, workdir: Path, seed: int) -> tuple[PreparedData, PreparedData, dict]:
    """The pipeline's prepare twice: shorter side 256 (what the pipeline trains on) and original sizes."""
    timings = {}
    for name, max_side in (("prepared", 256), ("originals", None)):
        seconds, peak_mb, _ = measure(
            lambda max_side=max_side, name=name: prepare_oxford_pets(
                DataParams(root=str(pets), max_side=max_side), seed, workdir / name
            )
        )
        timings[name] = {"seconds": round(seconds, 3), "peak_rss_rise_mb": round(peak_mb, 1)}
    return PreparedData.open(workdir / "prepared"), PreparedData.open(workdir / "originals"), timings


def run(mode: str, out: Path, pipeline: bool, try_compile: bool, seed: int = 42) -> dict:
    size = SIZES[mode]
    # The process set up as every stage sets itself up (experiments.setup_stage): freed memory kept for the next
    # tensors. Both ways of every row run in this process, so both get it.
    freed_memory_kept = keep_freed_memory()
    # The probe comparison is about caching: both ways train the head with the loop (solver sgd).
    params = Params(
        seed=seed,
        device="cpu",
        train_vit=TrainViTParams(
            model=size["vit"],
            pretrained=False,
            epochs=size["probe_epochs"],
            batch_size=64,
            warmup_epochs=1.0,
            solver="sgd",
        ),
    )
    params.check()
    with tempfile.TemporaryDirectory(prefix="petlab-bench-") as tmp:
        workdir = Path(tmp)
        pets = make_fake_pets(
            workdir / "oxford-iiit-pet",
            num_classes=size["classes"],
            trainval_per_class=size["trainval"],
            test_per_class=size["test"],
            size_range=size["size_range"],
            seed=seed,
            awkward_files=False,
        )
        report = {"mode": mode, "machine": machine(freed_memory_kept)}
        # The whole pipeline first: the peak RSS of child processes then belongs to its stages alone.
        if pipeline:
            report["pipeline"] = step("whole pipeline (dvc repro)", lambda: bench_pipeline(pets, mode, workdir))
        prepared, originals, prepare_timing = prepare_both(pets, workdir, seed)
        report["dataset"] = {
            "classes": size["classes"],
            "original_size_range": list(size["size_range"]),
            "images": {s: len(prepared.items(s)) for s in ("train", "val", "test")},
            "prepare": prepare_timing,
        }
        report["probe"] = step("linear probe", lambda: bench_probe(prepared, params, workdir))
        report["probe_head"] = step("probe head", lambda: bench_probe_head(params, size))
        report["cnn_step"] = step("CNN training step", lambda: bench_cnn_step(prepared, size, seed, try_compile))
        report["data_path"] = step("data path", lambda: bench_data_path(prepared, originals, size, seed))
        report["loader"] = step("DataLoader", lambda: bench_loader(prepared, params, size))
        report["evaluate"] = step("evaluation", lambda: bench_evaluate(prepared, params, size, workdir))
    report["peak_rss_process_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    write_json(out, report)
    print_table(report)
    print(f"bench: written {out}")
    return report


def step(name: str, fn: Callable[[], dict]) -> dict:
    print(f"bench: {name} ...", flush=True)
    start = time.perf_counter()
    result = fn()
    print(f"bench: {name} done in {time.perf_counter() - start:.1f} s", flush=True)
    return result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(freed_memory_kept: bool) -> dict:
    return {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_bf16": cpu_supports_bf16(),
        "python": platform.python_version(),
        "freed_memory_kept": freed_memory_kept,
    }


def print_table(r: dict) -> None:
    rows = [
        (
            "linear probe, 10 epochs" if r["probe"]["epochs"] == 10 else f"linear probe, {r['probe']['epochs']} epochs",
            r["probe"],
            "s",
            "seconds",
        )
    ]
    head = r["probe_head"]
    rows += [
        (f"probe head {head['train']} x {head['features']}", head, "s", "seconds"),
        ("CNN training step", r["cnn_step"], "img/s", "images_per_s"),
        ("decode + augment", r["data_path"], "img/s", "images_per_s"),
        ("DataLoader (train epoch)", r["loader"], "img/s", "images_per_s"),
        ("evaluate CNN", r["evaluate"]["cnn"], "img/s", "images_per_s"),
        ("evaluate probe", r["evaluate"]["probe"], "img/s", "images_per_s"),
    ]
    # GFLOP/s and "of conv": the pipeline's CNN step, and its share of the largest convolution's rate.
    print(
        f"\n{'comparison':28s} {'plain':>14s} {'pipeline':>14s} {'ratio':>7s} {'GFLOP/s':>8s} {'of conv':>8s}"
        f"  peak RSS rise MB (plain/pipeline)"
    )
    for name, res, unit, key in rows:
        gflops, share = (
            (f"{res['pipeline']['gflop_per_s']:.2f}", f"{res['pipeline_fraction_of_conv_rate']:.0%}")
            if "gflop_per_s" in res["pipeline"]
            else ("", "")
        )
        print(
            f"{name:28s} {res['plain'][key]:>8.2f} {unit:<5s} {res['pipeline'][key]:>8.2f} {unit:<5s} "
            f"{res['speedup']:>6.2f}x {gflops:>8s} {share:>8s}  "
            f"{res['plain']['peak_rss_rise_mb']:.0f} / {res['pipeline']['peak_rss_rise_mb']:.0f}"
        )
    cnn, conv = r["cnn_step"], r["cnn_step"]["largest_conv"]
    print(
        f"CNN step: {cnn['flops']['per_image_gflop']:.3f} GFLOP per image, forward and backward (FlopCounterMode); "
        f"plain {cnn['plain']['gflop_per_s']:.2f} GFLOP/s, pipeline {cnn['pipeline']['gflop_per_s']:.2f} GFLOP/s "
        f"= {cnn['pipeline_fraction_of_conv_rate']:.1%} of the largest convolution alone ({conv['module']}: "
        f"{conv['in_channels']}->{conv['out_channels']}, {'x'.join(map(str, conv['kernel_size']))}, input "
        f"{'x'.join(map(str, conv['input_shape']))}, {conv['precision']}"
        f"{', channels_last' if conv['channels_last'] else ''}), forward and backward at "
        f"{conv['gflop_per_s']:.2f} GFLOP/s in the same run"
    )
    data_path = r["data_path"]
    print(
        f"decode + augment: the pipeline's own way on original-size images gives "
        f"{data_path['pipeline_on_originals']['images_per_s']:.2f} img/s; the prepared sizes alone bring "
        f"{data_path['speedup_from_prepared_sizes_alone']:.2f}x"
    )
    probe = r["probe"]
    print(
        f"probe: pipeline precision {probe['pipeline_precision']}; the cached route in fp32 alone is "
        f"{probe['speedup_caching_alone']:.2f}x; ViT weights are {probe['weights']}"
    )
    print(
        f"probe head: plain is the training loop's old default ({head['plain']['epochs']} epochs, batch "
        f"{head['plain']['batch_size']}), pipeline the L-BFGS sweep over {len(head['pipeline']['c_grid'])} C; "
        f"val accuracy {head['plain']['val_accuracy']:.3f} / {head['pipeline']['val_accuracy']:.3f} on generated "
        f"features, {head['classes']} classes"
    )
    if "torch_compile" in r["cnn_step"]:
        c = r["cnn_step"]["torch_compile"]
        payback = (
            "never pays back" if c["break_even_steps"] is None else f"pays back after {c['break_even_steps']} steps"
        )
        print(
            f"torch.compile on the pipeline step: {c['images_per_s']:.2f} img/s "
            f"({c['speedup_vs_eager_pipeline']:.2f}x the eager pipeline step) after {c['compile_seconds']:.1f} s "
            f"of compiling; {payback}"
        )
    if "pipeline" in r:
        print(pipeline_line(r["pipeline"]))


def pipeline_line(pl: dict) -> str:
    stages = ", ".join(f"{k} {v:.1f}" for k, v in pl["stage_seconds"].items())
    return (
        f"dvc repro: {pl['dvc_repro_seconds']:.1f} s wall ({stages} s; outside the stages "
        f"(dvc, Python start-up and imports) {pl['outside_stages_seconds']:.1f} s); largest process peak RSS "
        f"{pl['peak_rss_largest_process_mb']:.0f} MB"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="where to write the JSON results")
    parser.add_argument("--quick", action="store_true", help="a small run (tiny data and models) to check it works")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the `dvc repro` of the whole pipeline")
    parser.add_argument("--no-compile", action="store_true", help="skip measuring torch.compile")
    args = parser.parse_args(argv)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    try:
        run(
            "quick" if args.quick else "full",
            args.out,
            pipeline=not args.no_pipeline,
            try_compile=not (args.no_compile or args.quick),
        )
    except PipelineError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
