"""The prepared dataset as the stages after prepare read it: its splits, subsets, images."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchcodec.decoders import decode_image

from petlab.core.errors import PipelineError
from petlab.core.layout import SPLITS
from petlab.core.params import ALL_IMAGES
from petlab.core.runtime import seeded_rng


@dataclass(frozen=True)
class PreparedData:
    root: Path
    class_names: list[str]

    @classmethod
    def open(cls, root: str | Path) -> PreparedData:
        root = Path(root)
        classes_file = root / "classes.json"
        if not classes_file.is_file():
            raise PipelineError(f"{classes_file}: not found; run the prepare stage first (dvc repro)")
        class_names = json.loads(classes_file.read_text())
        for split in SPLITS:
            if not (root / split).is_dir():
                raise PipelineError(f"{root / split}: prepared split missing; re-run the prepare stage")
        return cls(root, class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def items(self, split: str) -> list[tuple[Path, int]]:
        """(path, label) pairs of one split, in a fixed order (class, then file name)."""
        items = []
        for label, name in enumerate(self.class_names):
            folder = self.root / split / name
            if not folder.is_dir():
                raise PipelineError(f"{folder}: class folder missing from the prepared data")
            items += [(p, label) for p in sorted(folder.iterdir()) if p.suffix == ".jpg"]
        if not items:
            raise PipelineError(f"{self.root / split}: no images")
        return items


def draw_subset(labels: Sequence[int], size: int | str, seed: int) -> list[int]:
    """Indices (ascending) of the images a cell trains on: `size` per class (all of a class that has fewer).

    Each class's images are permuted by a generator seeded with (seed, class) and the first `size` kept, so a
    smaller subset is inside every larger one of the same seed (nested), each class gets the same number
    (stratified), and the draw depends neither on the other sizes of the ladder nor on the other classes.
    `labels` are those of a split in its fixed order (PreparedData.items).
    """
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[int(label)].append(index)
    chosen = []
    for label, indices in sorted(by_class.items()):
        order = np.random.default_rng([seed, label]).permutation(len(indices))
        kept = order if size == ALL_IMAGES else order[:size]
        chosen += [indices[i] for i in kept]
    return sorted(chosen)


def read_image(path: str | Path, raw: bytes | None = None) -> torch.Tensor:
    """uint8 RGB (3, H, W). The same pixels as PIL's decoder gives (a test checks), in less time.

    `raw`: the file's bytes, where the caller has read them already."""
    try:
        return decode_image(Path(path).read_bytes() if raw is None else raw, mode="RGB")
    except (RuntimeError, ValueError) as err:
        raise PipelineError(f"{path}: cannot decode image ({err}); re-run the prepare stage") from err


class ImageDataset(Dataset):
    """Images from (path, label) pairs. Index k means sample k % n seen in epoch k // n (see EpochSampler)."""

    def __init__(self, items: Sequence[tuple[Path, int]], transform: Callable, seed: int = 0):
        self.items = list(items)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[k % len(self.items)]
        image = read_image(path)
        with seeded_rng(self.seed * 1_000_003 + k):
            return self.transform(image), label
