"""Reading the prepared layout: datasets, transforms and DataLoaders.

Augmentation randomness is seeded per sample from (seed, epoch, index), so a run gives the
same batches whatever the number of DataLoader workers, and a re-run gives the same again.

Samples are uint8 images: a quarter of the bytes of float ones to pass from the loader workers
and to the GPU. They become the model's float input in one pass over the whole batch, on the
device (TransformSpec.normalize, called by StepContext.to_device).
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchcodec.decoders import decode_image
from torchvision.transforms import InterpolationMode, v2

from petlab import distributed
from petlab.layout import SPLITS
from petlab.params import ALL_IMAGES, LoaderParams
from petlab.runtime import PipelineError, default_num_workers, seeded_rng

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- the prepared layout


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


# ---------------------------------------------------------------- transforms


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


def read_image(path: str | Path, raw: bytes | None = None) -> torch.Tensor:
    """uint8 RGB (3, H, W). The same pixels as PIL's decoder gives (a test checks), in less time.

    `raw`: the file's bytes, where the caller has read them already."""
    try:
        return decode_image(Path(path).read_bytes() if raw is None else raw, mode="RGB")
    except (RuntimeError, ValueError) as err:
        raise PipelineError(f"{path}: cannot decode image ({err}); re-run the prepare stage") from err


# ---------------------------------------------------------------- datasets and loaders


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


class EpochSampler(Sampler[int]):
    """Shuffles with a seed per epoch and tags each index with its epoch (k = epoch * n + i).

    The tag reaches the dataset inside worker processes too, which an epoch attribute set on
    the dataset would not when workers are persistent. It also plays DistributedSampler's part
    for several ranks: every rank draws the same order and takes every num_replicas-th index of it
    (the tail that does not split evenly is left out); the epoch advances by itself each pass
    (DistributedSampler's set_epoch), and an augmentation still depends only on (seed, epoch, index).
    """

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, num_replicas: int = 1):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0
        self.rank, self.num_replicas = rank, num_replicas

    def __len__(self) -> int:
        return self.n // self.num_replicas

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        self.epoch += 1
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + 7919 * epoch))
        else:
            order = torch.arange(self.n)
        order = order[: len(self) * self.num_replicas][self.rank :: self.num_replicas]
        offset = epoch * self.n
        return iter((order + offset).tolist())


SHARED_MEMORY = Path("/dev/shm")  # where loader workers hand their batches to the training process (Linux)
_said_about_shared_memory: set = set()


def shared_memory_bytes() -> int | None:
    """The size of /dev/shm, or None where there is none (macOS, Windows: other mechanisms, no such limit)."""
    try:
        return shutil.disk_usage(SHARED_MEMORY).total
    except OSError:
        return None


def fit_shared_memory(workers: int, prefetch: int, batch_bytes: int, shm_bytes: int | None) -> tuple[int, int]:
    """Loader workers and batches prefetched per worker whose batches in flight (workers x prefetch) fit in half of
    /dev/shm, fewer batches first and then fewer workers; 0 workers where not even one batch fits.

    Each worker passes its batches through shared memory; a container's /dev/shm is often small (Docker's default:
    64 MB), and a worker that outgrows it dies with a bus error. Half: the train and val loaders' workers, the
    batches being pinned and the process's own share it. One line says what was lowered, and how to give more.
    """
    if shm_bytes is None or workers * prefetch * batch_bytes <= shm_bytes // 2:
        return workers, prefetch
    budget = shm_bytes // 2 // max(1, batch_bytes)  # batches that fit
    fitted = (workers, max(1, budget // workers)) if budget >= workers else (budget, 1) if budget else (0, prefetch)
    said = (workers, prefetch, fitted)
    if said not in _said_about_shared_memory and distributed.is_main():
        _said_about_shared_memory.add(said)
        print(
            f"loader: /dev/shm holds {shm_bytes / 2**20:.0f} MB, too little for {workers} workers x {prefetch} "
            f"batches of {batch_bytes / 2**20:.1f} MB in flight: "
            + (
                f"{fitted[0]} workers x {fitted[1]} batch{'es' if fitted[1] > 1 else ''}"
                if fitted[0]
                else "no workers, loading in the training process"
            )
            + "; give it more (docker run --ipc=host or --shm-size=2g; docs/scale.md)",
            flush=True,
        )
    return fitted


def make_loader(
    dataset: Dataset, batch_size: int, train: bool, seed: int, device: torch.device, loader: LoaderParams
) -> DataLoader:
    """`batch_size` is the global batch: with several ranks each loads its share of every batch.

    Several ranks split training batches with EpochSampler and evaluation with DistributedSampler,
    whose shards predict() gathers back into the whole split.
    """
    workers = default_num_workers(device) if loader.num_workers is None else loader.num_workers
    if not isinstance(dataset, ImageDataset):
        workers = 0  # in-memory tensors: worker processes would only add copying
    ranks = distributed.world_size()
    # Training needs the exact split (for the same steps as one process); evaluation only a share.
    rank_batch = distributed.rank_batch_size(batch_size) if train else -(-batch_size // ranks)
    prefetch = loader.prefetch_factor
    if workers > 0:
        sample = dataset[0][0]  # one decode, for the bytes of a batch
        batch_bytes = sample.numel() * sample.element_size() * rank_batch
        workers, prefetch = fit_shared_memory(workers, prefetch, batch_bytes, shared_memory_bytes())
    pin = device.type == "cuda" if loader.pin_memory is None else loader.pin_memory
    # Drop the ragged last batch while training: a batch of 1 breaks BatchNorm and skews the step size.
    drop_last = train and len(dataset) > batch_size
    sampler = None
    if ranks > 1 and train:
        if not isinstance(dataset, ImageDataset):
            raise ValueError("training on several ranks reads an ImageDataset (its samples are seeded per epoch)")
        sampler = EpochSampler(len(dataset), True, seed, distributed.rank(), ranks)
    elif ranks > 1:
        sampler = DistributedSampler(dataset, ranks, distributed.rank(), shuffle=False)
    elif isinstance(dataset, ImageDataset):
        sampler = EpochSampler(len(dataset), shuffle=train, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=rank_batch,
        sampler=sampler,
        shuffle=train if sampler is None else None,
        # With a sampler too: DataLoader also draws each iterator's worker seed from it, and without one from
        # torch's global RNG, which dropout draws from. Training would then depend on the number of workers (only
        # the first epoch draws, with persistent ones) and on the epoch a run starts in (a resumed one).
        generator=generator,
        num_workers=workers,
        pin_memory=pin,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch if workers > 0 else None,
    )
