"""The dataset sources: each turns one raw dataset into SourceSplits (records, class names, what it left out)."""

from __future__ import annotations

from collections.abc import Callable

from petlab.params import DataParams
from petlab.sources.base import Record, SourceSplits
from petlab.sources.cifar10 import read_cifar10
from petlab.sources.fashion_mnist import read_fashion_mnist
from petlab.sources.imagefolder import read_imagefolder
from petlab.sources.oxford_pets import read_oxford_pets

READERS: dict[str, Callable[[DataParams, int], SourceSplits]] = {
    "oxford_pets": read_oxford_pets,
    "cifar10": read_cifar10,
    "fashion_mnist": read_fashion_mnist,
    "imagefolder": read_imagefolder,
}

__all__ = ["READERS", "Record", "SourceSplits"]
