"""The prepared data checked before any training: counts, leakage between splits, duplicates, image sizes."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import numpy as np
from tqdm import tqdm

from petlab.core.errors import PipelineError
from petlab.core.layout import SPLITS
from petlab.data.dataset import PreparedData, read_image


def check_data(data: PreparedData) -> tuple[dict, list[str]]:
    """Counts, decodability, cross-split duplicates and size statistics of the prepared images."""
    failures: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    unreadable: list[str] = []
    owners: dict[str, list[str]] = defaultdict(list)
    sizes: dict[str, list[tuple[int, int]]] = {}
    for split in SPLITS:
        items = data.items(split)
        counts[split] = {name: 0 for name in data.class_names}
        sizes[split] = []
        for path, label in tqdm(items, desc=f"sanity: decoding {split}", leave=False, unit="img", disable=None):
            counts[split][data.class_names[label]] += 1
            raw = path.read_bytes()
            owners[hashlib.sha256(raw).hexdigest()].append(f"{split}/{path.parent.name}/{path.name}")
            try:  # with the loaders' own decoder: what passes here, training can read
                image = read_image(path, raw)
                sizes[split].append((image.shape[2], image.shape[1]))
            except PipelineError as err:
                unreadable.append(str(err))
    overlaps = sorted(files for files in owners.values() if len({f.split("/")[0] for f in files}) > 1)
    for split in SPLITS:
        empty = [c for c, n in counts[split].items() if n == 0]
        if empty:
            failures.append(f"split {split!r} has no images of {empty}")
    if unreadable:
        failures.append(f"{len(unreadable)} prepared image(s) cannot be decoded: {unreadable[:5]}")
    report = {
        "counts": {
            s: {
                "total": sum(c.values()),
                "min_per_class": min(c.values()),
                "max_per_class": max(c.values()),
                "per_class": c,
            }
            for s, c in counts.items()
        },
        "unreadable": {"count": len(unreadable), "files": unreadable},
        "cross_split_duplicates": {"count": len(overlaps), "groups": overlaps},
        "image_size": {s: _size_stats(v) for s, v in sizes.items()},
    }
    return report, failures


def _size_stats(sizes: list[tuple[int, int]]) -> dict:
    if not sizes:
        return {}
    w, h = np.array(sizes).T
    return {
        "width": {"min": int(w.min()), "mean": round(float(w.mean()), 2), "max": int(w.max())},
        "height": {"min": int(h.min()), "mean": round(float(h.mean()), 2), "max": int(h.max())},
    }


def prepare_report(data: PreparedData) -> dict:
    """What prepare converted and skipped, carried into the sanity metrics so nothing is dropped silently."""
    report = json.loads((data.root / "report.json").read_text())
    return {
        "converted_to_rgb": report["converted_to_rgb"],
        "skipped_count": report["images_skipped"],
        "skipped": report["skipped"],
        "left_out_count": report["left_out_count"],
        "left_out": report["left_out"],
        "exif_rotated": report["exif_rotated"],
        "resized_to_fit_jpeg": report["resized_to_fit_jpeg"],
    }


def metrics_summary(report: dict) -> dict:
    """The scalars of the report worth comparing across runs (`dvc metrics show`); the lists and per-class
    details stay in the full report."""
    overfit = {
        f"overfit_{m}": {k: report[f"overfit_{m}"][k] for k in ("steps_to_100pct", "final_accuracy")}
        for m in ("cnn", "probe")
    }
    return {
        "passed": report["passed"],
        "counts": {
            split: {k: c[k] for k in ("total", "min_per_class", "max_per_class")}
            for split, c in report["counts"].items()
        },
        "cross_split_duplicates": {"count": report["cross_split_duplicates"]["count"]},
        "unreadable": {"count": report["unreadable"]["count"]},
        "prepare": {
            k: report["prepare"][k] for k in ("skipped_count", "left_out_count", "exif_rotated", "resized_to_fit_jpeg")
        },
        **overfit,
    }
