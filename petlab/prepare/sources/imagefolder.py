"""A folder of class subfolders: <root>/<Class>/**/<image>, classes in name order, test held out per class.

Nothing outside data.root is read unless data.follow_symlinks allows it; every file found is either taken
or left out with its reason (hidden, a dangling or outside link, not an image, the same file twice).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from PIL import Image

from petlab.core.errors import PipelineError
from petlab.core.params import DataParams
from petlab.prepare.sources.base import Record, SourceSplits, check_split_sizes


class _Walk:
    """Lists image files under class folders, recording each entry it does not take in `left_out`."""

    def __init__(self, root: Path, follow_symlinks: bool):
        self.real_root = root.resolve()
        self.follow_symlinks = follow_symlinks
        self.extensions = {ext.lower() for ext in Image.registered_extensions()}
        self.left_out: list[dict] = []
        self.read_dirs: set[Path] = set()
        self.read_files: dict[Path, Path] = {}  # real path -> the path it was taken under

    def refuse(self, path: Path, reason: str) -> None:
        # A name that is not UTF-8 is shown with its odd bytes escaped ('\\xff'), so the report can be written.
        self.left_out.append({"file": os.fsencode(path).decode("utf-8", "backslashreplace"), "reason": reason})

    def reason_to_skip(self, path: Path) -> str | None:
        if path.name.startswith("."):
            return "hidden (its name starts with '.')"
        try:
            path.name.encode("utf-8")  # undecodable bytes come back from the file system as lone surrogates
        except UnicodeEncodeError:
            return "its name is not valid UTF-8 (rename it: names reach the outputs, reports and figures as text)"
        if path.is_symlink():
            target = Path(os.path.realpath(path))
            if not target.exists():
                return f"dangling symlink (to {os.readlink(path)})"
            if not self.follow_symlinks and not target.is_relative_to(self.real_root):
                return f"symlink to {target}, outside data.root (set data.follow_symlinks: true to read it)"
        return None

    def entries(self, folder: Path) -> list[Path]:
        """The entries of `folder` worth looking at; a folder seen before (a symlink loop) gives none."""
        real = folder.resolve()
        if real in self.read_dirs:
            self.refuse(folder, f"folder already read as {real} (a symlink to it)")
            return []
        self.read_dirs.add(real)
        try:
            children = sorted(folder.iterdir())
        except OSError as err:
            self.refuse(folder, f"cannot be listed ({err.strerror})")
            return []
        kept = []
        for child in children:
            reason = self.reason_to_skip(child)
            if reason is None:
                kept.append(child)
            else:
                self.refuse(child, reason)
        return kept

    def images(self, folder: Path) -> list[Path]:
        found = []
        for entry in self.entries(folder):
            if entry.is_dir():
                found += self.images(entry)
            elif not entry.is_file():
                self.refuse(entry, "not a regular file")
            elif entry.suffix.lower() not in self.extensions:
                self.refuse(entry, f"not an image file name (extension {entry.suffix or 'none'!r})")
            elif entry.resolve() in self.read_files:
                self.refuse(entry, f"the same file as {self.read_files[entry.resolve()]} (taken once)")
            else:
                self.read_files[entry.resolve()] = entry
                found.append(entry)
        return found


def read_imagefolder(data: DataParams, seed: int) -> SourceSplits:
    root = Path(data.root).expanduser()
    if not root.is_dir():
        raise PipelineError(f"data.root = {str(root)!r}: not a folder (imagefolder needs a folder of class subfolders)")
    walk = _Walk(root, data.follow_symlinks)
    class_dirs = []
    for entry in walk.entries(root):
        if entry.is_dir():
            class_dirs.append(entry)
        else:
            walk.refuse(entry, "not inside a class folder")
    if len(class_dirs) < 2:
        raise PipelineError(f"data.root = {str(root)!r}: {len(class_dirs)} class subfolder(s); at least 2 are needed")
    records = []
    for label, folder in enumerate(class_dirs):
        files = [p.relative_to(folder) for p in walk.images(folder)]
        if len(files) < 3:
            raise PipelineError(
                f"{folder}: {len(files)} image file(s); every class needs at least 3 (train, val, test)"
            )
        # Ids name the output files: the path without extension, unless two files differ only by extension.
        stems = Counter(f.with_suffix("").as_posix() for f in files)
        for f in files:
            image_id = f.with_suffix("").as_posix() if stems[f.with_suffix("").as_posix()] == 1 else f.as_posix()
            records.append(Record(folder / f, image_id.replace("/", "__"), label))
    check_split_sizes(len(records), len(class_dirs), data.test_fraction, "data.test_fraction", f"{root}")
    from sklearn.model_selection import train_test_split  # here: a 2 s import, after the checks

    trainval, test = train_test_split(
        records, test_size=data.test_fraction, random_state=seed, stratify=[r.label for r in records]
    )
    return SourceSplits(trainval, test, [d.name for d in class_dirs], f"imagefolder ({root})", walk.left_out)
