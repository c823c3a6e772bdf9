"""What one stage records and a later one reads back, in one place: the form of a weights source that describes
itself; what the profile's peak memory and top ops measure, per device, which the report says beside them."""

from __future__ import annotations

from dataclasses import dataclass

DESCRIBED_FILE = " (file "  # weights_source of a file that describes itself: "<description> (file <path>)"


def weights_label(info: dict) -> str:
    """What results say beside the backbone's name about its weights (`info` as build_probe records it): 'random
    weights', the description its weights file carries (a stand-in's), or '' for the weights the name implies."""
    if not info.get("pretrained", True):
        return "random weights"
    source = info.get("weights_source", "")
    return source.split(DESCRIBED_FILE)[0] if DESCRIBED_FILE in source and not source.startswith("file ") else ""


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
