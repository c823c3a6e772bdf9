"""Turning a raw dataset into the prepared ImageFolder layout every later stage reads.

Layout written (the same for any source):
    <out>/train/<Class Name>/<image id>.jpg, <out>/val/..., <out>/test/...
    <out>/classes.json   class names in label order
    <out>/report.json    what was converted, what was skipped and why, and whether the source was generated
    <out>/species.json   Oxford-IIIT Pet only: each class's species (cat or dog), from the annotations
"""

from __future__ import annotations

import errno
import gzip
import os
import pickle
import shutil
import signal
import struct
import tempfile
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from petlab import images
from petlab.downloads import download_verified, extract_tar
from petlab.outputs import atomic_dir, write_json
from petlab.params import DataParams
from petlab.runtime import PipelineError
from petlab.synthetic import GENERATED_MARKER

SPLITS = ("train", "val", "test")
PETS_FOLDER = "oxford-iiit-pet"
# The official archives and their MD5s (as torchvision's OxfordIIITPet lists them).
PETS_ARCHIVES = (
    ("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c"),
    ("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz", "95a8c909bbe2e81eed6a22bccdf3f68f"),
)
LOCAL_COPY_HELP = (
    "download the two archives (images.tar.gz, annotations.tar.gz) from "
    "https://www.robots.ox.ac.uk/~vgg/data/pets/, extract them into one folder "
    "(it then holds images/ and annotations/), and set data.root to that folder in params.yaml"
)


@dataclass(frozen=True)
class Record:
    """One source image: where it is, its id (file stem) and its label."""

    path: Path
    image_id: str
    label: int
    # In-memory sources (CIFAR-10, Fashion-MNIST): the pixels, HxW or HxWx3 uint8; `path` is then their file.
    pixels: Optional[np.ndarray] = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SourceSplits:
    trainval: list[Record]
    test: list[Record]
    class_names: list[str]
    origin: str = ""  # what was read, for the report
    species: dict[str, str] = field(default_factory=dict)  # class name -> "cat" / "dog", where the source says
    generated: bool = False  # made by petlab.synthetic, not real photos: every report must say so


# ---------------------------------------------------------------- Oxford-IIIT Pet


def locate_oxford_pets(data: DataParams) -> Path:
    """The folder holding images/ and annotations/: a local copy (data.root) or a checksum-verified download."""
    if data.root is not None:
        root = Path(data.root).expanduser()
        for candidate in (root, root / PETS_FOLDER):
            if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
                return candidate
        raise PipelineError(
            f"data.root = {str(root)!r} is not an Oxford-IIIT Pet copy: expected {root}/images/ and "
            f"{root}/annotations/ (or the same under {root}/{PETS_FOLDER}/)"
        )
    download_root = Path(data.download_dir)
    base = download_root / PETS_FOLDER
    if (base / "images").is_dir() and (base / "annotations").is_dir():
        return base
    def download_and_extract() -> None:
        # Our own extraction: torchvision's trusts the archive's member paths (see petlab/downloads.py).
        for url, md5 in PETS_ARCHIVES:
            extract_tar(download_verified(url, base, md5), base)

    download_with_torchvision("Oxford-IIIT Pet", download_and_extract, LOCAL_COPY_HELP)
    return base


PETS_SPECIES = {"1": "cat", "2": "dog"}  # the annotations' SPECIES column


def pets_class_name(image_id: str) -> str:
    """'american_bulldog_100' -> 'American Bulldog' (torchvision's OxfordIIITPet naming)."""
    return " ".join(part.title() for part in image_id.rsplit("_", 1)[0].split("_"))


