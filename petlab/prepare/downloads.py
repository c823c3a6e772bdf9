"""Downloading a dataset's archive with its published checksum, and unpacking it."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from petlab.core.checksums import verify_checksum
from petlab.core.errors import PipelineError
from petlab.core.outputs import naming_failed_writes


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
