"""What every stage needs at run time: errors, seeding, the device, mixed precision, timing.

Running a stage (one-line errors, Ctrl-C, its wall time) is petlab.stage's job."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class PipelineError(Exception):
    """An error the user can fix; printed as one line, without a traceback."""


def read_text(path: str | Path) -> str:
    """A user's text file (params, label files) as UTF-8; other bytes are an error naming file:line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PipelineError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PipelineError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); save the file as UTF-8"
        ) from None


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
    does stops the stage in one line (petlab.stage). On MPS, whose kernels torch documents nothing about, only a
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


def select_device(requested: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device must exist. A CUDA GPU that the installed torch has
    no kernels for is refused here, rather than at the first kernel ("no kernel image is available")."""
    if requested == "auto":
        if torch.cuda.is_available():
            check_cuda_kernels()
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise PipelineError("device = 'cuda' but no CUDA GPU is available here; set device: auto or cpu in params.yaml")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise PipelineError("device = 'mps' but MPS is not available here; set device: auto or cpu in params.yaml")
    if requested == "cuda":
        check_cuda_kernels()
    return torch.device(requested)


# torch's CUDA 12.6 wheels carry kernels from sm_50 (Maxwell) on; its CUDA 13 wheels start at sm_75 (Turing), so a
# P100 (sm_60) or V100 (sm_70) needs the former.
OLDER_GPU_BUILD = "https://download.pytorch.org/whl/cu126"


def arch_version(arch: str) -> tuple[str, int, int] | None:
    """'sm_86' -> ('sm', 8, 6); 'compute_120' -> ('compute', 12, 0); 'sm_90a' -> ('sm', 9, 0); else None."""
    kind, _, number = arch.partition("_")
    digits = number.rstrip("af")  # arch-specific (a) and family (f) variants
    if kind not in ("sm", "compute") or len(digits) < 2 or not digits.isdigit():
        return None
    return kind, int(digits[:-1]), int(digits[-1])


def cuda_kernels_cover(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a build compiled for `arch_list` (torch.cuda.get_arch_list()) runs on a GPU of `capability`: a
    binary (sm_XY) runs on the same major version at the same or a later minor one (sm_86 on an sm_89 GPU, not on
    sm_80 or sm_90); PTX (compute_XY) is compiled on load for any GPU from XY on."""
    for arch in arch_list:
        version = arch_version(arch)
        if version is None:
            continue
        kind, major, minor = version
        if kind == "sm" and major == capability[0] and minor <= capability[1]:
            return True
        if kind == "compute" and (major, minor) <= tuple(capability):
            return True
    return False


def check_cuda_kernels() -> None:
    """Refuse, in one line naming a build that covers it, a CUDA GPU the installed torch has no kernels for."""
    if torch.version.hip:  # ROCm builds list gfx targets, and HIP reports its own mismatch
        return
    arch_list = torch.cuda.get_arch_list()
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        if arch_list and not cuda_kernels_cover((major, minor), arch_list):
            raise PipelineError(
                f"GPU {index} ({torch.cuda.get_device_name(index)}) has compute capability {major}.{minor} (sm_{major}"
                f"{minor}), but this torch {torch.__version__} has kernels for {', '.join(arch_list)} only; install a "
                f"build that covers it (pip install torch==2.14.1 torchvision==0.29.1 --index-url {OLDER_GPU_BUILD}; "
                "docs/setup.md) or set device: cpu in params.yaml"
            )


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Precision:
    """How to run forward passes: autocast dtype (None: fp32) and whether to scale fp16 gradients."""

    autocast_dtype: torch.dtype | None
    grad_scaling: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        """The GradScaler every training step at this precision needs (fp16's small gradients), else None."""
        return torch.amp.GradScaler(device.type) if self.grad_scaling else None


def cuda_supports_bf16(device: torch.device) -> bool:
    """True where the GPU runs bf16 natively: Ampere (sm_80) and later, and ROCm's GPUs.

    Not torch.cuda.is_bf16_supported(): by default it also counts bf16 that is merely emulated (a T4, sm_75,
    runs bf16 autocast without tensor cores or cuDNN bf16 convolutions, far slower than fp16 there).
    """
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def select_precision(device: torch.device, amp: bool) -> Precision:
    """bf16 autocast where the device runs it natively; fp16 with a GradScaler on older GPUs; else fp32."""
    if not amp:
        return Precision(None, False)
    if device.type == "cuda":
        if cuda_supports_bf16(device):
            return Precision(torch.bfloat16, False)
        return Precision(torch.float16, True)
    if device.type == "cpu" and cpu_supports_bf16():
        return Precision(torch.bfloat16, False)
    return Precision(None, False)


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


def default_num_workers(device: torch.device) -> int:
    """Decode in worker processes but leave a core to the training step itself."""
    cores = cores_per_process()
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return max(0, min(4, cores - 1))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)