def read_pets_annotations(base: Path) -> SourceSplits:
    """Parse annotations/{trainval,test}.txt, checking every line and every image it names."""
    names_by_label: dict[int, str] = {}
    species: dict[str, str] = {}
    splits: dict[str, list[Record]] = {}
    for split in ("trainval", "test"):
        ann = base / "annotations" / f"{split}.txt"
        if not ann.is_file():
            raise PipelineError(f"{ann}: annotation file missing (is data.root the extracted Oxford-IIIT Pet folder?)")
        records = []
        for lineno, line in enumerate(ann.read_text().splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 4 or not parts[1].isdigit() or parts[2] not in PETS_SPECIES:
                raise PipelineError(f"{ann}:{lineno}: expected 'IMAGE_ID CLASS_ID SPECIES BREED_ID', got {line!r}")
            image_id, label = parts[0], int(parts[1]) - 1
            path = base / "images" / f"{image_id}.jpg"
            if not path.is_file():
                raise PipelineError(f"{ann}:{lineno}: names image {image_id!r} but {path} does not exist")
            name = pets_class_name(image_id)
            if names_by_label.setdefault(label, name) != name:
                raise PipelineError(
                    f"{ann}:{lineno}: class id {label + 1} is {name!r} here but {names_by_label[label]!r} elsewhere"
                )
            species[name] = PETS_SPECIES[parts[2]]
            records.append(Record(path, image_id, label))
        if not records:
            raise PipelineError(f"{ann}: no images listed")
        splits[split] = records
    labels = sorted(names_by_label)
    if labels != list(range(len(labels))):
        missing = sorted(set(range(max(labels) + 1)) - set(labels))
        raise PipelineError(f"{base / 'annotations'}: class ids {[m + 1 for m in missing]} have no images")
    for split, records in splits.items():
        absent = sorted(set(labels) - {r.label for r in records})
        if absent:
            raise PipelineError(f"{base / 'annotations' / f'{split}.txt'}: no images of class(es) "
                                f"{[names_by_label[i] for i in absent]}, which the other split has; every class "
                                f"needs images in both trainval and test")
    return SourceSplits(splits["trainval"], splits["test"], [names_by_label[i] for i in labels], species=species)


# ---------------------------------------------------------------- splitting and writing


def split_train_val(records: list[Record], val_fraction: float, seed: int, class_names: list[str]) -> dict[str, list[Record]]:
    """Stratified, seeded split; every class must be able to appear in both train and val."""
    counts = Counter(r.label for r in records)
    for label, name in enumerate(class_names):
        if counts[label] < 2:
            raise PipelineError(
                f"class {name!r} has {counts[label]} image(s) in the train/val source; at least 2 are needed to "
                f"put it in both train and val"
            )
    records = sorted(records, key=lambda r: r.image_id)
    train, val = train_test_split(
        records, test_size=val_fraction, random_state=seed, stratify=[r.label for r in records]
    )
    return {"train": sorted(train, key=lambda r: r.image_id), "val": sorted(val, key=lambda r: r.image_id)}


def _convert_one(task: tuple[str, str, int | None, int]) -> dict:
    source, target, max_side, quality = task
    try:
        decoded = images.decode(source, draft_side=max_side)
    except images.BadImage as err:
        return {"ok": False, "reason": str(err)}
    original_size = decoded.image.size
    image = images.shrink(decoded.image, max_side)
    with open(target, "wb") as f:
        f.write(images.encode_jpeg(image, quality))
    return {"ok": True, "mode": decoded.source_mode, "format": decoded.source_format,
            "width": original_size[0], "height": original_size[1]}


def _ignore_sigint() -> None:
    # Ctrl-C reaches every process of the terminal's group: only the main process reports it, in one line.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def check_free_space(sources: list[Path], out_dir: Path, headroom: float = 1.1) -> None:
    """Refuse to start when the prepared copy cannot fit.

    The estimate is the sources' total size: re-encoding at max_side (or below) does not make
    images bigger in practice, so this errs on the safe side by the share the shrinking saves.
    """
    needed = int(sum(p.stat().st_size for p in sources) * headroom)
    folder = out_dir.parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise PipelineError(f"{folder}: not enough disk space for the prepared data: about {needed / 2**20:,.0f} MiB "
                            f"needed, {free / 2**20:,.0f} MiB free; free some space or move the project")


def write_prepared(splits: dict[str, list[Record]], class_names: list[str], out_dir: Path, data: DataParams,
                   source: str, workers: int | None = None, species: dict[str, str] | None = None,
                   generated: bool = False) -> dict:
    """Re-encode every image as RGB JPEG into out_dir (built aside, moved in at the end); return the report."""
    for split in SPLITS:
        present = {r.label for r in splits[split]}
        missing = [class_names[i] for i in range(len(class_names)) if i not in present]
        if missing:
            raise PipelineError(f"split {split!r} has no images of class(es) {missing}; every class needs images in "
                                f"train, val and test")
    check_free_space([r.path for split in SPLITS for r in splits[split]], out_dir)
    workers = workers or max(1, min(8, len(os.sched_getaffinity(0))))
    with atomic_dir(out_dir) as tmp:
        tasks, owners = [], []
        for split in SPLITS:
            for name in class_names:
                (tmp / split / name).mkdir(parents=True)
            for r in splits[split]:
                target = tmp / split / class_names[r.label] / f"{r.image_id}.jpg"
                tasks.append((str(r.path), str(target), data.max_side, data.jpeg_quality))
                owners.append((split, r))
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint)
        try:
            results = list(tqdm(pool.map(_convert_one, tasks, chunksize=16), total=len(tasks),
                                desc="prepare: re-encoding", unit="img", disable=None))
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise PipelineError(f"{out_dir.parent}: disk full while writing the prepared images; free some "
                                    f"space or set data.max_side lower") from None
            raise
        finally:
            # On Ctrl-C or an error, drop the queued images instead of converting them all first.
            pool.shutdown(wait=True, cancel_futures=True)
        report = {**_report(results, owners, class_names, data, source), "generated": generated}
        write_json(tmp / "classes.json", class_names)
        if species:
            write_json(tmp / "species.json", {name: species[name] for name in class_names})
        write_json(tmp / "report.json", report)
    return report


