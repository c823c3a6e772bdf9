"""How images become a model's input: the transform a model records, its train augmentation and its evaluation resize and crop."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode, v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TransformSpec:
    """What a model expects as input; from params (CNN) or from timm's data config (ViT)."""

    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    @classmethod
    def from_timm(cls, data_config: dict) -> TransformSpec:
        return cls(
            size=int(data_config["input_size"][-1]),
            mean=tuple(data_config["mean"]),
            std=tuple(data_config["std"]),
            interpolation=data_config.get("interpolation", "bicubic"),
            crop_pct=float(data_config.get("crop_pct", 0.875)),
        )

    def as_dict(self) -> dict:
        return {
            "size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 3, H, W) as float32 (x / 255 - mean) / std, on their device, in their memory format."""
        scale, shift = _scale_and_shift(tuple(self.mean), tuple(self.std), images.device)
        return images.float().mul_(scale).sub_(shift)


@functools.cache
def _scale_and_shift(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: a new GPU tensor every batch would be a blocking host-to-device copy.
    mean64 = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    std64 = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    return (1.0 / (255.0 * std64)).float().to(device), (mean64 / std64).float().to(device)


def interpolation_mode(name: str) -> InterpolationMode:
    return {
        "bilinear": InterpolationMode.BILINEAR,
        "bicubic": InterpolationMode.BICUBIC,
        "nearest": InterpolationMode.NEAREST,
    }.get(name, InterpolationMode.BILINEAR)


def train_transform(spec: TransformSpec, augment: str = "rrc") -> Callable:
    """uint8 image -> augmented uint8 (3, size, size), with torchvision's tensor kernels (about twice as fast
    as PIL's for these sizes).

    rrc: random-resized crop (ImageNet recipe); crop_pad: resize, then a random crop of the image padded
    by an eighth of its size (the CIFAR recipe, RandomCrop(32, padding=4)); none: the eval transform.
    """
    if augment == "none":
        return eval_transform(spec)
    interpolation = interpolation_mode(spec.interpolation)
    if augment == "crop_pad":
        crop = [
            v2.Resize(spec.size, interpolation=interpolation, antialias=True),
            v2.CenterCrop(spec.size),
            v2.RandomCrop(spec.size, padding=max(1, spec.size // 8)),
        ]
    else:
        crop = [v2.RandomResizedCrop(spec.size, interpolation=interpolation, antialias=True)]
    return v2.Compose([v2.PILToTensor(), *crop, v2.RandomHorizontalFlip()])


def eval_transform(spec: TransformSpec) -> Callable:
    """uint8 image -> resized and centre-cropped uint8 (3, size, size), with PIL's resize, as timm's eval
    transform does: a pretrained backbone sees exactly the pixels its reference preprocessing gives."""
    return v2.Compose(
        [
            v2.ToPILImage(),
            # floor, as timm computes its eval resize
            v2.Resize(
                math.floor(spec.size / spec.crop_pct),
                interpolation=interpolation_mode(spec.interpolation),
                antialias=True,
            ),
            v2.CenterCrop(spec.size),
            v2.PILToTensor(),
        ]
    )
