"""Stages cnn_tune@SIZE-LR-WD, cnn@SEED-SIZE and cnn_long@SEED-SIZE of the study (study/pipeline.yaml): the CNN from
scratch on one seeded subset; one JSON each with what the report needs (petlab/study/cnn.py says how).

    python -m stages.study_cnn tune IMAGES_PER_CLASS LR WEIGHT_DECAY   # one recipe of study.cnn_grid, first seed
    python -m stages.study_cnn SEED IMAGES_PER_CLASS                   # the recipe its size's tuning kept
    python -m stages.study_cnn long SEED IMAGES_PER_CLASS              # the same, twice the steps

One process per cell: cells run side by side, not as ranks.
"""

import sys

from petlab.core import paths
from petlab.core.errors import PipelineError
from petlab.core.outputs import check_writable, write_json
from petlab.study.cells import run_cell
from petlab.study.cnn import Cell, parse, summary_line, train_cell
from petlab.train.run import setup_stage


def main(cell: Cell) -> None:
    check_writable([cell.path])
    params, data = setup_stage(paths.DATA)
    record, resume = train_cell(cell, params, data)
    write_json(cell.path, record)
    resume.remove()  # the outputs are written: nothing is left to resume
    print(summary_line(cell, record))


if __name__ == "__main__":
    try:
        parsed = parse(sys.argv[1:])
    except PipelineError as err:
        sys.exit(f"study_cnn: error: {err}")
    run_cell(parsed.stage, parsed.record, lambda: main(parsed))
