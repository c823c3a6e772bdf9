"""Oxford-IIIT Pet: images/ and annotations/{trainval,test}.txt, from data.root or a checksum-verified download."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from petlab.core.errors import PipelineError
from petlab.core.params import DataParams
from petlab.prepare.downloads import download_verified, extract_tar
from petlab.prepare.sources.base import (
    Record,
    SourceSplits,
    check_image_id,
    download_with_torchvision,
    parse_int,
    read_text_lines,
)
from petlab.prepare.synthetic import GENERATED_MARKER

PETS_FOLDER = "oxford-iiit-pet"
NUM_CLASSES = 37  # class ids in the annotations run 1..37
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


def pets_class_name(image_id: str) -> str:
    """'american_bulldog_100' -> 'American Bulldog' (torchvision's OxfordIIITPet naming)."""
    return " ".join(part.title() for part in image_id.rsplit("_", 1)[0].split("_"))


PETS_SPECIES = {1: "cat", 2: "dog"}  # the annotations' SPECIES column


def read_pets_annotations(base: Path) -> SourceSplits:
    """Parse annotations/{trainval,test}.txt, checking every field of every line and every image it names.

    A line repeated verbatim (same image, same class) is left out and listed; the same image with another
    class, or in both trainval and test, is an error naming both lines.
    """
    names_by_label: dict[int, tuple[str, str]] = {}  # label -> (class name, where first seen)
    species: dict[str, str] = {}  # class name -> cat / dog
    label_by_name: dict[str, tuple[int, str]] = {}
    first_seen: dict[str, tuple[str, int, str]] = {}  # image id -> (split, label, file:line)
    splits: dict[str, list[Record]] = {}
    left_out: list[dict] = []
    for split in ("trainval", "test"):
        ann = base / "annotations" / f"{split}.txt"
        if not ann.is_file():
            raise PipelineError(f"{ann}: annotation file missing (is data.root the extracted Oxford-IIIT Pet folder?)")
        records = []
        for lineno, line in read_text_lines(ann):
            where = f"{ann}:{lineno}"
            parts = line.split()
            if len(parts) != 4:
                raise PipelineError(f"{where}: expected 'IMAGE_ID CLASS_ID SPECIES BREED_ID', got {line!r}")
            image_id = parts[0]
            check_image_id(image_id, where)
            label = parse_int(parts[1], where, "class id", 1, NUM_CLASSES) - 1
            species_id = parse_int(parts[2], where, "species", 1, 2)
            parse_int(parts[3], where, "breed id", 1)
            if image_id in first_seen:
                seen_split, seen_label, seen_where = first_seen[image_id]
                if seen_split != split:
                    raise PipelineError(
                        f"{where}: image {image_id!r} is also listed at {seen_where}; an image in both "
                        f"trainval and test would leak the test set into training"
                    )
                if seen_label != label:
                    raise PipelineError(
                        f"{where}: image {image_id!r} has class id {label + 1} here but "
                        f"{seen_label + 1} at {seen_where}"
                    )
                left_out.append({"file": where, "reason": f"image {image_id!r} listed again (first at {seen_where})"})
                continue
            first_seen[image_id] = (split, label, where)
            path = base / "images" / f"{image_id}.jpg"
            if not path.is_file():
                raise PipelineError(f"{where}: names image {image_id!r} but {path} does not exist")
            name = pets_class_name(image_id)
            known_name, known_where = names_by_label.setdefault(label, (name, where))
            if known_name != name:
                raise PipelineError(
                    f"{where}: class id {label + 1} is {name!r} here but {known_name!r} at {known_where}"
                )
            known_label, known_where = label_by_name.setdefault(name, (label, where))
            if known_label != label:
                raise PipelineError(
                    f"{where}: class {name!r} has class id {label + 1} here but {known_label + 1} at "
                    f"{known_where}; two class ids cannot share a class name"
                )
            species[name] = PETS_SPECIES[species_id]
            records.append(Record(path, image_id, label))
        if not records:
            raise PipelineError(f"{ann}: no images listed")
        splits[split] = records
    labels = sorted(names_by_label)
    if labels != list(range(len(labels))):
        missing = sorted(set(range(max(labels) + 1)) - set(labels))
        raise PipelineError(
            f"{base / 'annotations'}: class ids {[m + 1 for m in missing]} have no images (the ids "
            f"must run 1..{len(labels)} without gaps)"
        )
    for split, records in splits.items():
        absent = sorted(set(labels) - {r.label for r in records})
        if absent:
            raise PipelineError(
                f"{base / 'annotations' / f'{split}.txt'}: no images of class(es) "
                f"{[names_by_label[i][0] for i in absent]}, which the other split has; every class "
                f"needs images in both trainval and test"
            )
    return SourceSplits(
        splits["trainval"], splits["test"], [names_by_label[i][0] for i in labels], left_out=left_out, species=species
    )


def read_oxford_pets(data: DataParams, seed: int) -> SourceSplits:
    base = locate_oxford_pets(data)
    return replace(
        read_pets_annotations(base), origin=f"oxford_pets ({base})", generated=(base / GENERATED_MARKER).is_file()
    )
