"""torch.profiler over real training steps, with a wait/warmup/active schedule and TensorBoard traces."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from petlab.core.device import synchronize
from petlab.core.outputs import naming_failed_writes
from petlab.core.params import ProfileParams


@dataclass(frozen=True)
class PeakMemoryMetric:
    """One way of measuring peak memory, under a metric name of its own: `dvc metrics diff` between runs on
    different devices then shows two metrics instead of comparing a GPU allocator's peak with a process's RSS."""

    key: str
    name: str
    meaning: str

    @property
    def label(self) -> str:
        return f"{self.name} (MB)"


PEAK_MEMORY_METRICS = {  # by device type
    "cuda": PeakMemoryMetric(
        "peak_cuda_allocated_mb",
        "peak CUDA memory allocated",
        "the most memory CUDA's caching allocator had handed to tensors during the profiled steps "
        "(torch.cuda.max_memory_allocated): model, optimiser state, batch and activations, without the "
        "allocator's unused cache or the CUDA context",
    ),
    "mps": PeakMemoryMetric(
        "peak_mps_driver_mb",
        "peak MPS driver memory",
        "the most memory the Metal driver held for the process during the profiled steps "
        "(torch.mps.driver_allocated_memory, sampled every 2 ms): model, optimiser state, batch, activations "
        "and the allocator's cache",
    ),
    "cpu": PeakMemoryMetric(
        "peak_rss_rise_mb",
        "peak RSS rise",
        "the rise of the process's resident memory during the profiled steps above its level before them "
        "(sampled every 2 ms): what the steps needed beyond the model and data already loaded",
    ),
}


def peak_memory_metric(stats: dict) -> PeakMemoryMetric | None:
    """Which of PEAK_MEMORY_METRICS a profile result holds, or None."""
    return next((m for m in PEAK_MEMORY_METRICS.values() if m.key in stats), None)


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


# What the top ops are ranked by, per device: the key each row holds its milliseconds under, and what they are.
TOP_OPS_TIME = {
    "cuda": ("self_device_ms_total", "self CUDA time: the GPU time of the kernels each operator launched itself"),
    "mps": (
        "self_host_ms_total",
        "self host (CPU) time: on MPS the profiler records no GPU time per operator, and "
        "an operator's host time is mostly that of queueing its work",
    ),
    "cpu": ("self_cpu_ms_total", "self CPU time"),
}


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


def forward_gflops(model: nn.Module, image_size: int, device: torch.device) -> float:
    """Forward FLOPs for one image, counted by torch.utils.flop_counter (a multiply-add counts 2).

    Attention runs through its math kernel while counting: FlopCounterMode has a formula for CUDA's fused kernels
    but none for the CPU's flash attention, which it would count as nothing (ViT-Tiny 2.149 GFLOPs on the CPU
    against 2.507 with attention counted), so one model would report a cost per device. The math kernel's matrix
    products count the same multiply-adds as the fused kernels' formulas."""
    model.eval()
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(x)
    return round(counter.get_total_flops() / 1e9, 4)