def _report(results: list[dict], owners: list[tuple[str, Record]], class_names: list[str], data: DataParams,
            source: str) -> dict:
    bad = [{"split": split, "file": str(r.path), "reason": res["reason"]}
           for res, (split, r) in zip(results, owners) if not res["ok"]]
    total = len(results)
    if bad and data.on_bad_image == "fail":
        listing = "; ".join(f"{b['file']}: {b['reason']}" for b in bad[:10])
        raise PipelineError(f"{len(bad)} unusable image(s) and data.on_bad_image = 'fail': {listing}")
    if len(bad) / total > data.max_bad_fraction:
        listing = "; ".join(f"{b['file']}: {b['reason']}" for b in bad[:10])
        raise PipelineError(
            f"{len(bad)} of {total} images are unusable ({len(bad) / total:.1%} > data.max_bad_fraction = "
            f"{data.max_bad_fraction:.1%}): {listing}"
        )
    good = [res for res in results if res["ok"]]
    counts = {split: Counter() for split in SPLITS}
    for res, (split, r) in zip(results, owners):
        if res["ok"]:
            counts[split][class_names[r.label]] += 1
    for split in SPLITS:
        emptied = [name for name in class_names if counts[split][name] == 0]
        if emptied:
            listing = "; ".join(f"{b['file']}: {b['reason']}" for b in bad if b["split"] == split)[:2000]
            raise PipelineError(f"split {split!r} has no usable image of class(es) {emptied} once unusable images "
                                f"are skipped: {listing}")
    # Converted = not already an RGB JPEG; counted by what the content really was.
    converted = Counter(f"{res['format']} {res['mode']}" for res in good if (res["format"], res["mode"]) != ("JPEG", "RGB"))
    return {
        "source": source,
        "images_written": len(good),
        "images_skipped": len(bad),
        "skipped": bad,
        "converted_to_rgb": dict(sorted(converted.items())),
        "counts": {split: dict(sorted(counts[split].items())) for split in SPLITS},
        "max_side": data.max_side,
    }


def prepare_oxford_pets(data: DataParams, seed: int, out_dir: Path) -> dict:
    return prepare_dataset(replace(data, dataset="oxford_pets"), seed, out_dir)


def prepare_dataset(data: DataParams, seed: int, out_dir: Path) -> dict:
    """Any supported source -> class subset -> per-class caps -> train/val split -> the prepared layout."""
    source = READERS[data.dataset](data, seed)
    source = select_classes(source, data.classes)
    trainval = cap_per_class(source.trainval, data.per_class, seed)
    test = cap_per_class(source.test, data.test_per_class, seed)
    splits = split_train_val(trainval, data.val_fraction, seed, source.class_names)
    splits["test"] = sorted(test, key=lambda r: r.image_id)
    with tempfile.TemporaryDirectory(prefix="petlab-pixels-") as tmp:
        splits = {split: materialize(records, Path(tmp)) for split, records in splits.items()}
        return write_prepared(splits, source.class_names, out_dir, data, source=source.origin, species=source.species,
                              generated=source.generated)


# ---------------------------------------------------------------- class subsets and caps


