"""Atomic writers for every output, so a stage killed at any moment leaves its old outputs or none.

Files are written to a temporary name in the same folder and renamed into place;
folders are built beside their target and swapped in at the end.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from petlab.core import paths
from petlab.core.errors import PipelineError


def process_umask() -> int:
    """The process's umask, which outputs' permissions follow (as open() would), read when an output is written: from
    /proc/self/status where the system shows it, else by setting it and setting it back (the only portable way)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def naming_failed_writes(path: str | Path) -> Iterator[None]:
    """Name `path` in a file-system error the block raises without a file name.

    A write() that fails (disk full, a quota, a file system gone read-only) raises an OSError that says why but
    not where; the stage's one line of error (petlab.core.stage) must name the file or folder it could not write."""
    try:
        yield
    except OSError as err:
        if err.errno not in WRITE_ERRNOS or err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from None


# The errors of a write the file system refused (not of a read, which names its own file where it can).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.EFBIG}


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    with naming_failed_writes(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o666 & ~process_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        try:
            yield tmp_path
            try:
                os.replace(tmp_path, path)
            except OSError as err:  # a folder where the file should be: named, not the temporary file
                raise OSError(err.errno, err.strerror, str(path)) from None
        finally:
            tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    # sort_keys + fixed indent: identical runs give byte-identical files.
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    write_text(path, buf.getvalue())


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    import matplotlib.pyplot as plt  # the figure's own module has already chosen the backend (plots.pyplot)

    buf = io.BytesIO()
    # Fixed metadata: matplotlib otherwise stamps the software version/date into the PNG.
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def save_torch(path: str | Path, obj: Any) -> None:
    # Serialised in memory first: torch.save names the archive's inner folder after the file it
    # writes, and the temporary name is random, so saving to it would make every file differ.
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def load_torch(path: str | Path) -> Any:
    """Load a checkpoint or feature file; weights_only refuses pickled code from untrusted files."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: file not found; run the stage that writes it (dvc repro)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or contains non-tensor objects
        raise PipelineError(
            f"{path}: cannot be loaded safely ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder aside and move it into place when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~process_umask())  # mkdtemp makes 0700 folders
    try:
        with naming_failed_writes(path):  # what the block writes into the folder, where no write names its file
            yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stage_outputs(stage: str, dvc_file: str | Path = "dvc.yaml") -> list[Path]:
    """Every path dvc.yaml says `stage` writes (outs, metrics, plots); none if the file or stage is not there.

    `stage` as DVC names it: `evaluate@cnn` is the `cnn` instance of the `foreach` stage `evaluate`, its paths with
    `${key}` (and `${item}` of a list) made `cnn`."""
    import yaml

    group, _, key = stage.partition("@")
    try:
        spec = yaml.safe_load(Path(dvc_file).read_text())["stages"][group]
        if key:
            spec = spec["do"] if key in spec["foreach"] else None
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return []
    entries = [e for kind in ("outs", "metrics", "plots") for e in (spec or {}).get(kind) or []]
    declared = [next(iter(e)) if isinstance(e, dict) else e for e in entries]
    return [Path(p.replace("${key}", key).replace("${item}", key)) for p in declared]


def stage_names(dvc_file: str | Path = "dvc.yaml") -> list[str]:
    """Every stage of a dvc.yaml as DVC names it: a `foreach` stage once per item (`evaluate@cnn`, `evaluate@vit`)."""
    import yaml

    stages = yaml.safe_load(Path(dvc_file).read_text())["stages"]
    return [
        f"{name}@{key}" if "foreach" in spec else name
        for name, spec in stages.items()
        for key in (spec.get("foreach") or [None])
    ]


def timing_file(stage: str) -> Path:
    """Where a stage's wall time goes (petlab.core.stage.run_stage): metrics/timing/<stage>.json, `evaluate@cnn`'s in
    evaluate_cnn.json."""
    return paths.TIMING / f"{stage.replace('@', '_')}.json"


def check_writable(outputs: Iterable[str | Path]) -> None:
    """Refuse to start, naming the path, when an output could not be written: a read-only or full folder,
    or a file where a folder should be. Probes the nearest existing folder and creates nothing that stays."""
    checked: set[Path] = set()
    for path in map(Path, outputs):
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            if folder.is_symlink():  # a dangling link where a folder should be
                raise PipelineError(f"{path}: cannot be written: {folder} is a link to nothing")
            folder = folder.parent
        if folder in checked:
            continue
        checked.add(folder)
        if not folder.is_dir():
            raise PipelineError(f"{path}: cannot be written: {folder} is not a folder")
        try:
            fd, probe = tempfile.mkstemp(prefix=".petlab-write-check.", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise PipelineError(f"{path}: cannot be written: {folder} refuses new files ({err.strerror})") from None


def remove_stale_temporaries(path: Path) -> None:
    """Delete what a killed run (SIGKILL, power loss) left beside `path`, so leftovers never pile up."""
    for stale in [*path.parent.glob(f".{glob.escape(path.name)}.*.tmp"), path.with_name(f".{path.name}.old")]:
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
