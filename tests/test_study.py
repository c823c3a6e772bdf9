"""The study: its subsets, the CNN's budget and recipe, where a cell stands, its report's rules, and the study end to
end under DVC (added by a copy, cells that resume, queue workers, a DVC remote)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, dvc, run

from petlab.core.errors import PipelineError
from petlab.core.params import StudyParams, TrainCNNParams
from petlab.core.stage import run_stage
from petlab.data.dataset import draw_subset
from petlab.study.cells import (
    cell_count,
    cnn_budget,
    decode_predictions,
    doubled,
    encode_predictions,
    parse_cell,
    progress_line,
    steps_per_epoch,
    val_size,
)

# ---------------------------------------------------------------- subsets

LABELS = [0] * 12 + [1] * 7 + [2] * 20  # classes of different sizes, in the train split's order


def test_subsets_are_stratified_nested_and_seeded():
    for seed in (0, 1):
        subsets = {n: draw_subset(LABELS, n, seed) for n in (1, 3, 5, 10, "all")}
        for n, chosen in subsets.items():
            counts = np.bincount(np.array(LABELS)[chosen], minlength=3).tolist()
            assert counts == ([12, 7, 20] if n == "all" else [min(n, 12), min(n, 7), min(n, 20)])  # a small class: all
            assert chosen == sorted(set(chosen))
        for small, large in [(1, 3), (3, 5), (5, 10), (10, "all")]:
            assert set(subsets[small]) <= set(subsets[large])  # each smaller one inside the larger
    assert draw_subset(LABELS, 5, 0) == draw_subset(LABELS, 5, 0)  # seeded: the same draw again
    assert draw_subset(LABELS, 5, 0) != draw_subset(LABELS, 5, 1)  # another seed, another subset
    assert draw_subset(LABELS, "all", 0) == draw_subset(LABELS, "all", 1) == list(range(len(LABELS)))


def test_a_class_draw_does_not_depend_on_the_other_classes():
    alone = draw_subset([0] * 12, 4, 3)
    assert [i for i in draw_subset(LABELS, 4, 3) if LABELS[i] == 0] == alone


def test_cell_arguments():
    assert parse_cell("cnn", ["3", "25"]) == (3, 25)
    assert parse_cell("probe", ["0", "all"]) == (0, "all")
    for bad in (["3"], ["x", "5"], ["1", "0"], ["1", "All"], ["1", "5", "6"]):
        with pytest.raises(PipelineError, match="usage: python -m stages.study_cnn SEED IMAGES_PER_CLASS"):
            parse_cell("cnn", bad)


@pytest.mark.parametrize(
    "study, message",
    [
        ({"images_per_class": [5, "al"]}, r"study\.images_per_class\[1\] must be an integer or 'all', got 'al'"),
        ({"images_per_class": [2.5]}, r"study\.images_per_class\[0\] must be an integer or 'all', got 2\.5"),
        ({"images_per_class": [5, 5]}, r"study\.images_per_class = \[5, 5\] is out of range"),
        ({"images_per_class": [0, "all"]}, r"study\.images_per_class = \[0, 'all'\] is out of range"),
        ({"seeds": []}, r"study\.seeds = \[\] is out of range"),
        ({"seeds": [1, 1]}, r"study\.seeds = \[1, 1\] is out of range"),
        ({"min_steps": -1}, r"study\.min_steps = -1 is out of range"),
        ({"val_per_class": 0}, r"study\.val_per_class = 0 is out of range"),
        ({"val_per_class": "half"}, r"study\.val_per_class must be an integer or 'scaled' or 'all', got 'half'"),
        ({"cnn_grid": {"lr": []}}, r"study\.cnn_grid\.lr = \[\] is out of range"),
        ({"cnn_grid": {"weight_decay": [0.1, 0.1]}}, r"study\.cnn_grid\.weight_decay = \[0\.1, 0\.1\] is out of range"),
        ({"probe_c_grid": [0.0, 1.0]}, r"study\.probe_c_grid = \[0\.0, 1\.0\] is out of range"),
    ],
)
def test_study_params_are_checked_by_the_schema(study, message):
    from petlab.core.params import ParamsError, parse_params

    with pytest.raises(ParamsError, match=message):
        parse_params({"study": study})
    assert parse_params({"study": {"images_per_class": [3, "all"]}}).study.images_per_class == [3, "all"]


def test_cell_stages_refuse_in_one_line(tmp_path):
    """A bad command line or a probe route the study does not run: one line, exit 1, nothing written."""
    from test_stage_refusals import light_project

    project = light_project(tmp_path / "project", {"train_vit": {"solver": "sgd"}})
    for module, args, message in [
        (
            "study_cnn",
            ["0", "five"],
            "study_cnn: error: usage: python -m stages.study_cnn SEED IMAGES_PER_CLASS | "
            "tune IMAGES_PER_CLASS LR WEIGHT_DECAY | long SEED IMAGES_PER_CLASS; got 0 five",
        ),
        ("study_cnn", ["tune", "5", "fast", "0"], "study_cnn: error: usage: "),
        (
            "study_probe",
            ["1", "5"],
            "study/probe@1-5: error: the study's probe is the L-BFGS linear probe on cached features",
        ),
    ]:
        proc = run([sys.executable, "-m", f"stages.{module}", *args], project, check=False)
        assert proc.returncode == 1 and proc.stderr.strip().startswith(message), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (project / "study").exists() and not (project / "metrics").exists()


STALE_PIPELINE = (
    "{stage}: error: study/dvc.yaml is not the study's pipeline for this code and params.yaml's study "
    "grid (a copy from an older version, or the grid changed since); write it again: python -m petlab.study"
)
# Every key the study's matrices expand (DVC, before any stage runs), and values DVC could not expand or the schema
# refuses: a string, a scalar where a list is expected, a nested list, null, an empty list.
GRID_KEYS = ("seeds", "images_per_class", "cnn_grid.lr", "cnn_grid.weight_decay")
BAD_GRID_VALUES = {"string": "0,1", "scalar": 3, "nested": [[0, 1]], "null": None, "empty": []}


def study_project(root: Path, study: dict) -> Path:
    """What `python -m petlab.study` reads: the template and a params.yaml with `study` updated (dotted keys)."""
    (root / "study").mkdir(parents=True)
    shutil.copy2(REPO / "study/pipeline.yaml", root / "study/pipeline.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in study.items():
        *parents, last = key.split(".")
        section = params["study"]
        for name in parents:
            section = section[name]
        section[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.mark.parametrize("key", GRID_KEYS)
@pytest.mark.parametrize("kind", BAD_GRID_VALUES)
def test_a_grid_value_dvc_cannot_expand_is_refused_naming_the_key(tmp_path, monkeypatch, capsys, key, kind):
    from petlab.study.cells import write_pipeline

    monkeypatch.chdir(study_project(tmp_path, {key: BAD_GRID_VALUES[kind]}))
    with pytest.raises(SystemExit) as exit_:
        run_stage("study", write_pipeline, record_time=False)
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and len(err.splitlines()) == 1, err
    assert re.match(rf"study: error: (params\.yaml: )?study\.{re.escape(key)}(\[0\])? ", err), err
    assert not (tmp_path / "study/dvc.yaml").exists() and not (tmp_path / "metrics").exists()


def test_the_written_pipeline_expands_the_checked_grid_and_goes_stale_with_it(tmp_path, monkeypatch, capsys):
    from petlab.core.params import load_params
    from petlab.study.cells import check_pipeline_copy, pipeline_text, write_pipeline

    monkeypatch.chdir(
        study_project(
            tmp_path,
            {
                "seeds": [3, 7],
                "images_per_class": [5, "all"],
                "cnn_grid.lr": [1e-3, 0.01],
                "cnn_grid.weight_decay": [0.0],
            },
        )
    )
    run_stage("study", write_pipeline, record_time=False)
    assert capsys.readouterr().out == (
        "wrote study/dvc.yaml: 2 seeds x 2 sizes, 18 cells; run it with: dvc repro study/dvc.yaml\n"
    )
    written = yaml.safe_load((tmp_path / "study/dvc.yaml").read_text())
    assert written["vars"] == [
        {
            "study": {
                "seeds": [3, 7],
                "images_per_class": [5, "all"],
                "cnn_grid": {"lr": [0.001, 0.01], "weight_decay": [0.0]},
            }
        }
    ]
    template = yaml.safe_load((REPO / "study/pipeline.yaml").read_text())
    assert {k: v for k, v in written.items() if k != "vars"} == {k: v for k, v in template.items() if k != "vars"}
    study = load_params().study
    check_pipeline_copy(study)  # as written: accepted
    assert not list(tmp_path.glob("metrics"))
    with pytest.raises(PipelineError, match=re.escape(STALE_PIPELINE.split("error: ")[1])):
        check_pipeline_copy(StudyParams(**{**study.__dict__, "seeds": [3, 7, 8]}))  # the grid changed since
    assert pipeline_text(study) == (tmp_path / "study/dvc.yaml").read_text()


def test_a_bad_study_param_breaks_no_dvc_command(tmp_path):
    """With the study added, a grid value DVC could not expand stops neither the main pipeline's `dvc status` nor
    DVC's reading of the study; `dvc repro` of either pipeline, and `dvc exp run -S` of one, stop at their first
    stage in one line naming the key."""
    from conftest import make_project

    project = make_project(tmp_path / "project", {})
    run([sys.executable, "-m", "petlab.study"], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["study"]["seeds"] = "0,1"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert dvc(project, "status").returncode == 0
    assert dvc(project, "stage", "list", "study/dvc.yaml").stdout.count("study/dvc.yaml:cnn@") == 25
    for command, value in (
        (["repro"], "'0,1'"),
        (["repro", "study/dvc.yaml"], "'0,1'"),
        (["exp", "run", "-S", "study.seeds=3", "study/dvc.yaml"], "3"),
    ):
        proc = dvc(project, *command, check=False)
        assert proc.returncode != 0 and "unexpected error" not in proc.stderr, proc.stderr
        assert re.search(rf"^\w+: error: params\.yaml: study\.seeds must be a list, got {value}$", proc.stderr, re.M), (
            proc.stderr
        )
        assert "Traceback" not in proc.stdout + proc.stderr


def test_predictions_round_trip():
    assert decode_predictions(encode_predictions([3, 0, 12])).tolist() == [3, 0, 12]


# ---------------------------------------------------------------- the CNN's budget


def test_budget_floors_the_steps_and_scales_the_warmup():
    optim = TrainCNNParams(epochs=30, batch_size=64, warmup_epochs=1.0)
    assert steps_per_epoch(177, 64) == 2 and steps_per_epoch(40, 64) == 1 and steps_per_epoch(128, 64) == 2
    small = cnn_budget(optim, 177, 1000)  # the case: 2 steps an epoch
    assert small.epochs == 500 and small.warmup_epochs == pytest.approx(500 / 30)
    assert small.epochs * steps_per_epoch(177, 64) >= 1000
    assert (small.lr, small.batch_size, small.weight_decay) == (optim.lr, optim.batch_size, optim.weight_decay)
    full = cnn_budget(optim, 2944, 1000)  # 46 steps x 30 epochs already exceed the floor: the main recipe
    assert full == optim
    assert cnn_budget(optim, 177, 0) == optim
    assert cnn_budget(optim, 640, 301).epochs == 31  # ceil(301 / 10)


def test_the_budget_check_doubles_the_steps_and_the_warmup():
    optim = TrainCNNParams(epochs=30, batch_size=64, warmup_epochs=1.0)
    long = doubled(cnn_budget(optim, 177, 1000))
    assert (long.epochs, long.warmup_epochs) == (1000, pytest.approx(1000 / 30))
    assert (long.lr, long.batch_size) == (optim.lr, optim.batch_size)


def test_selection_images_are_drawn_in_the_splits_own_ratio_unless_fixed():
    scaled = StudyParams()
    assert [val_size(n, scaled, 0.2) for n in (5, 10, 25, 50, "all")] == [2, 3, 7, 13, "all"]  # ceil(n / 4)
    assert val_size(5, StudyParams(val_per_class="all"), 0.2) == "all"
    assert val_size(5, StudyParams(val_per_class=20), 0.2) == 20


def test_a_cell_says_where_the_study_stands(tmp_path, monkeypatch):
    """Which cells are done, and the time left from the cells finished on this machine (of the same kind and size
    where there are some, else of the same kind)."""
    from petlab.study import cells as study

    monkeypatch.chdir(tmp_path)
    params = StudyParams(seeds=[0, 1], images_per_class=[5, "all"])
    assert cell_count(params) == 2 * (6 + 1 + 3 * 2)
    assert "0 of 26 cells done; time left: no estimate yet" in progress_line(
        {"kind": "cnn", "size": "5", "seed": 0}, params
    )
    (tmp_path / "study/timing").mkdir(parents=True)
    here, elsewhere = study.machine(), "another machine"
    for name, cell, seconds, where in [
        ("cnn-0-5", {"kind": "cnn", "size": "5", "seed": 0}, 60.0, here),
        ("cnn-1-5", {"kind": "cnn", "size": "5", "seed": 1}, 600.0, elsewhere),
        ("probe-0-5", {"kind": "probe", "size": "5", "seed": 0}, 6.0, here),
        ("cnn-7-5", {"kind": "cnn", "size": "5", "seed": 7}, 6.0, here),
    ]:  # not this study
        (tmp_path / f"study/timing/{name}.json").write_text(
            json.dumps({"seconds": seconds, "machine": where, "cell": cell})
        )
    line = progress_line({"kind": "cnn", "size": "all", "seed": 0}, params)
    # Left: 12 CNN and 2 probe tuning cells and 4 budget checks (untimed), cnn at all x 2 (60 s each: its kind at
    # another size), probe 1 at 5 (6 s) and 2 at all (6 s each): 120 + 18 = 138 s.
    assert line.startswith("study: kind cnn, size all, seed 0: 3 of 26 cells done; about 2 min left")
    assert "by 2 cells finished here, besides 18 cells of a kind not yet timed here" in line


# ---------------------------------------------------------------- end to end under DVC

STUDY = {
    "seeds": [0, 1],
    "images_per_class": [2, "all"],
    "min_steps": 8,
    "cnn_grid": {"lr": [0.003], "weight_decay": [0.005, 0.05]},
    "probe_c_grid": [0.1, 1.0],
}
SIZES = ("2", "all")
CELLS = {
    f"study/dvc.yaml:{cell}"
    for cell in [f"cnn_tune@{n}-0.003-{wd}" for n in SIZES for wd in ("0.005", "0.05")]
    + [f"{model}@{seed}-{n}" for model in ("cnn", "probe") for seed in (0, 1) for n in SIZES]
    + [f"cnn_long@{seed}-{n}" for seed in (0, 1) for n in SIZES]
    + [f"probe_tune@{n}" for n in SIZES]
}


def ran_stages(proc) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", proc.stdout + proc.stderr)


def add_study(project: Path) -> None:
    """The study added as a user adds it (a 2 seeds x 2 sizes ladder in params.yaml, then `python -m petlab.study`),
    and a local folder as the shared remote; committed."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["study"].update(STUDY)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "-m", "petlab.study"], project)
    dvc(project, "remote", "add", "-d", "shared", str(project.parent / "remote"))
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "study"], project)


