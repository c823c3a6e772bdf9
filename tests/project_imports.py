"""The project's own import graph, read from the source with ast (nothing is imported or run).

Used by tests/test_project_imports.py (no cycles; dvc.yaml's deps cover what each stage runs). Run as
`python tests/project_imports.py` to print every module with its layer: 0 for a module that imports no other
project module, else one more than the highest layer it imports.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("petlab", "stages")  # the code the pipeline runs


def project_modules(root: Path = REPO) -> dict[str, Path]:
    """Dotted name -> file, for every module of the project's packages (a package is its __init__.py)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` (module `name`) imports by name, anywhere in the file: imports inside functions
    run too, only later. A `from package import x` names the submodule x where there is one, else the package."""
    is_package = path.name == "__init__.py"
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    for guard in ast.walk(tree):  # `if TYPE_CHECKING:` imports are for type checkers only: they never run
        if isinstance(guard, ast.If) and "TYPE_CHECKING" in ast.unparse(guard.test):
            guard.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package, one level up per extra dot
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {n for n in found if n in modules and n != name}


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module -> the project modules it imports by name (package __init__s that run first are not edges here:
    importing a package's submodule from its __init__ is no cycle)."""
    modules = project_modules(root)
    return {name: imported_names(path, name, modules) for name, path in modules.items()}


def packages_of(name: str) -> list[str]:
    """The packages Python runs (their __init__.py) before it runs the module `name`: petlab.prepare.sources.base ->
    petlab, petlab.prepare.sources."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def runs_when_imported(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every project module that runs when `start` is imported (or run with `python -m`): what it imports,
    transitively, with each module's enclosing packages."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen or name not in graph:
            continue
        seen.add(name)
        todo.extend(graph[name])
        todo.extend(packages_of(name))
    return seen


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once all it reaches is checked
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "open"
        path.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Module -> its layer: 0 when it imports no project module, else 1 + the highest layer it imports.
    Needs a graph without cycles."""
    layer: dict[str, int] = {}

    def of(name: str) -> int:
        if name not in layer:
            layer[name] = 1 + max((of(t) for t in graph[name]), default=-1)
        return layer[name]

    for name in graph:
        of(name)
    return layer


def longest_chain(graph: dict[str, set[str]], start: str) -> list[str]:
    """The longest import chain from `start` down to a leaf (a graph without cycles)."""
    layer = layers(graph)
    chain = [start]
    while graph[chain[-1]]:
        chain.append(max(sorted(graph[chain[-1]]), key=layer.__getitem__))
    return chain


