"""Stage report: reports/report.md and its figures, the analysis of this run's metrics, plots and timings."""

from pathlib import Path

from petlab.core import paths
from petlab.core.outputs import write_json, write_text
from petlab.core.params import load_params
from petlab.core.stage import run_stage
from petlab.report import document
from petlab.report.provenance import git_state


def main() -> None:
    params = load_params()
    run = document.Run.load(Path("."), params)
    text, comparison = document.build(run, params, paths.REPORTS, paths.REPORTS / "figures", git_state())
    write_json(paths.COMPARISON, comparison)
    write_text(paths.REPORTS / "report.md", text)
    print(f"report: {paths.REPORTS / 'report.md'}")


if __name__ == "__main__":
    run_stage("report", main)
