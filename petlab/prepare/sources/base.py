"""What every dataset source shares: the records it yields, and the checks on what it reads.

A source turns a raw dataset (files, archives, label files) into `SourceSplits`: records with a label,
class names, and a list of what it left out and why. Every check on a label file or an image id lives
here, so each rule is written once and every source applies it the same way.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from petlab.core.errors import PipelineError, read_text


@dataclass(frozen=True)
class Record:
    """One source image: where it is, its id (the prepared file's stem) and its label."""

    path: Path
    image_id: str
    label: int
    # In-memory sources (CIFAR-10, Fashion-MNIST): the pixels, HxW or HxWx3 uint8; `path` is then their file.
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SourceSplits:
    trainval: list[Record]
    test: list[Record]
    class_names: list[str]
    origin: str = ""  # what was read, for the report
    # What the source read but left out, each {"file": ..., "reason": ...}: duplicate lines, links, hidden files.
    left_out: list[dict] = field(default_factory=list)
    species: dict[str, str] = field(default_factory=dict)  # class name -> "cat" / "dog", where the source says
    generated: bool = False  # made by petlab.prepare.synthetic, not real photos: every report must say so


def read_text_lines(path: Path) -> list[tuple[int, str]]:
    """A label file's (line number, line) pairs, blank lines and # comments left out; non-UTF-8 bytes refused."""
    text = read_text(path)
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip() and not line.startswith("#")]


def parse_int(value: str, where: str, what: str, low: int, high: int | None = None) -> int:
    """A field that must be a plain ASCII integer in [low, high]; `where` is 'file:line'."""
    # str.isdigit() also accepts '²' and other Unicode digits that int() then refuses or misreads.
    if not (value.isascii() and value.isdigit()):
        raise PipelineError(f"{where}: {what} {value!r} is not a plain integer")
    number = int(value)
    if number < low or (high is not None and number > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise PipelineError(f"{where}: {what} {number} is out of range ({allowed})")
    return number


def check_image_id(image_id: str, where: str) -> None:
    """An id becomes a file name: no folders, no hidden or special names, nothing that escapes the output folder."""
    if (
        not image_id
        or image_id in (".", "..")
        or image_id.startswith(".")
        or "/" in image_id
        or "\\" in image_id
        or "\x00" in image_id
        or not image_id.isprintable()
    ):
        raise PipelineError(f"{where}: image id {image_id!r} is not a plain file name (no folders, no leading '.')")


def check_class_names(class_names: list[str], origin: str) -> None:
    """Class names become folder names and label the plots: distinct, and usable as a folder name."""
    for name in class_names:
        if (
            not isinstance(name, str)
            or not name
            or name in (".", "..")
            or "/" in name
            or "\\" in name
            or "\x00" in name
        ):
            raise PipelineError(f"class name {name!r} of {origin} cannot be a folder name")
    first_with: dict[str, str] = {}
    for name in class_names:
        key = same_name_key(name)
        if key not in first_with:
            first_with[key] = name
            continue
        other = first_with[key]
        if other == name:
            raise PipelineError(f"{origin}: class name {name!r} given to more than one class id")
        raise PipelineError(
            f"{origin}: class names {shown(other)} and {shown(name)} are one name: equal once "
            "Unicode-normalised (NFC) and case-folded, as macOS and Windows file systems compare "
            "names and as every figure shows them; rename one"
        )


def shown(name: str) -> str:
    """A name quoted, with its code points spelled out where they are not plain ASCII: two forms of 'café' print
    alike, and the user must see which folder is which."""
    return repr(name) if ascii(name) == repr(name) else f"{name!r} ({ascii(name)})"


def same_name_key(name: str) -> str:
    """What two names that must not both exist share: a file system that folds case (macOS, Windows) or Unicode
    forms (macOS: 'café' as one code point, or as 'e' and a combining accent) stores them as one, and a figure
    draws them alike."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def unique_ids(records: list[Record]) -> list[Record]:
    """Make ids unique within each class (case-insensitively, as on macOS and Windows disks).

    Ids that collide get a short hash of their source path, so no image overwrites another.
    """
    seen = Counter((r.label, same_name_key(r.image_id)) for r in records)
    out = []
    for r in records:
        if seen[(r.label, same_name_key(r.image_id))] > 1:
            digest = hashlib.sha1(str(r.path).encode()).hexdigest()[:8]
            r = Record(r.path, f"{r.image_id}-{digest}", r.label, r.pixels)
        out.append(r)
    return out


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


def check_split_sizes(n_items: int, n_classes: int, fraction: float, key: str, what: str) -> None:
    """Refuse a stratified split whose held-out or kept part cannot hold one image of every class.

    The sizes are scikit-learn's (held out: ceil(fraction * n), kept: floor((1 - fraction) * n)), so this
    refuses exactly what train_test_split would, but with one line naming the parameter.
    """
    held_out = math.ceil(fraction * n_items)
    kept = math.floor((1.0 - fraction) * n_items)
    if held_out < n_classes or kept < n_classes:
        raise PipelineError(
            f"{key} = {fraction} splits {n_items} {what} images into {kept} and {held_out}; with "
            f"{n_classes} classes each part needs at least {n_classes} (one per class): change {key} "
            f"or use more images"
        )
