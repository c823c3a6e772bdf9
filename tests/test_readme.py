"""The README and docs/ stay true: CI runs exactly the README's two commands and its extras line, every printed
`dvc exp run` / `dvc repro` recipe passes the params schema (tests/test_real_data.py runs the FM-mini recipe as
printed), every printed module exists, the code layout matches the tree, and every link resolves."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import deep_update

from petlab.core.params import ParamsError, parse_params

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
# The hand-written pages; a run's own reports/ kept as an example are the pipeline's output, not documentation.
DOCS = sorted(path for path in (REPO / "docs").rglob("*.md") if "reports" not in path.relative_to(REPO).parts)
TEXTS = {REPO / "README.md": README, **{path: path.read_text() for path in DOCS}}


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def commands(block: str) -> list[str]:
    """The command lines of a fenced block, comments removed, lines continued by a backslash joined."""
    lines = (re.sub(r"(^|\s+)#.*$", "", line).strip() for line in block.replace("\\\n", " ").splitlines())
    return [line for line in lines if line]


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def readme_setup() -> tuple[str, str, str]:
    """The README's set-up-and-run command, its set-up-and-test command, and its optional extras line."""
    blocks = [commands(block) for block in bash_blocks(section("Set up and run"))]
    assert [len(block) for block in blocks] == [1, 1, 1], blocks  # each a single line to copy
    return blocks[0][0], blocks[1][0], blocks[2][0]


def test_the_readme_is_read_in_five_minutes_and_starts_with_its_two_commands():
    assert len(README.splitlines()) <= 250
    run, test, extras = readme_setup()
    assert run.startswith("pip install -r requirements.txt ") and run.endswith(" && dvc repro")
    assert test.startswith("pip install -r requirements-dev.txt ") and test.endswith(
        " && ruff check . && ruff format --check . && python -m pytest -q -n auto --dist loadgroup tests"
    )
    assert "apt-get install -y dataset-fashion-mnist" in extras and "|| echo" in extras
    # Set up and run comes right after the question and the picture: the first section of the README.
    assert README.index("\n## ") == README.index("\n## Set up and run\n")


def test_requirements_dev_is_requirements_plus_the_test_runner():
    lines = commands((REPO / "requirements-dev.txt").read_text())
    assert lines[0] == "-r requirements.txt" and any(line.startswith("pytest==") for line in lines)


def test_ci_runs_the_readmes_extras_line_then_its_two_commands_as_printed():
    run, test, extras = readme_setup()
    ci = commands((REPO / ".ci/run").read_text())
    # Nothing else is installed or run: every line that installs, runs dvc or runs pytest is one of the three.
    tools = [line for line in ci if re.search(r"\b(pip|apt-get|dvc|pytest)\b", line)]
    assert len(tools) == 3 and extras in tools[0] and run in tools[1] and test in tools[2], tools
    assert tools[0] == extras and ci[-1] == test  # the tests' exit code is CI's
    # The run's failure is accepted only as one line about a download it cannot make, without a traceback.
    stops = re.search(r'offline_stop="\^\((.*)\)"', "\n".join(ci)).group(1).split("|")
    assert stops == [
        "backbone_weights: error: cannot get pretrained weights",
        "prepare_oxford_pets: error: could not download",
    ]


def shorthands() -> dict[str, str]:
    """**Name** ... stands for `-S ...`: the docs' abbreviations of long recipes."""
    found = [
        match
        for text in TEXTS.values()
        for match in re.findall(r"\*\*([\w-]+)\*\*[^`]*?stands for `([^`]+)`", text, re.S)
    ]
    return {name: " ".join(value.split()) for name, value in found}


def printed_recipes() -> list[str]:
    """Every `dvc exp run` / `dvc repro` command in the README and docs/, inline or fenced, shorthands expanded."""
    recipes = []
    for text in TEXTS.values():
        inline = re.findall(r"`((?:[A-Z_]+=\S+ )?dvc (?:exp run|repro)\b[^`]*)`", text)
        fenced = [
            part.strip()
            for block in re.findall(r"```\w*\n(.*?)```", text, re.S)
            for line in commands(block)
            for part in line.split("&&")
            if re.match(r"\s*(?:[A-Z_]+=\S+ )*dvc (exp run|repro)\b", part)
        ]
        for command in inline + fenced:
            command = " ".join(command.split())
            for name, value in shorthands().items():
                command = command.replace(f"<{name}>", value)
            recipes += grid_points(command)
    return sorted(set(recipes))


