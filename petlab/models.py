"""The two models and a small registry that rebuilds either from the config stored in its checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from petlab.downloads import verify_checksum
from petlab.runtime import PipelineError

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
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


# ---------------------------------------------------------------- the CNN trained from scratch


class SimpleCNN(nn.Module):
    """Blocks of Conv-BN-ReLU-MaxPool, global average pooling, dropout, a linear head."""

    def __init__(self, num_classes: int, widths: list[int], dropout: float):
        super().__init__()
        layers, in_ch = [], 3
        for width in widths:
            layers += [nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))


@register("simple_cnn")
def build_simple_cnn(num_classes: int, widths: list[int], dropout: float) -> nn.Module:
    return SimpleCNN(num_classes, widths, dropout)


# ---------------------------------------------------------------- the linear probe on a frozen timm backbone


class FrozenBackboneClassifier(nn.Module):
    """A frozen timm backbone (no classifier) and a trainable linear head on its pooled features."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "FrozenBackboneClassifier":
        # The backbone stays in eval mode while the head trains: its dropout/BN must not change features.
        self.training = mode
        self.head.train(mode)
        self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register("timm_probe")
def build_timm_probe(num_classes: int, timm_model: str) -> nn.Module:
    import timm

    return FrozenBackboneClassifier(timm.create_model(timm_model, pretrained=False, num_classes=0), num_classes)


def load_pretrained_backbone(model_name: str, pretrained: bool, weights: str | None,
                             weights_sha256: str | None = None) -> tuple[nn.Module, str]:
    """A timm backbone without classifier, and a description of where its weights came from.

    pretrained and no weights file: timm's own hub loading (HF hub, or its cache with HF_HUB_OFFLINE=1).
    A weights file: .safetensors/.pth/.bin state dicts, or timm's original .npz format (custom_load),
    checked against weights_sha256 when given. timm reads .pth/.bin with torch.load(weights_only=True)
    and .npz with np.load(allow_pickle=False), so a file cannot run code (tests/test_models.py).
    """
    import timm

    if not pretrained:
        return timm.create_model(model_name, pretrained=False, num_classes=0), "random init (pretrained: false)"
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise PipelineError(f"train_vit.weights = {weights!r}: file not found")
        if weights_sha256 is not None:
            verify_checksum(path, weights_sha256, "train_vit.weights_sha256")
        # timm resets custom_load for a supplied file; .npz files are the original JAX format and need it.
        overlay = {"file": str(path), "custom_load": path.suffix == ".npz"}
        try:
            model = timm.create_model(model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
        except Exception as err:
            raise PipelineError(f"train_vit.weights = {weights!r}: cannot load into {model_name} "
                                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        return model, f"file {path.name}"
    try:
        model = timm.create_model(model_name, pretrained=True, num_classes=0)
    except Exception as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise PipelineError(
            f"cannot get pretrained weights for {model_name} ({type(err).__name__}"
            f"{', HF_HUB_OFFLINE=1' if offline else ''}). Either set train_vit.weights to a local weights file "
            f"(.safetensors, .pth or timm's .npz), or put the model in the Hugging Face cache on a machine with "
            f"internet (python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\") "
            f"and run with HF_HUB_OFFLINE=1"
        ) from None
    tag = model.pretrained_cfg.get("hf_hub_id") or model.pretrained_cfg.get("tag") or "timm default"
    return model, f"timm hub {tag}"


def timm_data_config(backbone: nn.Module) -> dict:
    """The preprocessing the backbone's weights expect (e.g. mean/std 0.5 for ViT augreg), never ImageNet's by default."""
    import timm

    return timm.data.resolve_model_data_config(backbone)
