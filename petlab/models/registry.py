"""Models by name: a config dict (what a checkpoint records) builds its model; a model's size (parameters) and
cost (forward FLOPs)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from petlab.core.errors import PipelineError

MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def add(builder):
        MODEL_BUILDERS[name] = builder
        return builder

    return add


def create_model(config: dict) -> nn.Module:
    """Build a model from its config dict (as saved in checkpoints); weights are not loaded here."""
    kind = config["kind"]
    if kind not in MODEL_BUILDERS:
        raise PipelineError(f"unknown model kind {kind!r} (known: {', '.join(sorted(MODEL_BUILDERS))})")
    return MODEL_BUILDERS[kind](**{k: v for k, v in config.items() if k not in ("kind", "transform", "info")})


def count_parameters(model: nn.Module) -> dict[str, int]:
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


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
