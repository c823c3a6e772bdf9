"""Where a report's numbers came from: the commit of the code that made them."""

from __future__ import annotations

import subprocess


def git_state() -> str:
    """The commit the code came from and whether tracked files differ from it; cheap, and optional."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return f"git commit {commit}" + (" with uncommitted changes (e.g. `dvc exp run -S` params)" if changed else "")
