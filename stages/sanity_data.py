"""Stage sanity_data: data checks (counts, decoding, leaks, sizes) and the overfit-a-few-batches check
(petlab/sanity/)."""

from petlab.core import paths
from petlab.core.errors import PipelineError
from petlab.core.outputs import write_json
from petlab.core.stage import run_stage
from petlab.figures import plots
from petlab.sanity.checks import metrics_summary
from petlab.sanity.report import sanity_report
from petlab.train.run import setup_stage


def main() -> None:
    params, data = setup_stage(paths.DATA)
    report = sanity_report(params, data, paths.BACKBONE, paths.SANITY_LOGS)
    write_json(paths.SANITY_PLOTS / "report.json", report)  # everything, lists of files included
    write_json(paths.SANITY_METRICS, metrics_summary(report))  # the scalars worth comparing
    plots.save_sanity_figures(report, data, params.sanity.grid_images, params.seed, paths.SANITY_PLOTS)
    if report["failures"]:
        raise PipelineError("sanity checks failed:\n  - " + "\n  - ".join(report["failures"]))
    # Unchanged content when the checks pass again, so DVC re-runs no training for a sanity-only change.
    write_json(paths.SANITY_PASSED, {"passed": True})
    print(
        f"sanity_data: all checks passed; CNN overfit in {report['overfit_cnn']['steps_to_100pct']} steps, "
        f"probe head in {report['overfit_probe']['steps_to_100pct']} steps"
    )


if __name__ == "__main__":
    run_stage("sanity_data", main, live_dirs=[paths.SANITY_LOGS])
