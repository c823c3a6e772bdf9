"""Models by name: a config dict (what a checkpoint records) builds its model."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

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
