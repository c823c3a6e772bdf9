"""README.md's commands stay true: CI runs exactly its set-up and test commands, and every printed
`dvc exp run` / `dvc repro` recipe passes the params schema."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import deep_update
from petlab.params import ParamsError, parse_params

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def commands(block: str) -> list[str]:
    """The command lines of a fenced block, comments removed."""
    lines = (re.sub(r"(^|\s+)#.*$", "", line).strip() for line in block.splitlines())
    return [line for line in lines if line]


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def ci_commands() -> list[str]:
    """What .ci/run runs, without its shell preamble."""
    lines = commands((REPO / ".ci/run").read_text())
    return [line for line in lines if line != "set -euo pipefail" and not line.startswith("cd ")]


def test_ci_runs_exactly_the_readmes_setup_and_test_commands():
    setup = commands(bash_blocks(section("Set up and run"))[0])
    tests = commands(bash_blocks(section("Tests"))[0])
    assert any("requirements.txt" in c for c in setup) and any(c.startswith("python -m pytest -q") and c.endswith(" tests") for c in tests)
    assert any("requirements-dev.txt" in c for c in tests) and any("dataset-fashion-mnist" in c for c in tests)
    assert ci_commands() == setup + tests


def shorthands() -> dict[str, str]:
    """**Name** ... stands for `-S ...`: the README's abbreviations of long recipes."""
    found = re.findall(r"\*\*([\w-]+)\*\*[^`]*?stands for `([^`]+)`", README, re.S)
    return {name: " ".join(value.split()) for name, value in found}


def printed_recipes() -> list[str]:
    """Every `dvc exp run` / `dvc repro` command in the README, inline or in a fenced block, shorthands expanded."""
    inline = re.findall(r"`((?:[A-Z_]+=\S+ )?dvc (?:exp run|repro)\b[^`]*)`", README)
    fenced = [line for block in re.findall(r"```\w*\n(.*?)```", README, re.S) for line in commands(block)
              if re.search(r"\bdvc (exp run|repro)\b", line)]
    recipes = []
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


def test_the_readme_prints_its_recipes_and_shorthands():
    recipes = printed_recipes()
    assert {"FM-mini", "cheap-ViT"} <= set(shorthands())
    assert len(recipes) >= 15 and not [r for r in recipes if "<" in r and ">" in r]  # every shorthand expanded
    with pytest.raises(ParamsError, match="warmup_epochs"):  # the check below does catch a stale recipe
        parse_params(params_of("dvc exp run -S train_vit.epochs=2"))


@pytest.mark.parametrize("command", printed_recipes())
def test_every_printed_recipe_passes_the_params_schema(command):
    parse_params(params_of(command), source=command)
    if "data.dataset=fashion_mnist" in command and "data.per_class=375" in command:  # FM-mini: measured with cheap-ViT
        parse_params(params_of(f"{command} {shorthands()['cheap-ViT']}"), source=f"{command} <cheap-ViT>")
