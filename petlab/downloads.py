"""Files that come from outside the project (downloads, archives, supplied weights), checked before use.

- A file with a known checksum is verified; a mismatch is an error, never a warning.
- Archives are extracted with tarfile's 'data' filter: no member may land outside the target
  folder (absolute paths, ../ components, links pointing outside, device files). torchvision's
  own extract_archive calls extractall() without a filter, which on Python < 3.14 trusts the archive.
- Extraction happens in a folder beside the target and is moved in at the end, so a killed
  extraction never leaves a half-filled folder that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from petlab.outputs import naming_failed_writes
from petlab.runtime import PipelineError


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: str | Path, expected: str, what: str, algorithm: str = "sha256") -> None:
    """Raise PipelineError naming `what` (e.g. the param) if the file's digest is not `expected`."""
    actual = file_digest(path, algorithm)
    if actual != expected.lower():
        raise PipelineError(
            f"{what}: {path} has {algorithm} {actual}, expected {expected.lower()}; the file is "
            f"corrupt, incomplete or not the one intended (re-download it, or fix the checksum)"
        )


def download_verified(url: str, folder: str | Path, md5: str) -> Path:
    """Download `url` into `folder` (kept if already there and intact); torchvision checks the MD5."""
    from torchvision.datasets.utils import download_url

    folder = Path(folder)
    path = folder / os.path.basename(url)
    try:
        with naming_failed_writes(path):
            download_url(url, str(folder), md5=md5)  # re-downloads a file whose MD5 is wrong
    except RuntimeError as err:  # torchvision: "File not found or corrupted."
        path.unlink(missing_ok=True)
        raise PipelineError(f"{url}: the download to {path} failed its MD5 check ({err})") from None
    verify_checksum(path, md5, url, algorithm="md5")
    return path


def extract_tar(archive: str | Path, into: str | Path) -> list[Path]:
    """Extract a tar archive into `into`, refusing any member that would be written outside it.

    The top-level entries appear in `into` only once the whole archive is extracted; returns them.
    """
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".tmp", dir=into))
    try:
        with tarfile.open(archive) as tar, naming_failed_writes(into):
            tar.extractall(staging, filter="data")
        entries = sorted(staging.iterdir())
        for entry in entries:
            target = into / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
        return [into / entry.name for entry in entries]
    except tarfile.FilterError as err:
        raise PipelineError(
            f"{archive}: refused to extract, a member would be written outside {into} ({type(err).__name__}: {err})"
        ) from None
    except tarfile.TarError as err:
        raise PipelineError(f"{archive}: not a readable tar archive ({err})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
