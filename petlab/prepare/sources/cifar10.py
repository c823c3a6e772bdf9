"""CIFAR-10: the python-pickle batches, from data.root (holding cifar-10-batches-py/) or a verified download."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from petlab.core.errors import PipelineError
from petlab.core.params import DataParams
from petlab.prepare.sources.base import Record, SourceSplits, download_with_torchvision

CIFAR_FOLDER = "cifar-10-batches-py"
BATCHES = {"trainval": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def read_cifar10(data: DataParams, seed: int) -> SourceSplits:
    if data.root is not None:
        root = Path(data.root).expanduser()
        base = root if (root / "batches.meta").is_file() else root / CIFAR_FOLDER
        if not (base / "batches.meta").is_file():
            raise PipelineError(
                f"data.root = {str(root)!r} is not a CIFAR-10 copy: expected {root}/{CIFAR_FOLDER}/"
                f"batches.meta (the extracted cifar-10-python.tar.gz)"
            )
    else:
        from torchvision.datasets import CIFAR10

        download_dir = Path(data.download_dir)
        download_with_torchvision(
            "CIFAR-10",
            lambda: CIFAR10(str(download_dir), train=True, download=True),
            f"extract cifar-10-python.tar.gz and set data.root to the folder holding {CIFAR_FOLDER}/",
        )
        base = download_dir / CIFAR_FOLDER
    meta = _unpickle(base / "batches.meta")
    class_names = meta.get("label_names")
    if not isinstance(class_names, list) or not all(isinstance(n, str) for n in class_names):
        raise PipelineError(f"{base / 'batches.meta'}: 'label_names' is not a list of class names")
    records: dict[str, list[Record]] = {}
    for split, files in BATCHES.items():
        records[split] = []
        for name in files:
            batch = _unpickle(base / name)
            try:
                pixels = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                labels = np.asarray(batch["labels"], dtype=np.int64).reshape(-1)
            except (KeyError, ValueError, TypeError) as err:
                raise PipelineError(f"{base / name}: not a CIFAR-10 batch ({type(err).__name__}: {err})") from None
            if len(pixels) != len(labels) or (labels.size and not 0 <= labels.min() <= labels.max() < len(class_names)):
                raise PipelineError(
                    f"{base / name}: {len(pixels)} images and {len(labels)} labels, labels must be "
                    f"0..{len(class_names) - 1} (one per class name in batches.meta)"
                )
            for i, (image, label) in enumerate(zip(pixels, labels)):
                records[split].append(Record(base / name, f"{name}_{i:05d}", int(label), image))
    return SourceSplits(records["trainval"], records["test"], list(class_names), f"cifar10 ({base})")


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise PipelineError(f"{path}: missing from the CIFAR-10 copy")
    try:
        with open(path, "rb") as f:
            content = pickle.load(f, encoding="latin1")
    except Exception as err:  # a damaged pickle raises almost anything
        raise PipelineError(f"{path}: cannot be read as a CIFAR-10 pickle ({type(err).__name__})") from None
    if not isinstance(content, dict):
        raise PipelineError(f"{path}: not a CIFAR-10 pickle (holds a {type(content).__name__}, not a dict)")
    return content