def select_classes(source: SourceSplits, names: list[str] | None) -> SourceSplits:
    """Keep the named classes only, relabelled 0..k-1 in the order given."""
    for name in source.class_names:
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise PipelineError(f"class name {name!r} of {source.origin} cannot be a folder name")
    if names is None:
        return source
    unknown = [n for n in names if n not in source.class_names]
    if unknown:
        raise PipelineError(f"data.classes: no class(es) {unknown} in {source.origin} "
                            f"(its classes: {', '.join(source.class_names)})")
    new_label = {source.class_names.index(n): i for i, n in enumerate(names)}

    def keep(records: list[Record]) -> list[Record]:
        return [replace(r, label=new_label[r.label]) for r in records if r.label in new_label]

    return replace(source, trainval=keep(source.trainval), test=keep(source.test), class_names=list(names))


def cap_per_class(records: list[Record], cap: int | None, seed: int) -> list[Record]:
    """At most `cap` records of every class, a seeded random draw within each class (None keeps all)."""
    if cap is None:
        return records
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[Record]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.label, r.image_id)):
        by_label[r.label].append(r)
    kept = []
    for label in sorted(by_label):
        group = by_label[label]
        if len(group) > cap:
            group = [group[i] for i in sorted(rng.choice(len(group), size=cap, replace=False))]
        kept += group
    return kept


def materialize(records: list[Record], folder: Path) -> list[Record]:
    """Write in-memory pixels as PNG files, so every source goes through the same decode-and-convert step."""
    written = []
    for r in records:
        if r.pixels is None:
            written.append(r)
            continue
        path = folder / f"{r.image_id}.png"
        Image.fromarray(r.pixels).save(path)  # 2-D arrays become grayscale PNGs, made RGB by the converter
        written.append(Record(path, r.image_id, r.label))
    return written


# ---------------------------------------------------------------- other sources


def download_with_torchvision(name: str, make: Callable[[], object], local_help: str) -> None:
    """Run a torchvision download (it verifies each file's MD5), turning any failure into one clear error."""
    try:
        make()
    except PipelineError:  # a checksum mismatch or an unsafe archive already says what is wrong
        raise
    except Exception as err:  # network errors come in many types; all mean the same to the user
        raise PipelineError(
            f"could not download {name} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            f"to use a local copy instead, {local_help}"
        ) from None


def read_oxford_pets(data: DataParams, seed: int) -> SourceSplits:
    base = locate_oxford_pets(data)
    return replace(read_pets_annotations(base), origin=f"oxford_pets ({base})",
                   generated=(base / GENERATED_MARKER).is_file())


CIFAR_FOLDER = "cifar-10-batches-py"


