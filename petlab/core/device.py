"""The device a stage computes on: which one, whether this torch has kernels for it, its precision (bf16, fp16 with a scaler, fp32), its loader workers."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from petlab.core.errors import PipelineError
from petlab.core.runtime import cores_per_process


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
