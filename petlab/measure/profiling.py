"""torch.profiler over real training steps, with a wait/warmup/active schedule and TensorBoard traces; a trained
model's training step profiled, and the probe's cached route timed in its two parts."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler
from tqdm import tqdm

from petlab.core.device import synchronize
from petlab.core.outputs import load_torch, naming_failed_writes
from petlab.core.params import OptimParams, Params, ProfileParams
from petlab.core.records import PEAK_MEMORY_METRICS, TOP_OPS_TIME
from petlab.data.dataset import PreparedData
from petlab.models.registry import count_parameters, forward_gflops
from petlab.train.loop import StepContext, make_optimizer, train_step
from petlab.train.run import image_loader, load_trained, make_context, transform_spec


class PeakMemory:
    """Peak memory over a block, measured as PEAK_MEMORY_METRICS says for the device: `peak_mb` under `metric.key`.

    The process's RSS misses what a GPU holds (CUDA's memory, and Metal's, although MPS shares the host's
    memory), so each device is measured by its own allocator; CUDA's keeps its own peak, the others are sampled.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.metric = PEAK_MEMORY_METRICS[device.type]
        self.peak_mb = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        if self.device.type == "mps":
            self._read, self._base = torch.mps.driver_allocated_memory, 0  # an absolute figure, as CUDA's
        else:
            process = psutil.Process(os.getpid())
            self._read = lambda: process.memory_info().rss
            self._base = self._read()
        self._peak = self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, self._read())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._read())
        self.peak_mb = (self._peak - self._base) / 2**20


def step_stats(seconds: list[float], batch_size: int) -> dict:
    ms = np.array(seconds) * 1000.0
    return {
        "step_ms_mean": round(float(ms.mean()), 3),
        "step_ms_p50": round(float(np.percentile(ms, 50)), 3),
        "step_ms_p95": round(float(np.percentile(ms, 95)), 3),
        "steps_timed": len(ms),
        "throughput_images_per_s": round(batch_size / float(ms.mean() / 1000.0), 2),
    }


