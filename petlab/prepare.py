"""Turning a raw dataset into the prepared ImageFolder layout every later stage reads.

Layout written (the same for any source):
    <out>/train/<Class Name>/<image id>.jpg, <out>/val/..., <out>/test/...
    <out>/classes.json   class names in label order
    <out>/report.json    what was converted, what was skipped and why
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import train_test_split
from tqdm import tqdm

from petlab import images
from petlab.downloads import download_verified, extract_tar
from petlab.outputs import atomic_dir, write_json
from petlab.params import DataParams
from petlab.runtime import PipelineError

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


@dataclass(frozen=True)
class SourceSplits:
    trainval: list[Record]
    test: list[Record]
    class_names: list[str]


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
    try:
        # Our own extraction: torchvision's trusts the archive's member paths (see petlab/downloads.py).
        for url, md5 in PETS_ARCHIVES:
            extract_tar(download_verified(url, base, md5), base)
    except PipelineError:
        raise
    except Exception as err:  # network errors come in many types; all mean the same to the user
        raise PipelineError(
            f"could not download Oxford-IIIT Pet ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            f"to use a local copy instead, {LOCAL_COPY_HELP}"
        ) from None
    return base


def pets_class_name(image_id: str) -> str:
    """'american_bulldog_100' -> 'American Bulldog' (torchvision's OxfordIIITPet naming)."""
    return " ".join(part.title() for part in image_id.rsplit("_", 1)[0].split("_"))


def read_pets_annotations(base: Path) -> SourceSplits:
    """Parse annotations/{trainval,test}.txt, checking every line and every image it names."""
    names_by_label: dict[int, str] = {}
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
            if len(parts) != 4 or not parts[1].isdigit():
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
    return SourceSplits(splits["trainval"], splits["test"], [names_by_label[i] for i in labels])


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
                   source: str, workers: int | None = None) -> dict:
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
        report = _report(results, owners, class_names, data, source)
        write_json(tmp / "classes.json", class_names)
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
    base = locate_oxford_pets(data)
    source = read_pets_annotations(base)
    splits = split_train_val(source.trainval, data.val_fraction, seed, source.class_names)
    splits["test"] = sorted(source.test, key=lambda r: r.image_id)
    return write_prepared(splits, source.class_names, out_dir, data, source=f"oxford_pets ({base})")
