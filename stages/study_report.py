"""Stage study_report of the study (study/pipeline.yaml): reports/study.md, reports/study_figures/ and
metrics/study.json."""

from petlab.core import paths
from petlab.core.outputs import write_json, write_text
from petlab.core.params import load_params
from petlab.core.stage import run_stage
from petlab.report.provenance import git_state
from petlab.report.study_report import Study, build
from petlab.study.cells import check_pipeline_copy, machine, timing_path


def main() -> None:
    params = load_params()
    check_pipeline_copy(params.study)
    study = Study.load(params, paths.DATA)
    text, results = build(study, params, paths.REPORTS / "study_figures", paths.REPORTS, git_state())
    write_text(paths.REPORTS / "study.md", text)
    write_json(paths.STUDY_METRICS, results)
    print(f"study_report: {paths.REPORTS / 'study.md'}")
    for caveat in results["caveats"]:
        print(f"study_report: WARNING: {caveat}")


if __name__ == "__main__":
    run_stage("study_report", main, timing_file=timing_path("study_report"), timing_extra={"machine": machine()})