def profile_steps(
    step: Callable[[torch.Tensor, torch.Tensor], object],
    batches: Iterable,
    cfg: ProfileParams,
    device: torch.device,
    trace_dir: Path,
    desc: str,
) -> dict:
    """Run wait+warmup+active steps under torch.profiler; time the active ones; traces go to trace_dir."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type != "cuda":
        # Kineto, the profiler's backend, would print its start/stop lines and, from a CUDA build on a
        # machine without a GPU, an "ERROR" about the device count: noise that reads like a failure.
        # Read once, when the first profiler starts; set KINETO_LOG_LEVEL yourself to see them.
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    total = cfg.wait + cfg.warmup + cfg.active
    batch_iter = itertools.cycle(batches) if isinstance(batches, list) else _repeat(batches)
    seconds, data_seconds = [], []
    trace_dir.mkdir(parents=True, exist_ok=True)
    with (
        naming_failed_writes(trace_dir),
        PeakMemory(device) as memory,
        profile(
            activities=activities,
            schedule=schedule(wait=cfg.wait, warmup=cfg.warmup, active=cfg.active, repeat=1),
            on_trace_ready=tensorboard_trace_handler(str(trace_dir)),
            # No record_shapes: on the CPU (torch 2.14) it made the process grow by about 100 MB every recorded CNN
            # step at batch 32, 224 px, and a default run's profile stage was killed for lack of memory on a 24 GB
            # machine. The top ops and the traces' timings do not need the shapes.
            profile_memory=True,
        ) as prof,
    ):
        for i in tqdm(range(total), desc=desc, unit="step", leave=False, disable=None):
            t0 = time.perf_counter()
            x, y = next(batch_iter)
            t1 = time.perf_counter()
            step(x, y)
            synchronize(device)
            t2 = time.perf_counter()
            if i >= cfg.wait + cfg.warmup:
                seconds.append(t2 - t1)
                data_seconds.append(t1 - t0)
            prof.step()
    top = top_ops(prof.key_averages(), device.type, cfg.top_ops)
    stats = step_stats(seconds, len(y))
    # The share of a step spent waiting for the next batch: near 0 when the loader keeps ahead (compute-bound).
    data_wait_share = float(np.sum(data_seconds) / (np.sum(data_seconds) + np.sum(seconds)))
    stats.update(
        {
            "data_wait_ms_mean": round(float(np.mean(data_seconds)) * 1000.0, 3),
            "data_wait_share": round(data_wait_share, 4),
            memory.metric.key: round(memory.peak_mb, 2),
            "top_ops": top,
        }
    )
    return stats


def top_ops(events: Iterable, device_type: str, n: int) -> list[dict]:
    """The `n` operators that took the most time of their own, from torch.profiler's key_averages().

    On CUDA the profiler lists each kernel as a row of its own besides the operator that launched it, whose self
    CUDA time already holds that kernel's: only operator rows (CPU-side events) are ranked, by that device time,
    so no kernel time is counted twice. Elsewhere, the self time of the host (TOP_OPS_TIME says which).
    """
    from torch.autograd import DeviceType

    key = TOP_OPS_TIME[device_type][0]
    if device_type == "cuda":
        rows = [(e, e.self_device_time_total) for e in events if e.device_type == DeviceType.CPU]
    else:
        rows = [(e, e.self_cpu_time_total) for e in events]
    rows.sort(key=lambda row: row[1], reverse=True)
    return [{"op": e.key, key: round(us / 1000.0, 3), "calls": e.count} for e, us in rows[:n]]


def _repeat(loader: Iterable):
    while True:
        yield from loader


def time_calls(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    synchronize(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def profile_model(
    name: str,
    model: nn.Module,
    config: dict,
    ctx: StepContext,
    params: Params,
    data: PreparedData,
    optim: OptimParams,
    trace_dir: Path,
) -> dict:
    """Profile full training steps from images; the probe's step is its frozen forward plus the head update."""
    p = params.profile
    spec = transform_spec(config)
    loader = image_loader(data, "train", spec, p.batch_size, True, ctx.device, seed=params.seed, loader=params.loader)
    optimizer, _ = make_optimizer(model.parameters(), optim, steps_per_epoch=1)
    scaler = ctx.precision.grad_scaler(ctx.device)  # the step the training loop runs: fp16 scales its gradients
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    stats = profile_steps(
        lambda x, y: train_step(model, x, y, optimizer, loss_fn, ctx, scaler),
        loader,
        p,
        ctx.device,
        trace_dir,
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


def probe_costs(model, ctx: StepContext, params: Params, data: PreparedData, config: dict) -> dict:
    """The cached route's two parts: extracting features once, and one head step on cached features."""
    p = params.profile
    x, _ = next(
        iter(
            image_loader(
                data,
                "train",
                transform_spec(config),
                p.batch_size,
                False,
                ctx.device,
                seed=params.seed,
                loader=params.loader,
            )
        )
    )
    x = ctx.to_device(x)

    def extract():
        with torch.inference_mode(), ctx.precision.autocast(ctx.device):
            return model.backbone(x)

    extraction = step_stats(time_calls(extract, ctx.device, repeats=10), len(x))
    feats = extract().float().clone()
    y = torch.randint(0, data.num_classes, (len(feats),))
    head_ctx = StepContext(ctx.device, make_context(params.device, amp=False, channels_last=False).precision)
    optimizer, _ = make_optimizer(model.head.parameters(), params.train_vit, steps_per_epoch=1)
    loss_fn = nn.CrossEntropyLoss()
    head = step_stats(
        time_calls(
            lambda: train_step(model.head, feats, y, optimizer, loss_fn, head_ctx, None), ctx.device, repeats=50
        ),
        len(feats),
    )
    return {"feature_extraction": extraction, "cached_head_step": head}


def profile_trained(model: str, checkpoint: Path, params: Params, data: PreparedData, trace_dir: Path) -> dict:
    """A trained model's training step under the profiler, on the device and precision it trains with (and the
    probe's cached route, in its two parts); the top ops under "top_ops", the schedule under "schedule"."""
    saved = load_torch(checkpoint)
    trained = load_trained(saved)
    optim = params.train_cnn if model == "cnn" else params.train_vit
    ctx = make_context(
        params.device,
        optim.amp,
        channels_last=model == "cnn" and params.train_cnn.channels_last,
        input_spec=transform_spec(saved["model_config"]),
    )
    trained.to(ctx.device)
    if ctx.channels_last:
        trained = trained.to(memory_format=torch.channels_last)
    result = profile_model(model, trained, saved["model_config"], ctx, params, data, optim, trace_dir)
    if model == "vit":
        result.update(probe_costs(trained, ctx, params, data, saved["model_config"]))
    p = params.profile
    result["schedule"] = {"wait": p.wait, "warmup": p.warmup, "active": p.active}
    return result
