"""Turning a raw dataset into the prepared ImageFolder layout every later stage reads.

The sources (petlab/sources/) read and check a dataset; this module does what is the same for all of
them: class subsets, per-class caps, the train/val split, re-encoding, the report and the disk checks.

Layout written (the same for any source):
    <out>/train/<Class Name>/<image id>.jpg, <out>/val/..., <out>/test/...
    <out>/classes.json   class names in label order
    <out>/report.json    what was converted, what was skipped or left out and why, and whether the source was generated
    <out>/species.json   Oxford-IIIT Pet only: each class's species (cat or dog), from the annotations
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from petlab.core.errors import PipelineError
from petlab.core.layout import SPLITS
from petlab.core.outputs import atomic_dir, naming_failed_writes, write_json
from petlab.core.params import DataParams
from petlab.prepare import images
from petlab.prepare.sources import READERS
from petlab.prepare.sources.base import Record, SourceSplits, check_class_names, check_split_sizes, unique_ids

# ---------------------------------------------------------------- class subsets, caps and the split


def select_classes(source: SourceSplits, names: list[str] | None) -> SourceSplits:
    """Keep the named classes only, relabelled 0..k-1 in the order given."""
    check_class_names(source.class_names, source.origin)
    if names is None:
        return source
    unknown = [n for n in names if n not in source.class_names]
    if unknown:
        raise PipelineError(
            f"data.classes: no class(es) {unknown} in {source.origin} (its classes: {', '.join(source.class_names)})"
        )
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


def split_train_val(
    records: list[Record], val_fraction: float, seed: int, class_names: list[str], per_class: int | None = None
) -> dict[str, list[Record]]:
    """Stratified, seeded split; every class must be able to appear in both train and val."""
    counts = Counter(r.label for r in records)
    for label, name in enumerate(class_names):
        if counts[label] < 2:
            raise PipelineError(
                f"class {name!r} has {counts[label]} image(s) in the train/val source; at least 2 are needed to "
                f"put it in both train and val"
            )
    what = "train/val" if per_class is None else f"train/val (data.per_class = {per_class})"
    check_split_sizes(len(records), len(class_names), val_fraction, "data.val_fraction", what)
    records = sorted(records, key=lambda r: r.image_id)
    from sklearn.model_selection import train_test_split  # here: a 2 s import, after the checks

    train, val = train_test_split(
        records, test_size=val_fraction, random_state=seed, stratify=[r.label for r in records]
    )
    return {"train": sorted(train, key=lambda r: r.image_id), "val": sorted(val, key=lambda r: r.image_id)}


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


# ---------------------------------------------------------------- re-encoding and the report


def _convert_one(task: tuple[str, str, int | None, int]) -> dict:
    source, target, max_side, quality = task
    try:
        decoded = images.decode(source, draft_side=max_side)
        image = images.shrink(decoded.image, max_side)
        fitted = images.fit_jpeg(image)
        encoded = images.encode_jpeg(fitted, quality)
    except images.BadImage as err:
        return {"ok": False, "reason": str(err)}
    except (OSError, ValueError) as err:  # what Pillow's JPEG encoder raises on an image it cannot hold
        return {"ok": False, "reason": f"cannot be encoded as JPEG ({str(err) or type(err).__name__})"}
    # A write failure (disk full, read-only) stops the run: not the image's fault.
    with naming_failed_writes(target), open(target, "wb") as f:
        f.write(encoded)
    original_size = decoded.image.size
    return {
        "ok": True,
        "mode": decoded.source_mode,
        "format": decoded.source_format,
        "width": original_size[0],
        "height": original_size[1],
        "exif_rotated": decoded.exif_rotated,
        "fitted_to_jpeg": fitted is not image,
    }


def _ignore_sigint() -> None:
    # Ctrl-C reaches every process of the terminal's group: only the main process reports it, in one line.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # forked with SIGINT blocked (see sigint_blocked); now ignored
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def sigint_blocked():
    """SIGINT held back while worker processes are forked: they inherit the block until their initializer
    ignores the signal, so a Ctrl-C while one is still starting cannot raise (and print) a traceback in it.
    The main process gets a Ctrl-C held back here as soon as the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: workers are spawned, not forked
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
        raise PipelineError(
            f"{folder}: not enough disk space for the prepared data: about {needed / 2**20:,.0f} MiB "
            f"needed, {free / 2**20:,.0f} MiB free; free some space or move the project"
        )


