"""The process a stage runs in: its rank under torchrun, seeds and determinism, CPU threads, freed memory, wall clocks."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import random
import time
from collections.abc import Iterator

import numpy as np
import torch

from petlab.core.errors import PipelineError


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ  # torchrun sets it (with RANK, WORLD_SIZE, MASTER_ADDR, ...) for every rank


def process_rank() -> int:
    """This process's rank among torchrun's ranks (0 for one plain process), before or after it joins the group."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's random numbers: `seed` itself on rank 0 (so one process is unchanged), a stream of its
    own on every other rank. Not seed + rank, which would give rank 1 of seed 0 the numbers of rank 0 of seed 1."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint32)[0])


# PETLAB_DETERMINISTIC=warn lets an operation without a deterministic kernel run (with a warning) instead of stopping
# the stage; reruns may then differ in their last bits (docs/reproducibility.md).
DETERMINISTIC_VARIABLE = "PETLAB_DETERMINISTIC"


def seed_everything(seed: int, device: torch.device | None = None) -> None:
    """Seed every generator, each rank with a stream of its own (rank_seed), and ask for deterministic numerics.

    Ranks that drew alike would apply the same dropout masks to their shares of a global batch: B / N distinct
    masks where one process draws B. What the ranks must agree on does not come from these generators:
    DistributedDataParallel copies rank 0's initial weights to every rank, and the data order and augmentations are
    seeded by (seed, epoch, index) (petlab.data).

    Deterministic kernels only (warn_only=False) on the CPU and CUDA: on CUDA that is also what switches flash and
    memory-efficient attention to their deterministic backward (under warn_only=True they only warn and stay
    non-deterministic). The models here use no operation without a deterministic kernel in torch 2.14; one that
    does stops the stage in one line (petlab.core.stage). On MPS, whose kernels torch documents nothing about, only a
    warning. fp32 means IEEE fp32: cuDNN would run fp32 convolutions as TF32 on Ampere and later by default while
    matmuls stay IEEE, and a run recorded as fp32 would not be one.
    """
    seed = rank_seed(seed, process_rank())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    relaxed = os.environ.get(DETERMINISTIC_VARIABLE, "") == "warn"
    torch.use_deterministic_algorithms(True, warn_only=relaxed or (device is not None and device.type == "mps"))
    torch.backends.cudnn.benchmark = False
    # The legacy setters: they set the newer fp32_precision flags too, while reading the legacy flags after setting
    # only the new ones raises in torch 2.14.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with torch's global CPU RNG seeded, restoring the caller's state after.

    Used per sample in datasets, so augmentations depend only on (seed, epoch, index)
    and not on how many DataLoader workers there are or which worker got the sample.
    """
    # The CPU generator only: torch.manual_seed would also seed every accelerator backend, which costs
    # about 1 ms a call (more than decoding a prepared image), and augmentations draw on the CPU.
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


JOBS_VARIABLE = "PETLAB_JOBS"


def cores_per_process() -> int:
    """This machine's cores (those the process may run on) shared among the jobs running at once and the ranks
    torchrun started on this node.

    PETLAB_JOBS=N says N jobs share the machine (`dvc queue start -j N`); torchrun sets LOCAL_WORLD_SIZE.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = os.environ.get(JOBS_VARIABLE, "1")
    if not jobs.isdigit() or int(jobs) < 1:
        raise PipelineError(f"{JOBS_VARIABLE}={jobs!r}: must be a positive integer (the number of jobs run at once)")
    return max(1, cores // (int(jobs) * int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def share_cpu() -> None:
    """Keep torch's threads within this process's share of the cores: jobs and ranks side by side would
    otherwise each start a thread per core and slow each other down."""
    torch.set_num_threads(min(torch.get_num_threads(), cores_per_process()))


def keep_freed_memory() -> bool:
    """Let glibc keep the memory freed tensors give back, for the next ones, instead of returning it to the kernel.

    glibc maps every allocation above 32 MB afresh and unmaps it when freed, and a CNN step on the CPU allocates
    and frees activations and gradients of up to 400 MB each: the kernel then maps and zeroes some 3.6 GB of pages
    per step (930,000 page faults), a third of the step's CPU time on an AVX2 EPYC. Serving them from the heap,
    which keeps what was freed, removes that after the first steps; the process then holds on to the memory it
    has used (the step's peak resident memory went from 3.1 to about 4 GB at batch 64, 224 px). Other C
    libraries (macOS, musl) are left as they are. True where it was applied.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    libc = ctypes.CDLL(None)
    # No allocation mapped on its own, and no free memory at the heap's top handed back (a threshold of -1).
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, -1))


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)