def grid_points(command: str) -> list[str]:
    """A queued grid (`-S 'train_vit.lr=1e-3,3e-3'`) as one command per point; commas inside [...] are a list."""
    points: list[list[str]] = [[]]
    tokens = shlex.split(command)
    for previous, token in zip([""] + tokens, tokens):
        if previous in ("-S", "--set-param") and "=" in token:
            key, value = token.split("=", 1)
            choices = [f"{key}={choice}" for choice in re.split(r",(?![^\[]*\])", value)]
        else:
            choices = [token]
        points = [point + [choice] for point in points for choice in choices]
    return [shlex.join(point) for point in points]


def params_of(command: str) -> dict:
    """The committed params.yaml with the command's -S overrides applied (values read as YAML, as dvc does)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    tokens = shlex.split(command)
    for flag, assignment in zip(tokens, tokens[1:]):
        if flag in ("-S", "--set-param"):
            key, value = assignment.split("=", 1)
            override: dict = {}
            *parents, leaf = key.split(".")
            node = override
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = yaml.safe_load(value)
            deep_update(params, override)
    return params


def test_the_docs_print_their_recipes_and_shorthands():
    recipes = printed_recipes()
    assert {"FM-mini", "cheap-ViT"} <= set(shorthands())
    assert len(recipes) >= 15 and not [r for r in recipes if "<" in r and ">" in r]  # every shorthand expanded
    assert any("train_vit.unfreeze" in r for r in recipes)  # docs/ are read, not only the README
    assert targets_of("dvc exp run --queue train_cnn -S train_cnn.lr=1e-3") == ["train_cnn"]  # and a stale stage
    with pytest.raises(ParamsError, match="warmup_epochs"):  # the check below does catch a stale recipe
        parse_params(params_of("dvc exp run -S train_vit.epochs=2"))


def targets_of(command: str) -> list[str]:
    """The stages (or dvc.yaml files) a printed command names: its arguments that are neither flags nor values."""
    tokens = shlex.split(command)
    start = tokens.index("dvc") + 2  # after `dvc repro` / `dvc exp run`
    tokens = tokens[start + (tokens[start - 1] == "exp") :]
    return [
        token
        for previous, token in zip([""] + tokens, tokens)
        if not token.startswith("-") and previous not in ("-S", "--set-param", "-n", "--name", "-j", "--jobs")
    ]


def names_a_stage(target: str) -> bool:
    """Whether a printed target exists: a dvc.yaml file, a stage of the root dvc.yaml, or `FILE:STAGE` (a matrix
    stage's instance as `STAGE@ITEM`). study/dvc.yaml is the study's pipeline as a user adds it: a copy of
    study/pipeline.yaml."""
    target = target.replace("study/dvc.yaml", "study/pipeline.yaml")
    file, _, stage = target.rpartition(":") if ":" in target else ("dvc.yaml", "", target)
    if not stage:
        return False
    if (REPO / target).is_file():
        return True
    path = REPO / file
    return path.is_file() and stage.split("@")[0] in yaml.safe_load(path.read_text())["stages"]


@pytest.mark.parametrize("command", printed_recipes())
def test_every_printed_recipe_passes_the_params_schema(command):
    parse_params(params_of(command), source=command)
    assert [target for target in targets_of(command) if not names_a_stage(target)] == []
    if (
        "data.dataset=fashion_mnist" in command
        and "data.per_class=375" in command  # FM-mini: measured with
        and "train_vit.weights=" not in command
    ):  # cheap-ViT, unless it names the probe's weights itself
        parse_params(params_of(f"{command} {shorthands()['cheap-ViT']}"), source=f"{command} <cheap-ViT>")


def printed_modules() -> set[str]:
    """Every module the docs run with `python -m` (or torchrun's `-m`) or import in a printed `python -c`."""
    patterns = (r"\b(?:python3?|torchrun)\b[^`\n]*?\s-m\s+([\w.]+)", r"\bpython3? -c \"(?:from|import) ([\w.]+)")
    return {
        module.rstrip(".")
        for text in TEXTS.values()
        for pattern in patterns
        for module in re.findall(pattern, text.replace("\\\n", " "))
    }


def test_every_printed_module_exists():
    modules = printed_modules()
    assert {"pytest", "benchmarks.bench", "stages.train_cnn"} <= modules
    assert [module for module in sorted(modules) if not importable(module)] == []


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its package is missing
        return False


def test_the_benchmarks_printed_quick_run_is_run_by_a_test():
    """Its rows by tests/test_bench.py; the whole pipeline's row, from the end-to-end test's `dvc repro`."""
    assert "python -m benchmarks.bench --quick" in (REPO / "docs/speed.md").read_text()
    texts = {
        path.name: path.read_text() for path in (REPO / "tests").glob("test_*.py") if path.name != "test_readme.py"
    }
    assert [name for name, text in texts.items() if '"benchmarks.bench", "--quick"' in text] == ["test_bench.py"]
    assert [name for name, text in texts.items() if "pipeline_summary(project" in text] == ["test_pipeline.py"]


def layout_paths() -> list[str]:
    """The paths docs/layout.md lists: a name at an indent lives in the folder listed above it at a smaller indent."""
    (block,) = re.findall(r"```\n(.*?)```", (REPO / "docs/layout.md").read_text(), re.S)
    paths, folders = [], []  # folders: (indent, path) of the enclosing folders
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        names = re.split(r"\s{2,}", line.strip())[0]
        if indent >= 20:  # a description's continuation
            continue
        folders = [(i, f) for i, f in folders if i < indent]
        parent = folders[-1][1] if folders else ""
        for name in names.split(", "):
            paths.append(parent + name)
            if name.endswith("/"):
                folders.append((indent, parent + name))
    return paths


def test_every_path_in_the_code_layout_exists_and_every_module_is_listed():
    paths = layout_paths()
    assert {"petlab/core/params.py", "stages/", "benchmarks/bench.py", "tests/"} <= set(paths)
    assert [path for path in paths if not (REPO / path).exists()] == []
    whole = ("petlab/prepare/sources/",)  # listed as one folder: its modules are described together
    modules = [  # every module, and every package by its folder (its __init__.py says what it holds)
        str(path.relative_to(REPO))
        for folder in ("petlab", "benchmarks")
        for path in (REPO / folder).rglob("*.py")
        if path.name != "__init__.py" and not str(path.relative_to(REPO)).startswith(whole)
    ] + [str(path.parent.relative_to(REPO)) for path in (REPO / "petlab").rglob("__init__.py")]
    listed = {path.rstrip("/") for path in paths}
    assert [module for module in sorted(modules) if module not in listed] == []


def anchors(text: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    return {
        re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        for title in re.findall(r"^#+ (.*)$", text, re.M)
    }


def test_every_link_between_the_readme_and_the_docs_resolves():
    links = [
        (path, target)
        for path, text in TEXTS.items()
        for target in re.findall(r"\]\(([^)\s]+)\)", text)
        if not re.match(r"[a-z]+:", target)
    ]
    assert len(links) >= 20
    broken = []
    for page, target in links:
        file, _, anchor = target.partition("#")
        destination = (page.parent / file).resolve() if file else page
        if not destination.exists() or (anchor and anchor not in anchors(destination.read_text())):
            broken.append(f"{page.relative_to(REPO)}: {target}")
    assert broken == []


def test_the_readmes_example_results_are_the_example_files_own_words():
    """The README's sentences about results are generated from the examples' files, not written by hand: the study's
    verdict is petlab.report.study_report.verdict_paragraph of its study.json (the example study's page quotes it too), and
    every quoted sentence of the example report is one of its conclusions."""
    import json

    from petlab.report.study_report import verdict_paragraph

    results = section("Results")
    paragraph = verdict_paragraph(json.loads((REPO / "docs/example-study/study.json").read_text()))
    quotes = [line[2:] for line in results.splitlines() if line.startswith("> ") and line[2:].strip()]
    assert quotes[0] == paragraph
    assert paragraph in (REPO / "docs/example-study/README.md").read_text().replace("\n", " ")
    report = (REPO / "docs/example-report/reports/report.md").read_text()
    conclusions = report.split("## 7. Conclusions")[1]
    assert len(quotes) >= 3 and all(f"- {quote}" in conclusions for quote in quotes[1:]), quotes


def numbers_in(text: str) -> set[str]:
    """The decimal numbers a text states (2.2, -14.3, 13.1), as written."""
    return set(re.findall(r"[-+]?\d+\.\d+", text))


@pytest.mark.parametrize(
    "page, source",
    [
        ("docs/example-report/README.md", "docs/example-report/reports/report.md"),
        ("docs/example-study/README.md", "docs/example-study/reports/study.md"),
    ],
)
def test_the_example_pages_state_only_numbers_their_reports_hold(page, source):
    """What an example's page says it found (the part before "How it was made") quotes numbers from the report it
    describes, which the pipeline wrote: none is typed by hand."""
    found = (REPO / page).read_text().split("## How it was made")[0]
    report = (REPO / source).read_text()
    assert numbers_in(found) and numbers_in(found) <= numbers_in(report), numbers_in(found) - numbers_in(report)
