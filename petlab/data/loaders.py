"""Batches for training and evaluation: the seeded epoch sampler (sharded over ranks), the workers and the shared memory they hand batches through."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from petlab.core import distributed
from petlab.core.device import default_num_workers
from petlab.core.params import LoaderParams
from petlab.data.dataset import ImageDataset


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