def phases(root: Path = REPO) -> tuple[str, ...]:
    """petlab's phases, bottom to top, as petlab/__init__.py lists them (PHASES)."""
    tree = ast.parse((root / "petlab/__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PHASES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise LookupError("petlab/__init__.py has no PHASES")


def phase_of(module: str) -> str | None:
    """petlab.train.loop -> train; petlab itself and the stages belong to no phase."""
    parts = module.split(".")
    return parts[1] if parts[0] == "petlab" and len(parts) > 1 else None


def imports_against_the_phases(graph: dict[str, set[str]], order: tuple[str, ...]) -> list[str]:
    """Every import of a petlab module from a phase after its own (or from a folder that is no phase), one line each."""
    rank = {phase: i for i, phase in enumerate(order)}
    found = []
    for name, targets in sorted(graph.items()):
        here = phase_of(name)
        if name.startswith("petlab.") and here not in rank:
            found.append(f"{name} is in no phase of petlab.PHASES")
            continue
        for target in sorted(targets):
            there = phase_of(target)
            if here in rank and there in rank and rank[there] > rank[here]:
                found.append(f"{name} ({here}) imports {target} ({there}), a later phase")
    return found


# ---------------------------------------------------------------- dvc.yaml: what each stage's command runs


def dvc_files(root: Path = REPO) -> list[Path]:
    """Every dvc.yaml DVC would read here (the tree's, outside hidden folders and virtual environments), and the
    study's pipeline, which a user copies to study/dvc.yaml to run it."""
    found = [root / "study/pipeline.yaml"] if (root / "study/pipeline.yaml").is_file() else []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(
            d for d in subfolders if not d.startswith(".") and not (Path(folder, d) / "pyvenv.cfg").exists()
        )
        if "dvc.yaml" in files and Path(folder, "dvc.yaml") != root / "study/dvc.yaml":  # a copy of the above
            found.append(Path(folder) / "dvc.yaml")
    return found


def stage_specs(dvc_file: Path) -> Iterator[tuple[str, list[str], list[str], Path]]:
    """(stage, commands, deps, working folder) for every stage of a dvc.yaml; a `foreach` stage's body is its `do`,
    a `matrix` stage's its own (its ${item...} entries stay as written)."""
    spec = yaml.safe_load(dvc_file.read_text()) or {}
    for name, stage in (spec.get("stages") or {}).items():
        body = stage.get("do", stage) if "foreach" in stage else stage
        cmd = body.get("cmd") or []
        deps = [next(iter(d)) if isinstance(d, dict) else str(d) for d in body.get("deps") or []]
        yield name, [cmd] if isinstance(cmd, str) else list(cmd), deps, dvc_file.parent / body.get("wdir", ".")


def command_modules(cmd: str, modules: dict[str, Path], wdir: Path, root: Path = REPO) -> list[str]:
    """The project modules a command runs: `python -m MODULE ...` (any interpreter or launcher flags before -m,
    arguments after), and `python path/to/module.py ...`."""
    found = []
    for name in re.findall(r"(?<![\w-])-m\s+([A-Za-z_][\w.]*)", cmd):
        if name in modules or name.split(".")[0] in PACKAGES:
            found.append(name)  # a project package's name that is no module stays, to be reported
    by_file = {path.resolve(): name for name, path in modules.items()}
    for script in re.findall(r"(?<!\S)([\w./-]+\.py)(?!\S)", cmd):
        name = by_file.get((wdir / script).resolve())
        if name:
            found.append(name)
    return found


def covered(path: str, deps: list[str]) -> bool:
    """Whether a dvc.yaml dep names `path` (both relative to the repository), itself or a folder above it."""
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def repo_relative(dep: str, wdir: Path, root: Path = REPO) -> str:
    return os.path.relpath(os.path.normpath(wdir / dep), root).replace(os.sep, "/")


def deps_problems(cmds: list[str], deps: list[str], wdir: Path, root: Path = REPO) -> list[str]:
    """What is wrong with a stage's code deps, one line each: a project module its commands run that no dep names
    (itself or a folder above it), a code dep that names nothing it runs (re-running the stage for nothing), a
    command that names no project module (or one that does not exist)."""
    modules, graph = project_modules(root), import_graph(root)
    problems, run = [], []
    for cmd in cmds:
        names = command_modules(cmd, modules, wdir, root)
        problems += [
            f"`{cmd}` runs {n}, which is no module of {', '.join(PACKAGES)}" for n in names if n not in modules
        ]
        if not names and re.search(r"\bpython|\b(?:petlab|stages)\b", cmd):
            problems.append(f"`{cmd}`: cannot tell which project module it runs; write it as `python -m MODULE ...`")
        run += [n for n in names if n in modules]
    run += [f"{n}.__main__" for n in run if f"{n}.__main__" in modules]  # `python -m package` runs its __main__
    names = set().union(*(runs_when_imported(graph, n) for n in run))
    paths = sorted(modules[n].relative_to(root).as_posix() for n in names)
    listed = [repo_relative(d, wdir, root) for d in deps if "${" not in d]  # templated entries name data
    problems += [f"runs {p}, which its deps do not list" for p in paths if not covered(p, listed)]
    problems += [
        f"lists {d} in its deps but runs none of it"
        for d in listed
        if d.split("/")[0] in PACKAGES and not any(covered(p, [d]) for p in paths)
    ]
    return problems


def main() -> None:
    graph = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        sys.exit(f"import cycle: {' -> '.join(cycle)}")
    layer = layers(graph)
    for name in sorted(graph, key=lambda n: (-layer[n], n)):
        print(f"{layer[name]:3d}  {name}  ->  {', '.join(sorted(graph[name])) or '-'}")
    stages = [n for n in graph if n.startswith("stages.")]
    top = max(stages, key=lambda n: (layer[n], n))
    print(
        f"{len(graph)} modules; longest chain from a stage, {layer[top] + 1} layers: "
        f"{' -> '.join(longest_chain(graph, top))}"
    )


if __name__ == "__main__":
    main()