def read_cifar10(data: DataParams, seed: int) -> SourceSplits:
    """The python-pickle CIFAR-10 batches: data.root (holding cifar-10-batches-py/) or a verified download."""
    if data.root is not None:
        root = Path(data.root).expanduser()
        base = root if (root / "batches.meta").is_file() else root / CIFAR_FOLDER
        if not (base / "batches.meta").is_file():
            raise PipelineError(f"data.root = {str(root)!r} is not a CIFAR-10 copy: expected {root}/{CIFAR_FOLDER}/"
                                f"batches.meta (the extracted cifar-10-python.tar.gz)")
    else:
        from torchvision.datasets import CIFAR10

        download_dir = Path(data.download_dir)
        download_with_torchvision("CIFAR-10", lambda: CIFAR10(str(download_dir), train=True, download=True),
                                  f"extract cifar-10-python.tar.gz and set data.root to the folder holding {CIFAR_FOLDER}/")
        base = download_dir / CIFAR_FOLDER
    class_names = _unpickle(base / "batches.meta")["label_names"]
    splits = {"trainval": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    records: dict[str, list[Record]] = {}
    for split, files in splits.items():
        records[split] = []
        for name in files:
            batch = _unpickle(base / name)
            pixels = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            for i, (image, label) in enumerate(zip(pixels, batch["labels"])):
                records[split].append(Record(base / name, f"{name}_{i:05d}", int(label), image))
    return SourceSplits(records["trainval"], records["test"], list(class_names), f"cifar10 ({base})")


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise PipelineError(f"{path}: missing from the CIFAR-10 copy")
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


# torchvision's names; "/" cannot be in a folder name.
FASHION_MNIST_CLASSES = ["T-shirt-top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
FASHION_MNIST_FILES = {"trainval": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_fashion_mnist(data: DataParams, seed: int) -> SourceSplits:
    """The four idx files (gzipped or not): data.root (e.g. Debian's /usr/share/datasets/fashion-mnist) or a download."""
    if data.root is not None:
        root = Path(data.root).expanduser()
        candidates = [root, root / "FashionMNIST" / "raw"]  # the second is torchvision's layout
        found = [c for c in candidates if _idx_file(c, FASHION_MNIST_FILES["trainval"][0]) is not None]
        if not found:
            raise PipelineError(f"data.root = {str(root)!r} is not a Fashion-MNIST copy: expected "
                                f"train-images-idx3-ubyte(.gz) and the three other idx files in {root} or "
                                f"{candidates[1]}")
        base = found[0]
    else:
        from torchvision.datasets import FashionMNIST

        download_dir = Path(data.download_dir)
        download_with_torchvision("Fashion-MNIST", lambda: FashionMNIST(str(download_dir), train=True, download=True),
                                  "install Debian's dataset-fashion-mnist (or copy its four idx files into a folder) "
                                  "and set data.root to /usr/share/datasets/fashion-mnist (or that folder)")
        base = download_dir / "FashionMNIST" / "raw"
    records: dict[str, list[Record]] = {}
    for split, (images_name, labels_name) in FASHION_MNIST_FILES.items():
        images_path, labels_path = _idx_file(base, images_name), _idx_file(base, labels_name)
        if images_path is None or labels_path is None:
            raise PipelineError(f"{base}: {images_name} or {labels_name} (.gz) missing from the Fashion-MNIST copy")
        pixels, labels = read_idx(images_path), read_idx(labels_path)
        if pixels.ndim != 3 or labels.ndim != 1 or len(pixels) != len(labels) or labels.max() >= 10:
            raise PipelineError(f"{images_path}, {labels_path}: shapes {pixels.shape} and {labels.shape} are not "
                                f"N images and N labels in 0..9")
        prefix = "train" if split == "trainval" else "test"
        records[split] = [Record(images_path, f"{prefix}_{i:05d}", int(label), image)
                          for i, (image, label) in enumerate(zip(pixels, labels))]
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
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    array = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise PipelineError(f"{path}: {array.size} bytes of data for shape {dims} (truncated?)")
    return array.reshape(dims)


def read_imagefolder(data: DataParams, seed: int) -> SourceSplits:
    """<root>/<Class>/**/<image>: classes in name order, test held out per class by data.test_fraction and the seed."""
    root = Path(data.root).expanduser()
    if not root.is_dir():
        raise PipelineError(f"data.root = {str(root)!r}: not a folder (imagefolder needs a folder of class subfolders)")
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(class_dirs) < 2:
        raise PipelineError(f"data.root = {str(root)!r}: {len(class_dirs)} class subfolder(s); at least 2 are needed")
    records = []
    for label, folder in enumerate(class_dirs):
        files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file()
                       and p.suffix.lower() in extensions and not any(s.startswith(".") for s in p.relative_to(folder).parts))
        if len(files) < 3:
            raise PipelineError(f"{folder}: {len(files)} image file(s); every class needs at least 3 (train, val, test)")
        # Ids name the output files: the path without extension, unless two files differ only by extension.
        stems = Counter(f.with_suffix("").as_posix() for f in files)
        for f in files:
            image_id = f.with_suffix("").as_posix() if stems[f.with_suffix("").as_posix()] == 1 else f.as_posix()
            records.append(Record(folder / f, image_id.replace("/", "__"), label))
    try:
        trainval, test = train_test_split(records, test_size=data.test_fraction, random_state=seed,
                                          stratify=[r.label for r in records])
    except ValueError as err:
        raise PipelineError(f"data.test_fraction = {data.test_fraction}: cannot hold out a test image of every class "
                            f"in {root} ({err})") from None
    return SourceSplits(trainval, test, [d.name for d in class_dirs], f"imagefolder ({root})")


READERS: dict[str, Callable[[DataParams, int], SourceSplits]] = {
    "oxford_pets": read_oxford_pets,
    "cifar10": read_cifar10,
    "fashion_mnist": read_fashion_mnist,
    "imagefolder": read_imagefolder,
}
