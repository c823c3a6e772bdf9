"""Stage study_report of the study (study/pipeline.yaml): reports/study.md, reports/study_figures/ and
metrics/study.json."""

from pathlib import Path

from petlab.core.outputs import write_json, write_text
from petlab.core.params import load_params
from petlab.core.stage import run_stage
from petlab.report.study_report import Study, build
from petlab.study.cells import check_pipeline_copy, machine, timing_path
from stages.report import git_state

DATA = Path("data/oxford_pets")
OUT_DIR = Path("reports")
REPORT = OUT_DIR / "study.md"
FIGURES = OUT_DIR / "study_figures"
METRICS = Path("metrics/study.json")


def main() -> None:
    params = load_params()
    check_pipeline_copy(params.study)
    study = Study.load(params, DATA)
    text, results = build(study, params, FIGURES, OUT_DIR, git_state())
    write_text(REPORT, text)
    write_json(METRICS, results)
    print(f"study_report: {REPORT}")
    for caveat in results["caveats"]:
        print(f"study_report: WARNING: {caveat}")


if __name__ == "__main__":
    run_stage("study_report", main, timing_file=timing_path("study_report"), timing_extra={"machine": machine()})
