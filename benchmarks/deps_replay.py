"""How often each stage would have re-run over the project's own git history, with its code deps listed module by
module (each module its command imports) and with them listed by folder (the phase folders it imports from).

Every commit (merges left out) is replayed against its parent: the project files it changed are mapped onto
today's modules, and a stage counts one re-run when a mapped module falls inside its deps. A file that has since
been split (petlab/experiments.py into petlab/train/run.py, petlab/train/cnn.py and petlab/probe/recipe.py) maps hunk by hunk: the top-level
definitions a hunk touches are looked up by name in the files it became; a hunk outside any definition (imports,
the docstring), or a name found in none or several of them, maps to all of them. Both ways of listing deps see the
same mapped changes, so the comparison is like for like; the mapping only errs towards more re-runs, on both sides.

    python -m benchmarks.deps_replay            # both dvc files, a table per file
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from project_imports import (  # noqa: E402  (tests/ holds the import reader the tests use)
    command_modules,
    covered,
    dvc_files,
    import_graph,
    project_modules,
    runs_when_imported,
    stage_specs,
)

# Where the modules of the flat layout went (each file not named here kept its name under the folder its module
# now sits in, found by its file name).
BECAME = {
    "petlab/experiments.py": ["petlab/train/run.py", "petlab/train/cnn.py", "petlab/probe/recipe.py"],
    "petlab/runtime.py": ["petlab/core/errors.py", "petlab/core/runtime.py", "petlab/core/device.py"],
    "petlab/data.py": ["petlab/data/dataset.py", "petlab/data/transforms.py", "petlab/data/loaders.py"],
    "petlab/models.py": [
        "petlab/models/registry.py",
        "petlab/models/cnn.py",
        "petlab/models/backbone.py",
        "petlab/core/records.py",
    ],
    "petlab/downloads.py": ["petlab/core/checksums.py", "petlab/prepare/downloads.py"],
    "petlab/sanity.py": ["petlab/sanity/checks.py", "petlab/sanity/overfit.py"],
    "petlab/profiling.py": ["petlab/measure/profiling.py", "petlab/models/registry.py"],
    "petlab/measure/profiling.py": ["petlab/measure/profiling.py", "petlab/models/registry.py"],
    "petlab/train.py": ["petlab/train/loop.py"],
    "petlab/probe.py": ["petlab/probe/logistic.py"],
    "petlab/prepare.py": ["petlab/prepare/splits.py"],
    "petlab/report.py": ["petlab/report/comparison.py"],
    "petlab/report_document.py": ["petlab/report/document.py"],
    "petlab/study.py": ["petlab/study/cells.py"],
    "petlab/plots.py": ["petlab/figures/plots.py"],
    "petlab/layout.py": ["petlab/core/layout.py"],
    "petlab/data/layout.py": ["petlab/core/layout.py"],
    "petlab/calibration.py": ["petlab/core/calibration.py"],
    "petlab/measure/calibration.py": ["petlab/core/calibration.py"],
    "petlab/features.py": ["petlab/probe/features.py"],
    "petlab/train/features.py": ["petlab/probe/features.py"],
    "petlab/train/logistic.py": ["petlab/probe/logistic.py"],
    "petlab/train/probe.py": ["petlab/probe/recipe.py"],
    "petlab/prepare/sanity.py": ["petlab/sanity/checks.py"],
    "petlab/train/overfit.py": ["petlab/sanity/overfit.py"],
}


def git(*args: str, root: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def current_files(root: Path = REPO) -> dict[str, str]:
    """Today's project files: path -> file name."""
    return {p.relative_to(root).as_posix(): p.name for p in [*root.glob("petlab/**/*.py"), *root.glob("stages/*.py")]}


def targets(path: str, files: dict[str, str], became: dict[str, list[str]] = BECAME) -> list[str]:
    """Today's files that hold what `path` held (path as it was named at the commit)."""
    if path in became:
        return [p for p in became[path] if p in files]
    if path in files:
        return [path]
    if path.startswith("petlab/sources/"):
        return [p for p in [path.replace("petlab/sources/", "petlab/prepare/sources/")] if p in files]
    same_name = [p for p, name in files.items() if name == Path(path).name and not name.startswith("__")]
    return same_name if len(same_name) == 1 else []


