"""A file's digest, and the check that it is the file it should be."""

from __future__ import annotations

import hashlib
from pathlib import Path

from petlab.core.errors import PipelineError


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
