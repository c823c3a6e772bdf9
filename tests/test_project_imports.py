"""The code's own imports, read with ast: no import cycle, and every stage's deps in every dvc.yaml name each project
module its command runs, so `dvc repro` re-runs a stage whenever code it runs changes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import dvc
from project_imports import (
    REPO,
    command_modules,
    deps_problems,
    dvc_files,
    find_cycle,
    import_graph,
    imports_against_the_phases,
    layers,
    phases,
    project_modules,
    repo_relative,
    runs_when_imported,
    stage_specs,
)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


# A small project of the same shape: a stage, a package whose __init__ imports its modules, a relative import,
# an import inside a function.
TOY = {
    "stages/__init__.py": "",
    "stages/run.py": "from petlab.readers.base import Record\nfrom petlab import tool\n",
    "petlab/__init__.py": "",
    "petlab/tool.py": "import os\n\n\ndef later():\n    from petlab.errors import Failure\n",
    "petlab/errors.py": "",
    "petlab/readers/__init__.py": "from petlab.readers.csv import read\n",
    "petlab/readers/csv.py": "from .base import Record\n",
    "petlab/readers/base.py": "from petlab.errors import Failure\n",
    "petlab/unused.py": "from petlab import tool\n",
}


def test_the_project_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_imports_inside_functions_and_relative_ones_are_edges_and_a_cycle_through_them_is_found(tmp_path):
    graph = import_graph(write_tree(tmp_path, TOY))
    assert graph["petlab.tool"] == {"petlab.errors"}  # imported inside a function
    assert graph["petlab.readers.csv"] == {"petlab.readers.base"}  # relative
    assert graph["stages.run"] == {"petlab.readers.base", "petlab.tool"}  # `from petlab import tool`: the module
    assert find_cycle(graph) is None and layers(graph)["stages.run"] == 2
    (tmp_path / "petlab/errors.py").write_text("def describe():\n    from petlab.tool import later\n")
    assert find_cycle(import_graph(tmp_path)) == ["petlab.errors", "petlab.tool", "petlab.errors"]


def test_a_stage_runs_the_packages_around_what_it_imports_and_all_they_import(tmp_path):
    graph = import_graph(write_tree(tmp_path, TOY))
    assert runs_when_imported(graph, "stages.run") == {
        "stages",
        "stages.run",
        "petlab",
        "petlab.tool",
        "petlab.errors",
        "petlab.readers",
        "petlab.readers.csv",
        "petlab.readers.base",
    }  # petlab.readers' __init__ runs first, and imports csv


@pytest.mark.parametrize(
    "cmd, expected",
    [
        ("python -m stages.train_vit", ["stages.train_vit"]),
        ("python3 -X dev -u -m stages.report --out reports ${item.size}", ["stages.report"]),
        ("torchrun --standalone --nproc-per-node=2 -m stages.train_cnn", ["stages.train_cnn"]),
        ("python -m stages.train_cnn && python -m stages.evaluate", ["stages.train_cnn", "stages.evaluate"]),
        ("python -m stages.no_such_stage", ["stages.no_such_stage"]),  # kept, to be reported
        ("python stages/report.py", ["stages.report"]),
        ("python -m pip list", []),
        ("dvc plots show -o plots/html", []),
    ],
)
def test_the_module_a_command_runs_is_read_from_it(cmd, expected):
    assert command_modules(cmd, project_modules(), REPO) == expected


def test_deps_problems_name_a_missing_module_a_listed_one_never_run_and_an_unknown_command(tmp_path):
    write_tree(tmp_path, TOY)
    runs = [
        "stages/run.py",
        "stages/__init__.py",
        "petlab/__init__.py",
        "petlab/tool.py",
        "petlab/errors.py",
        "petlab/readers",
    ]
    assert deps_problems(["python -m stages.run"], runs + ["data/x"], tmp_path, tmp_path) == []
    assert deps_problems(["python -m stages.run --fast"], ["stages", "petlab"], tmp_path, tmp_path) == []
    # a dvc.yaml in a subfolder: its deps (and the module's files) are relative to its wdir
    assert deps_problems(["python -m stages.run"], [f"../{d}" for d in runs], tmp_path / "study", tmp_path) == []
    assert deps_problems(
        ["python -m stages.run"],
        [d for d in runs if d != "petlab/errors.py"] + ["petlab/unused.py"],
        tmp_path,
        tmp_path,
    ) == ["runs petlab/errors.py, which its deps do not list", "lists petlab/unused.py in its deps but runs none of it"]
    assert deps_problems(["python -m stages.nothing"], [], tmp_path, tmp_path) == [
        "`python -m stages.nothing` runs stages.nothing, which is no module of petlab, stages"
    ]
    assert deps_problems(["python run.py"], [], tmp_path, tmp_path)[0].startswith("`python run.py`: cannot tell")


def test_every_stage_of_the_pipeline_runs_its_stage_module():
    specs = list(stage_specs(REPO / "dvc.yaml"))
    assert specs
    for stage, cmds, _, wdir in specs:
        assert [m for cmd in cmds for m in command_modules(cmd, project_modules(), wdir)] == [f"stages.{stage}"]


@pytest.mark.parametrize(
    "dvc_file, stage, cmds, deps, wdir",
    [
        pytest.param(dvc_file, *spec, id=f"{dvc_file.relative_to(REPO).as_posix()}:{spec[0]}")
        for dvc_file in dvc_files()
        for spec in stage_specs(dvc_file)
    ],
)
def test_stage_deps_name_every_project_module_its_command_runs(dvc_file, stage, cmds, deps, wdir):
    problems = deps_problems(cmds, deps, wdir)
    assert not problems, f"{dvc_file.relative_to(REPO)}, stage {stage}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize(
    "dvc_file, stage, deps, wdir",
    [
        pytest.param(dvc_file, spec[0], spec[2], spec[3], id=f"{dvc_file.relative_to(REPO).as_posix()}:{spec[0]}")
        for dvc_file in dvc_files()
        for spec in stage_specs(dvc_file)
    ],
)
def test_stage_code_deps_are_its_stage_files_and_phase_folders(dvc_file, stage, deps, wdir):
    """A stage's code deps read like its imports: stage files, petlab/__init__.py (the phases' order) and whole phase
    folders, never a module picked out of one (which would go stale as the phase's modules change)."""
    phase_folders = {f"petlab/{phase}" for phase in phases()}
    code = [d for d in (repo_relative(d, wdir) for d in deps) if d.split("/")[0] in ("petlab", "stages")]
    assert code, f"{stage} lists no code"
    odd = [d for d in code if not (d.startswith("stages/") or d == "petlab/__init__.py" or d in phase_folders)]
    assert not odd, f"{dvc_file.relative_to(REPO)}, stage {stage}: {odd} are neither stage files nor phase folders"


def test_python_bytecode_is_no_part_of_a_folder_dep():
    """A folder dep (petlab/core) holds the __pycache__ its stage writes when it imports it, in each folder below it
    too; git does not keep them, so unless DVC ignores them a colleague's clone, or another Python version, sees the
    dep changed and re-runs the stage."""
    folders = sorted(
        {
            (wdir / dep).resolve().relative_to(REPO).as_posix()
            for dvc_file in dvc_files()
            for _, _, deps, wdir in stage_specs(dvc_file)
            for dep in deps
            if (wdir / dep).is_dir()
        }
    )
    assert "petlab/core" in folders and "petlab/prepare" in folders
    caches = [f"{folder}/__pycache__/module.cpython-311.pyc" for folder in folders] + [
        f"{folders[0]}/module.pyc",
        "petlab/prepare/sources/__pycache__/module.cpython-311.pyc",
    ]
    ignored = dvc(REPO, "check-ignore", *caches, check=False)
    assert ignored.stdout.split() == caches, ignored.stdout + ignored.stderr


IMPORT_EVERYTHING = """
import importlib, os, sys
import matplotlib, pandas, sklearn.linear_model, timm, torch, torchvision  # noqa: E401  (they set what they set)
changed_umask = []
os.umask = lambda mask: changed_umask.append(mask)  # any call would change (or read by changing) the umask
environ = dict(os.environ)
for name in sys.argv[1:]:
    importlib.import_module(name)
import matplotlib
print(sorted(set(os.environ.items()) ^ set(environ.items())), changed_umask, "matplotlib.pyplot" in sys.modules,
      matplotlib.rcParams._get_backend_or_none())
"""


def test_importing_any_module_sets_no_environment_variable_umask_or_matplotlib_backend():
    """Importing petlab (a test, a notebook, another project) changes nothing of the process: the code that needs
    an environment variable, the umask or matplotlib's backend sets or reads it when it runs."""
    names = sorted(n for n in project_modules() if n.startswith("petlab") and not n.endswith("__main__"))
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "TORCH_CPP_LOG_LEVEL", "KINETO_LOG_LEVEL")}
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING, *names], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split("\n")[0] == "[] [] False None", done.stdout + done.stderr


def test_imports_run_down_the_phases():
    """petlab/__init__.py lists the phases bottom to top; a module imports only its own phase and those before it."""
    order = phases()
    assert order[0] == "core" and order[-1] == "report"
    assert imports_against_the_phases(import_graph(), order) == []


def test_an_import_against_the_phases_is_found(tmp_path):
    graph = {"petlab.core.a": {"petlab.train.b"}, "petlab.train.b": {"petlab.core.a"}, "petlab.misc": set()}
    assert imports_against_the_phases(graph, ("core", "train")) == [
        "petlab.core.a (core) imports petlab.train.b (train), a later phase",
        "petlab.misc is in no phase of petlab.PHASES",
    ]


def test_the_report_stages_run_no_training_download_or_distributed_code():
    graph = import_graph()
    for stage in ("stages.report", "stages.study_report"):
        ran = runs_when_imported(graph, stage)
        banned = [
            n
            for n in ran
            if n.startswith(("petlab.train", "petlab.prepare"))
            or n in ("petlab.core.distributed", "petlab.models.backbone")
        ]
        assert banned == [], (stage, banned)
