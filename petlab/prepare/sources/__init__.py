"""The dataset sources: each turns one raw dataset into SourceSplits (records, class names, what it left out)."""

from __future__ import annotations

from collections.abc import Callable

from petlab.core.params import DataParams
from petlab.prepare.sources.base import Record, SourceSplits
from petlab.prepare.sources.cifar10 import read_cifar10
from petlab.prepare.sources.fashion_mnist import read_fashion_mnist
from petlab.prepare.sources.imagefolder import read_imagefolder
from petlab.prepare.sources.oxford_pets import read_oxford_pets

READERS: dict[str, Callable[[DataParams, int], SourceSplits]] = {
    "oxford_pets": read_oxford_pets,
    "cifar10": read_cifar10,
    "fashion_mnist": read_fashion_mnist,
    "imagefolder": read_imagefolder,
}

__all__ = ["READERS", "Record", "SourceSplits"]
