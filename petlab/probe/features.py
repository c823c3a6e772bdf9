"""Frozen-backbone features, extracted once and cached, so the probe's head trains in seconds."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from petlab.core.errors import PipelineError
from petlab.core.outputs import load_torch, save_torch
from petlab.train.loop import StepContext, predict


def extract_features(
    backbone: nn.Module, loader: DataLoader, ctx: StepContext, desc: str = "features"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features fp32 on the CPU, labels) for every image of the loader, backbone in eval mode."""
    return predict(backbone, loader, ctx, desc=desc)


def save_feature_cache(path: str | Path, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], info: dict) -> None:
    payload = {"info": info}
    for split, (feats, labels) in splits.items():
        payload[f"{split}/features"] = feats.contiguous()
        payload[f"{split}/labels"] = labels.contiguous()
    save_torch(path, payload)


def load_feature_split(path: str | Path, split: str) -> TensorDataset:
    return feature_split(load_torch(path), split, path)


def feature_split(payload: dict, split: str, path: str | Path) -> TensorDataset:
    """One split of an already loaded cache (`path` only names it in the error)."""
    if f"{split}/features" not in payload:
        raise PipelineError(f"{path}: no cached features for split {split!r}; re-run train_vit")
    return TensorDataset(payload[f"{split}/features"], payload[f"{split}/labels"])
