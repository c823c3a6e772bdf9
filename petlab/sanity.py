"""Checks that run before training: the prepared data is whole and leak-free, and both models can learn.

Each check adds to a list of failures; the stage writes its metrics and then stops the
pipeline with one message naming every failed check.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from petlab.data import PreparedData, TransformSpec, eval_transform, read_image
from petlab.layout import SPLITS
from petlab.runtime import PipelineError
from petlab.train import StepContext, train_step


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


def overfit_items(data: PreparedData, batches: int, batch_size: int, seed: int) -> list[tuple[Path, int]]:
    """A fixed, seeded draw of batches * batch_size training images covering many classes."""
    items = data.items("train")
    needed = batches * batch_size
    if needed > len(items):
        from petlab.params import ParamsError

        raise ParamsError(
            f"sanity.overfit_batches = {batches} with sanity.batch_size = {batch_size} needs {needed} "
            f"training images but there are {len(items)}; lower one of them"
        )
    order = np.random.default_rng(seed).permutation(len(items))[:needed]
    return [items[i] for i in sorted(order)]


def image_batches(
    items: list[tuple[Path, int]], spec: TransformSpec, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 batches of the images, eval-transformed (a StepContext with `spec` normalises them)."""
    transform = eval_transform(spec)
    x = torch.stack([transform(read_image(path)) for path, _ in items])
    y = torch.tensor([label for _, label in items])
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


def standardize(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-dimension z-scores over all the batches' features.

    A linear head absorbs any fixed affine map of its inputs, so this changes nothing about what the
    head can fit, only how fast Adam gets there: features of a random-init backbone differ between
    images by tiny amounts, and raw they would need thousands of steps.
    """
    x = torch.cat([b[0] for b in batches])
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    return [((f - mean) / std, y) for f, y in batches]


def overfit(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    ctx: StepContext,
    lr: float,
    max_steps: int,
    writer=None,
    tag: str = "model",
) -> dict:
    """Train on the same few batches until every one is classified right (train mode), or max_steps.

    Returns the step at which 100% was first reached (None if never), and the final loss and accuracy.
    """
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss()
    reached, loss_value, accuracy = None, float("nan"), 0.0
    for step in range(1, max_steps + 1):
        correct, total, losses = 0, 0, []
        for x, y in batches:
            loss, logits = train_step(model, x, y, optimizer, loss_fn, ctx, None)
            correct += int((logits.argmax(1).cpu() == y).sum())
            total += len(y)
            losses.append(float(loss))
        loss_value, accuracy = float(np.mean(losses)), correct / total
        if writer is not None:
            writer.add_scalar(f"overfit_{tag}/loss", loss_value, step)
            writer.add_scalar(f"overfit_{tag}/accuracy", accuracy, step)
        if accuracy == 1.0:
            reached = step
            break
    return {
        "steps_to_100pct": reached,
        "final_loss": round(loss_value, 6),
        "final_accuracy": round(accuracy, 6),
        "max_steps": max_steps,
        "images": sum(len(y) for _, y in batches),
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
