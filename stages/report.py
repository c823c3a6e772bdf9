"""Stage report: reports/report.md and its figures, the analysis of this run's metrics, plots and timings."""

import subprocess
from pathlib import Path

from petlab.core.outputs import write_json, write_text
from petlab.core.params import load_params
from petlab.core.stage import run_stage
from petlab.report import document as report_document

OUT_DIR = Path("reports")
REPORT = OUT_DIR / "report.md"
FIGURES = OUT_DIR / "figures"
COMPARISON = Path("metrics/comparison.json")  # probe - CNN with 95% intervals: the comparison as metrics


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


def main() -> None:
    params = load_params()
    run = report_document.Run.load(Path("."), params)
    text, comparison = report_document.build(run, params, OUT_DIR, FIGURES, git_state())
    write_json(COMPARISON, comparison)
    write_text(REPORT, text)
    print(f"report: {REPORT}")


if __name__ == "__main__":
    run_stage("report", main)
