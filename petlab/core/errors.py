"""What a stage reports to its user as one line, and reading a file so that it does."""

from __future__ import annotations

from pathlib import Path


class PipelineError(Exception):
    """An error the user can fix; printed as one line, without a traceback."""


def read_text(path: str | Path) -> str:
    """A user's text file (params, label files) as UTF-8; other bytes are an error naming file:line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PipelineError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PipelineError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); save the file as UTF-8"
        ) from None