def write_prepared(
    splits: dict[str, list[Record]],
    class_names: list[str],
    out_dir: Path,
    data: DataParams,
    source: str,
    workers: int | None = None,
    left_out: list[dict] | None = None,
    species: dict[str, str] | None = None,
    generated: bool = False,
) -> dict:
    """Re-encode every image as RGB JPEG into out_dir (built aside, moved in at the end); return the report."""
    for split in SPLITS:
        present = {r.label for r in splits[split]}
        missing = [class_names[i] for i in range(len(class_names)) if i not in present]
        if missing:
            raise PipelineError(
                f"split {split!r} has no images of class(es) {missing}; every class needs images in train, val and test"
            )
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
            with sigint_blocked():  # map submits every task at once, and the first submit forks the workers
                converted = pool.map(_convert_one, tasks, chunksize=16)
            results = list(tqdm(converted, total=len(tasks), desc="prepare: re-encoding", unit="img", disable=None))
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise PipelineError(
                    f"{out_dir.parent}: disk full while writing the prepared images; free some "
                    f"space or set data.max_side lower"
                ) from None
            raise
        finally:
            # On Ctrl-C or an error, drop the queued images instead of converting them all first.
            pool.shutdown(wait=True, cancel_futures=True)
        report = {**_report(results, owners, class_names, data, source, left_out or []), "generated": generated}
        check_counts_on_disk(tmp, report["counts"])
        write_json(tmp / "classes.json", class_names)
        if species:
            write_json(tmp / "species.json", {name: species[name] for name in class_names})
        write_json(tmp / "report.json", report)
    return report


def check_counts_on_disk(folder: Path, counts: dict[str, dict[str, int]]) -> None:
    """The report's counts must be the files written: an image overwriting another would break this."""
    for split, per_class in counts.items():
        for name, n in per_class.items():
            on_disk = sum(1 for _ in (folder / split / name).glob("*.jpg"))
            if on_disk != n:
                raise PipelineError(
                    f"prepare wrote {on_disk} file(s) to {split}/{name} but converted {n} images; "
                    f"two images were given the same output name (a bug worth reporting)"
                )


def _report(
    results: list[dict],
    owners: list[tuple[str, Record]],
    class_names: list[str],
    data: DataParams,
    source: str,
    left_out: list[dict],
) -> dict:
    bad = [
        {"split": split, "file": str(r.path), "reason": res["reason"]}
        for res, (split, r) in zip(results, owners)
        if not res["ok"]
    ]
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
            raise PipelineError(
                f"split {split!r} has no usable image of class(es) {emptied} once unusable images "
                f"are skipped: {listing}"
            )
    # Converted = not already an RGB JPEG; counted by what the content really was.
    converted = Counter(
        f"{res['format']} {res['mode']}" for res in good if (res["format"], res["mode"]) != ("JPEG", "RGB")
    )
    return {
        "source": source,
        "images_written": len(good),
        "images_skipped": len(bad),
        "skipped": bad,
        "left_out_count": len(left_out),
        "left_out": left_out,  # files the source did not take (repeated lines, hidden files, outside links)
        "converted_to_rgb": dict(sorted(converted.items())),
        "exif_rotated": sum(res["exif_rotated"] for res in good),
        "resized_to_fit_jpeg": sum(res["fitted_to_jpeg"] for res in good),
        "counts": {split: dict(sorted(counts[split].items())) for split in SPLITS},
        "max_side": data.max_side,
    }


# ---------------------------------------------------------------- the whole preparation


def prepare_oxford_pets(data: DataParams, seed: int, out_dir: Path) -> dict:
    return prepare_dataset(replace(data, dataset="oxford_pets"), seed, out_dir)


def prepare_dataset(data: DataParams, seed: int, out_dir: Path) -> dict:
    """Any supported source -> class subset -> per-class caps -> train/val split -> the prepared layout."""
    source = READERS[data.dataset](data, seed)
    source = select_classes(source, data.classes)
    both = unique_ids(source.trainval + source.test)  # no two images of a class may share an output file
    trainval = cap_per_class(both[: len(source.trainval)], data.per_class, seed)
    test = cap_per_class(both[len(source.trainval) :], data.test_per_class, seed)
    splits = split_train_val(trainval, data.val_fraction, seed, source.class_names, data.per_class)
    splits["test"] = sorted(test, key=lambda r: r.image_id)
    with tempfile.TemporaryDirectory(prefix="petlab-pixels-") as tmp:
        splits = {split: materialize(records, Path(tmp)) for split, records in splits.items()}
        return write_prepared(
            splits,
            source.class_names,
            out_dir,
            data,
            source=source.origin,
            left_out=source.left_out,
            species=source.species,
            generated=source.generated,
        )
