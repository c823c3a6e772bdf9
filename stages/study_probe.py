"""Stages probe_tune@SIZE and probe@SEED-SIZE of the study (study/pipeline.yaml): the L-BFGS linear probe on one
seeded subset of the cached features (petlab/study/probe.py says how it is tuned and drawn).

    python -m stages.study_probe tune IMAGES_PER_CLASS|all   # every C of study.probe_c_grid at the first seed
    python -m stages.study_probe SEED IMAGES_PER_CLASS|all   # the C its size's tuning kept
"""

import sys

from petlab.core.errors import PipelineError
from petlab.core.outputs import check_writable, write_json
from petlab.core.params import load_params
from petlab.core.runtime import share_cpu
from petlab.study.cells import cell_path, parse_cell, probe_tune_path, run_cell
from petlab.study.probe import fit_cell, summary_line


def main(seed: int, size, tune: bool = False) -> None:
    out = probe_tune_path(size) if tune else cell_path("probe", seed, size)
    check_writable([out])
    params = load_params()
    share_cpu()
    record = fit_cell(seed, size, tune, params)
    write_json(out, record)
    print(summary_line(record, size, out))


if __name__ == "__main__":
    try:
        if sys.argv[1:2] == ["tune"] and len(sys.argv) == 3:
            tune_size = parse_cell("probe", ["0", sys.argv[2]])[1]
        else:
            tune_size = None
            cell_seed, cell_size = parse_cell("probe", sys.argv[1:])
    except PipelineError as err:
        sys.exit(f"study_probe: error: {err}; or: python -m stages.study_probe tune IMAGES_PER_CLASS")
    if tune_size is not None:
        run_cell(
            f"probe_tune@{tune_size}", {"kind": "probe_tune", "size": str(tune_size)}, lambda: main(0, tune_size, True)
        )
    else:
        run_cell(
            f"probe@{cell_seed}-{cell_size}",
            {"kind": "probe", "size": str(cell_size), "seed": cell_seed},
            lambda: main(cell_seed, cell_size),
        )