def wait_for_queue(project: Path, deadline: float) -> str:
    while re.search(r"\b(Queued|Running)\b", status := dvc(project, "queue", "status").stdout):
        assert time.monotonic() < deadline, status
        time.sleep(3)  # each `dvc queue status` takes about a second of CPU from the workers
    return status


def start_queue(project: Path, workers: int) -> None:
    # The workers outlive `dvc queue start`; holding its output open would wait for them.
    subprocess.run(
        ["env", f"PETLAB_JOBS={workers}", sys.executable, "-m", "dvc", "queue", "start", "-j", str(workers)],
        cwd=project,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )


def cell_process(args: str) -> int | None:
    found = subprocess.run(["pgrep", "-f", f"stages.study_cnn {args}$"], capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def interrupt_cell(project: Path, sig: signal.Signals, stage: str) -> str:
    """Run one cell again (dvc repro --force), and signal its process group (as Ctrl-C does) during its epoch 2."""
    from test_runtime import start_as_in_a_terminal

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1"}
    proc = start_as_in_a_terminal(
        [sys.executable, "-m", "dvc", "repro", "--force", "--single-item", f"study/dvc.yaml:{stage}"],
        project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines, signalled = [], False
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"{stage}: epoch 1/"):
            signalled = proc.poll() is None
            os.killpg(proc.pid, sig)
            break
    lines.append(proc.stdout.read())
    assert proc.wait(timeout=60) != 0 and signalled, "".join(lines)
    return "".join(lines)


def forget_cell(project: Path, stage: str) -> None:
    """Drop a cell's record from study/dvc.lock and DVC's run cache: DVC then runs it, as it does a cell that never
    finished (a forced re-run that stops leaves both, and DVC restores the cell from them instead)."""
    lock = yaml.safe_load((project / "study/dvc.lock").read_text())
    del lock["stages"][stage]
    (project / "study/dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    shutil.rmtree(project / ".dvc/cache/runs")


def test_study_end_to_end(tiny_project):
    project = tiny_project
    add_study(project)
    deadline = time.monotonic() + 1500

    # The tuning cells here (with what they need of the main pipeline), then two CNN cells trained by two queue
    # workers, each in a workspace of its own, and a third worker's cell killed while it runs.
    tuned = ran_stages(dvc(project, "repro", "study/dvc.yaml:cnn_tune"))
    assert {s for s in tuned if s.startswith("study/")} == {s for s in CELLS if ":cnn_tune@" in s}
    for cell in ("cnn@0-all", "cnn@0-2", "cnn@1-2"):  # in this order: the third starts when the first is killed
        dvc(project, "exp", "run", "--queue", f"study/dvc.yaml:{cell}")
    start_queue(project, 2)
    while (pid := cell_process("0 all")) is None:  # the first cell has started, in its worker's workspace
        assert time.monotonic() < deadline, dvc(project, "queue", "status").stdout
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    status = wait_for_queue(project, deadline)
    assert status.count("Success") == 2 and status.count("Failed") == 1, status

    # The whole study here: the workers' cells restored from the run cache, not trained again; the killed one run
    # from its first epoch; every other cell run once.
    full = dvc(project, "repro", "study/dvc.yaml")
    text, ran = full.stdout + full.stderr, ran_stages(full)
    for cell in ("cnn@0-2", "cnn@1-2"):
        assert f"Stage 'study/dvc.yaml:{cell}' is cached - skipping run" in text and f"study/dvc.yaml:{cell}" not in ran
    assert "study/dvc.yaml:cnn@0-all" in ran and "resumed after epoch" not in text
    assert set(ran) >= CELLS - {"study/dvc.yaml:cnn@0-2", "study/dvc.yaml:cnn@1-2"} - {
        s for s in CELLS if ":cnn_tune@" in s
    } | {"study/dvc.yaml:study_report"}
    assert ran.count("study/dvc.yaml:study_features") == 1  # one feature extraction serves every probe cell
    assert re.search(r"study: kind probe, size all, seed 1: \d+ of 18 cells done; about \d+ min left", text)
    check_cells(project)
    check_report(project)

    # Nothing changed: nothing would run again.
    assert ran_stages(dvc(project, "repro", "--dry", "study/dvc.yaml")) == []

    # A CNN cell stopped during epoch 2, by Ctrl-C and by SIGKILL: the next `dvc repro study/dvc.yaml` continues
    # after epoch 1, and the cell's file is the uninterrupted one's, byte for byte.
    uninterrupted = (project / "study/cells/cnn/0-all.json").read_bytes()
    for sig in (signal.SIGINT, signal.SIGKILL):
        output = interrupt_cell(project, sig, "cnn@0-all")
        assert "Traceback" not in output
        forget_cell(project, "cnn@0-all")  # as if this had been the cell's first run, which nothing can restore
        resumed = dvc(project, "repro", "study/dvc.yaml:cnn@0-all")
        assert "cnn@0-all: resumed after epoch 1 (resume/study/cnn@0-all.pt)" in resumed.stdout, resumed.stdout
        assert "cnn@0-all: epoch 1/" not in resumed.stdout
        assert (project / "study/cells/cnn/0-all.json").read_bytes() == uninterrupted
        assert not (project / "resume").exists()

    # A CNN param changed: the CNN's cells would run (its tuning, seeds and budget checks), nothing of the probe.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train_cnn"]["dropout"] = 0.2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = set(ran_stages(dvc(project, "repro", "--dry", "study/dvc.yaml")))
    assert changed - {"backbone_weights", "study/dvc.yaml:study_report"} == {s for s in CELLS if ":cnn" in s}
    # An older copy of the study's pipeline is refused, in one line, before any work.
    (project / "study/dvc.yaml").write_text((project / "study/dvc.yaml").read_text() + "\n# edited\n")
    refused = run([sys.executable, "-m", "stages.study_report"], project, check=False)
    assert refused.returncode == 1 and refused.stderr.strip() == STALE_PIPELINE.format(stage="study_report")


def test_every_cell_output_is_cached_so_a_remote_carries_it():
    """`dvc push --run-cache` pushes no object of a `cache: false` output: a cell with one could not be restored on
    another machine, and would run again there. No cell declares metrics (`dvc metrics show` would list them all):
    the report's metrics/study.json is the study's one metrics file."""
    stages = yaml.safe_load((REPO / "study/pipeline.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if name == "study_report":
            assert [next(iter(m)) for m in stage["metrics"]] == ["metrics/study.json"]
            continue
        assert "metrics" not in stage and "plots" not in stage, name
        assert all(isinstance(out, str) for out in stage["outs"]), name  # no `cache: false`


def check_cells(project: Path) -> None:
    cells = {
        (m, s, n): json.loads((project / f"study/cells/{m}/{s}-{n}.json").read_text())
        for m in ("cnn", "probe")
        for s in (0, 1)
        for n in (2, "all")
    }
    for (m, s, n), cell in cells.items():
        assert (cell["model"], cell["seed"], cell["images_per_class"]) == (m, s, n)
        assert cell["train_images"] == (8 if n == 2 else 36)  # 2 of each of 4 classes; all 9 of each
        assert cell["val_images"] == (4 if n == 2 else 12)  # ceil(2 x 0.25 / 0.75) = 1 of each; all 3 of each
        assert (cell["subset"], cell["val_subset"]) == (cells["cnn", s, n]["subset"], cells["cnn", s, n]["val_subset"])
        assert len(decode_predictions(cell["test_predicted"])) == 20
        assert "top5_accuracy" not in cell["test"]  # 4 classes: top-5 says nothing
        predicted = decode_predictions(cell["test_predicted"])
        labels = np.repeat(np.arange(4), 5)  # the test split's order: class, then file name
        assert cell["test"]["accuracy"] == pytest.approx((predicted == labels).mean())
        # 20 test images: too few to fit a temperature on (150 a half), so none is, and the cell says why.
        assert 0 <= cell["calibration"]["test"]["ece"] <= 1 and cell["calibration"]["temperature"] is None
        assert cell["calibration"]["scaling"].startswith("too few images")
    assert cells["cnn", 0, 2]["subset"] != cells["cnn", 1, 2]["subset"]  # another seed, another subset
    assert cells["cnn", 0, "all"]["subset"] == cells["cnn", 1, "all"]["subset"]
    small, full = cells["cnn", 0, 2], cells["cnn", 0, "all"]
    # The floor of 8 steps: 8 images at batch 8 take 1 step an epoch, so 8 epochs; all 36 take 4, so 3 epochs do.
    assert (small["epochs"], small["steps"], small["last_epoch"]) == (8, 8, 8)
    assert (full["epochs"], full["steps"]) == (3, 12)
    assert small["compute"]["train_images_per_epoch"] == 8 and full["compute"]["train_images_per_epoch"] == 32
    # The recipe kept at each size: the better of the two tuning cells on the selection images, at every seed.
    recipe = small["recipe"]
    assert [t["weight_decay"] for t in recipe["tried"]] == [0.005, 0.05]
    best = max(recipe["tried"], key=lambda t: (t["val_macro_f1"], -t["val_loss"]))
    assert (
        (small["lr"], small["weight_decay"])
        == (best["lr"], best["weight_decay"])
        == (cells["cnn", 1, 2]["lr"], cells["cnn", 1, 2]["weight_decay"])
    )
    long = json.loads((project / "study/cells/cnn_long/1-2.json").read_text())
    assert (long["seed"], long["epochs"], long["steps"]) == (1, 16, 16)  # twice the steps
    assert long["subset"] == cells["cnn", 1, 2]["subset"]  # paired with the same seed's cell
    # The probe's C: chosen once per size at the first seed, kept at every seed.
    tuned = json.loads((project / "study/cells/probe_tune/2.json").read_text())
    assert tuned["seed"] == 0 and tuned["c_grid"] == [0.1, 1.0] and "test" not in tuned
    assert cells["probe", 0, 2]["selected_c"] == cells["probe", 1, 2]["selected_c"] == tuned["selected_c"]
    # Each test image's NLL and Brier, for the paired intervals of the proper scores.
    assert len(cells["cnn", 0, 2]["test_nll"].split()) == len(cells["probe", 1, 2]["test_brier"].split()) == 20
    tune = json.loads((project / "study/cells/cnn_tune/2/0.003-0.05.json").read_text())
    assert "test" not in tune and "test_predicted" not in tune  # a tuning cell is chosen on selection images alone
    timing = json.loads((project / "study/timing/cnn-0-2.json").read_text())
    assert timing["cell"] == {"kind": "cnn", "size": "2", "seed": 0} and timing["seconds"] > 0


def check_report(project: Path) -> None:
    text = (project / "reports/study.md").read_text()
    for needed in (
        "random backbone weights",
        "generated images",
        "stand-in backbone",
        "## Learning curves",
        "## What the study could detect",
        "## Tuning: both models alike",
        "The budget check",
        "## Generalisation: on images no choice saw",
        "## Training compute, tuning charged to both",
        "## What a seed changes",
        "2 (2 + 1)",
        "all (9 + 3)",
    ):
        assert needed in text, needed
    for png in ("learning_curves.png", "difference.png", "calibration.png", "class_gains.png", "compute.png"):
        assert (project / "reports/study_figures" / png).stat().st_size > 1000
    summary = json.loads((project / "metrics/study.json").read_text())
    assert set(summary["sizes"]) == {"2", "all"} and summary["seeds"] == [0, 1]
    for entry in summary["sizes"].values():
        estimate, low, high = entry["probe_minus_cnn_macro_f1"]
        assert low <= estimate <= high
        assert entry["verdict_macro_f1"] in ("probe", "cnn", "undecided")
        assert (
            entry["probe_wins_macro_f1"]["of"] == 2
            and entry["budget_check"]["long_steps"] == 2 * entry["budget_check"]["steps"]
        )
        assert entry["budget_check"]["verdict"] in ("trained enough", "under-trained", "inconclusive")
        assert entry["interval_level_macro_f1"] == 0.975 and entry["interval_level_accuracy"] == 0.95
        assert entry["calibration"]["verdict_nll"] in ("probe", "cnn", "undecided")
    assert summary["family"] == {"sizes": 2, "level_each": 0.975, "family_level": 0.95}


def crafted_study(probe_accuracy: dict, cnn_accuracy: dict, seeds=(0, 1, 2)):
    """A Study of seeds x sizes 5 and all on 4 classes x 25 test images, each cell right on about the given share."""
    from petlab.report.study_report import Study

    labels = np.repeat(np.arange(4), 25)
    rng = np.random.default_rng(0)
    cells = {}
    for model, accuracy in (("probe", probe_accuracy), ("cnn", cnn_accuracy)):
        for size, share in accuracy.items():
            for seed in seeds:
                right = rng.random(100) < share
                preds = np.where(right, labels, (labels + 1) % 4)
                cells[model, seed, size] = {
                    "subset": f"{seed}-{size}",
                    "val_subset": f"{seed}-{size}",
                    "train_images": 20 if size == 5 else 40,
                    "val_images": 8 if size == 5 else 12,
                    "test_predicted": encode_predictions(preds),
                    "test": {"accuracy": float(right.mean()), "macro_f1": 0.0},
                }
    return Study(
        list(seeds),
        [5, "all"],
        cells,
        {},
        {},
        labels,
        ["a", "b", "c", "d"],
        {"source": "oxford_pets"},
        {"timm_model": "vit_tiny_patch16_224", "pretrained": True, "seconds": {}, "images": {}},
    )


def test_conclusions_follow_the_intervals_and_flip_with_the_numbers():
    from petlab.report.study_report import comparisons, conclusions

    study = crafted_study({5: 0.9, "all": 0.6}, {5: 0.4, "all": 0.6})
    sentences = conclusions(study, comparisons(study))
    assert sentences[0].startswith(
        "At 5 training images per class (5 training and 2 selection images per class), "
        "the probe is better: probe - CNN +"
    )
    assert sentences[1].startswith("With all training images (10 training and 3 selection images per class)")
    assert ", no conclusion: " in sentences[1] and "does not exclude a tie" in sentences[1]
    flipped = crafted_study({5: 0.4, "all": 0.6}, {5: 0.9, "all": 0.6})
    assert conclusions(flipped, comparisons(flipped))[0].startswith(
        "At 5 training images per class (5 training and 2 selection images per class), the CNN is better: probe - CNN -"
    )


def test_the_budget_sentences_never_read_an_inconclusive_check_as_trained_enough():
    from petlab.report.study_report import budget_sentences

    study = crafted_study({5: 0.9, "all": 0.6}, {5: 0.4, "all": 0.6})
    budget = {
        5: {"verdict": "inconclusive", "tolerance": 0.02},
        "all": {"verdict": "trained enough", "tolerance": 0.02},
    }
    sentences = budget_sentences(study, budget)
    assert sentences[0].startswith("Trained enough at all training images per class")
    assert (
        sentences[1].startswith("Inconclusive at 5 training images per class")
        and "may be under-trained" in sentences[1]
    )
    budget[5]["verdict"] = "under-trained"
    assert any(s.startswith("Under-trained at 5") for s in budget_sentences(study, budget))


def test_a_size_no_class_holds_is_the_larger_subset_not_a_point_of_its_own(tmp_path, monkeypatch):
    """Every class with fewer than 10 training images: "10 per class" is the subset "all" again, and becomes no
    point of the curves and no conclusion of its own."""
    from petlab.core.params import parse_params
    from petlab.report.study_report import Study

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    for split in ("train", "val", "test"):
        for name in ("a", "b"):
            (data / split / name).mkdir(parents=True)
            (data / split / name / "0.jpg").write_bytes(b"")
    (data / "classes.json").write_text('["a", "b"]')
    (data / "report.json").write_text('{"source": "oxford_pets"}')
    params = parse_params({"study": {"seeds": [0], "images_per_class": [3, 10, 25, "all"]}})
    cells = Path("study/cells")
    for model in ("cnn", "probe"):
        (cells / model).mkdir(parents=True, exist_ok=True)
        for size in (3, 10, 25, "all"):
            subset = "three" if size == 3 else "everything"  # 10, 25 and all: the same images
            (cells / model / f"0-{size}.json").write_text(
                json.dumps(
                    {
                        "subset": subset,
                        "val_subset": subset,
                        "test_predicted": "0 1",
                        "train_images": 12,
                        "val_images": 4,
                    }
                )
            )
    for kind in ("cnn_long", "probe_tune"):
        (cells / kind).mkdir()
    for size in (3, 10, 25, "all"):
        subset = "three" if size == 3 else "everything"
        (cells / "cnn_long" / f"0-{size}.json").write_text(json.dumps({"subset": subset, "test_predicted": "0 1"}))
        (cells / "probe_tune" / f"{size}.json").write_text("{}")
    (cells / "features.json").write_text("{}")
    study = Study.load(params, data)
    assert study.sizes == [3, "all"] and study.same_as == {10: "all", 25: "all"}
    (cells / "cnn" / "0-25.json").unlink()
    with pytest.raises(PipelineError, match=r"^1 cells missing \(study/cells/cnn/0-25\.json\); run them first"):
        Study.load(params, data)
