"""benchmarks/deps_replay.py: a commit's changes land in the files that hold the code today, hunk by hunk."""

from __future__ import annotations

import subprocess

from benchmarks.deps_replay import by_folder, changed_modules, current_files, git

OLD = "def load():\n    return 1\n\n\ndef score():\n    return 2\n"


def commit(root, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git("add", "-A", root=root)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message, root=root)
    return git("rev-parse", "HEAD", root=root).strip()


def test_a_split_file_maps_each_hunk_to_the_file_its_definition_went_to(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    first = commit(tmp_path, {"petlab/old.py": OLD}, "flat")
    second = commit(tmp_path, {"petlab/old.py": OLD.replace("return 2", "return 3")}, "score changes")
    third = commit(tmp_path, {"petlab/old.py": '"""A docstring."""\n' + OLD.replace("return 2", "return 3")}, "doc")
    # today: old.py split in two phases
    commit(
        tmp_path,
        {
            "petlab/data/io.py": "def load():\n    return 1\n",
            "petlab/measure/scores.py": "def score():\n    return 3\n",
        },
        "split",
    )
    became = {"petlab/old.py": ["petlab/data/io.py", "petlab/measure/scores.py"]}
    files = current_files(tmp_path)
    assert changed_modules(second, first, files, became, tmp_path) == {"petlab/measure/scores.py"}
    # a hunk outside every definition (the docstring) lands in all it became
    assert changed_modules(third, second, files, became, tmp_path) == {"petlab/data/io.py", "petlab/measure/scores.py"}


def test_folder_deps_are_the_phase_folders_and_the_stage_files():
    paths = ["stages/train_cnn.py", "petlab/__init__.py", "petlab/core/params.py", "petlab/prepare/sources/base.py"]
    assert by_folder(paths) == ["petlab/__init__.py", "petlab/core", "petlab/prepare", "stages/train_cnn.py"]
