"""Fashion-MNIST: the four idx files (gzipped or not), from data.root (e.g. Debian's
/usr/share/datasets/fashion-mnist) or a verified download."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from petlab.core.errors import PipelineError
from petlab.core.params import DataParams
from petlab.prepare.sources.base import Record, SourceSplits, download_with_torchvision

# torchvision's names; "/" cannot be in a folder name.
FASHION_MNIST_CLASSES = [
    "T-shirt-top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_FILES = {
    "trainval": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_fashion_mnist(data: DataParams, seed: int) -> SourceSplits:
    if data.root is not None:
        root = Path(data.root).expanduser()
        candidates = [root, root / "FashionMNIST" / "raw"]  # the second is torchvision's layout
        found = [c for c in candidates if _idx_file(c, FASHION_MNIST_FILES["trainval"][0]) is not None]
        if not found:
            raise PipelineError(
                f"data.root = {str(root)!r} is not a Fashion-MNIST copy: expected "
                f"train-images-idx3-ubyte(.gz) and the three other idx files in {root} or "
                f"{candidates[1]}"
            )
        base = found[0]
    else:
        from torchvision.datasets import FashionMNIST

        download_dir = Path(data.download_dir)
        download_with_torchvision(
            "Fashion-MNIST",
            lambda: FashionMNIST(str(download_dir), train=True, download=True),
            "install Debian's dataset-fashion-mnist (or copy its four idx files into a folder) "
            "and set data.root to /usr/share/datasets/fashion-mnist (or that folder)",
        )
        base = download_dir / "FashionMNIST" / "raw"
    records: dict[str, list[Record]] = {}
    for split, (images_name, labels_name) in FASHION_MNIST_FILES.items():
        images_path, labels_path = _idx_file(base, images_name), _idx_file(base, labels_name)
        if images_path is None or labels_path is None:
            raise PipelineError(f"{base}: {images_name} or {labels_name} (.gz) missing from the Fashion-MNIST copy")
        pixels, labels = read_idx(images_path), read_idx(labels_path)
        if (
            pixels.ndim != 3
            or labels.ndim != 1
            or len(pixels) != len(labels)
            or (labels.size and labels.max() >= len(FASHION_MNIST_CLASSES))
        ):
            raise PipelineError(
                f"{images_path}, {labels_path}: shapes {pixels.shape} and {labels.shape} are not "
                f"N images and N labels in 0..9"
            )
        prefix = "train" if split == "trainval" else "test"
        records[split] = [
            Record(images_path, f"{prefix}_{i:05d}", int(label), image)
            for i, (image, label) in enumerate(zip(pixels, labels))
        ]
    return SourceSplits(records["trainval"], records["test"], list(FASHION_MNIST_CLASSES), f"fashion_mnist ({base})")


def _idx_file(folder: Path, name: str) -> Path | None:
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (the MNIST format): a 4-byte magic, one big-endian size per dimension, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise PipelineError(f"{path}: cannot be read ({err})") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise PipelineError(f"{path}: not an idx file of unsigned bytes")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise PipelineError(f"{path}: header cut short (truncated?)")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    array = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise PipelineError(f"{path}: {array.size} bytes of data for shape {dims} (truncated?)")
    return array.reshape(dims)