def top_level_names(text: str) -> list[tuple[int, int, str]]:
    """(first line, last line, name) of each top-level definition or assignment of a module's text."""
    found = []
    for node in ast.parse(text).body:
        names = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names = [node.name]
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            names = [
                t.id
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                if isinstance(t, ast.Name)
            ]
        found += [(node.lineno, node.end_lineno, name) for name in names]
    return found


@functools.cache
def definitions(path: str, root: Path = REPO) -> set[str]:
    """The top-level names today's file defines (read once: every commit's hunks look them up)."""
    try:
        return {name for _, _, name in top_level_names((root / path).read_text())}
    except (OSError, SyntaxError):
        return set()


def touched_names(commit: str, parent: str, path: str, root: Path = REPO) -> set[str] | None:
    """The top-level names a commit's hunks in `path` touch, before or after; None where a hunk is outside them."""
    diff = git("diff", "-U0", parent, commit, "--", path, root=root)
    ranges = [
        tuple(int(n or 1) for n in m) for m in re.findall(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", diff, re.M)
    ]
    names: set[str] = set()
    for rev, index in ((parent, 0), (commit, 2)):
        try:
            spans = top_level_names(git("show", f"{rev}:{path}", root=root))
        except (subprocess.CalledProcessError, SyntaxError):
            return None
        for hunk in ranges:
            first, count = hunk[index], hunk[index + 1]
            if count == 0:
                continue
            lines = range(first, first + count)
            hit = [name for start, end, name in spans if start <= lines[-1] and lines[0] <= end]
            if not hit:
                return None
            names.update(hit)
    return names


def changed_modules(
    commit: str, parent: str, files: dict[str, str], became: dict[str, list[str]] = BECAME, root: Path = REPO
) -> set[str]:
    """Today's project files a commit's changes land in."""
    landed: set[str] = set()
    for path in git("diff", "--name-only", parent, commit, root=root).split():
        if not (path.endswith(".py") and path.split("/")[0] in ("petlab", "stages")):
            continue
        into = targets(path, files, became)
        if len(into) > 1:
            names = touched_names(commit, parent, path, root)
            if names is not None:
                homes = {p for p in into for name in names if name in definitions(p, root)}
                placed = all(sum(name in definitions(p, root) for p in into) == 1 for name in names)
                into = sorted(homes) if placed and homes else into
        landed.update(into)
    return landed


def closure(cmds: list[str], wdir: Path, modules, graph) -> list[str]:
    run = [n for cmd in cmds for n in command_modules(cmd, modules, wdir) if n in modules]
    run += [f"{n}.__main__" for n in run if f"{n}.__main__" in modules]
    names = set().union(*(runs_when_imported(graph, n) for n in run))
    return sorted(modules[n].relative_to(REPO).as_posix() for n in names)


def by_module(paths: list[str]) -> list[str]:
    return paths


def by_folder(paths: list[str]) -> list[str]:
    """The stage files themselves, petlab/__init__.py, and the phase folder (petlab/<phase>) of every other module."""
    return sorted(
        {p if p.startswith("stages/") or p == "petlab/__init__.py" else "/".join(p.split("/")[:2]) for p in paths}
    )


def main() -> None:
    files, modules, graph = current_files(), project_modules(), import_graph()
    commits = git("rev-list", "--no-merges", "--reverse", "HEAD").split()
    changes = []
    for commit in commits:
        parents = git("rev-list", "--parents", "-n", "1", commit).split()[1:]
        if parents:
            changes.append(changed_modules(commit, parents[0], files))
    print(f"{len(changes)} commits replayed (merges left out)\n")
    for dvc_file in dvc_files():
        print(f"{dvc_file.relative_to(REPO)}{'':<20}  by module  by folder  (re-runs from code changes)")
        for stage, cmds, _, wdir in stage_specs(dvc_file):
            paths = closure(cmds, wdir, modules, graph)
            counts = Counter()
            for landed in changes:
                for way, listing in (("module", by_module(paths)), ("folder", by_folder(paths))):
                    counts[way] += any(covered(p, listing) for p in landed)
            print(f"  {stage:<34}  {counts['module']:>9}  {counts['folder']:>9}")
        print()


if __name__ == "__main__":
    main()
