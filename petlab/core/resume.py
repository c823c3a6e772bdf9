"""End-of-epoch checkpoints, so a training stage that was stopped continues where it stopped.

A stage's checkpoint is resume/<stage>.pt: outside git (.gitignore) and outside DVC's outputs, which DVC
deletes before it runs a stage (docs/resume.md says why this and not a `persist: true` output). It holds the
training state after the last finished epoch (petlab.train.loop.fit says what that is) and the inputs it was made
from: the stage's command, its params, a digest of every file of its deps in dvc.yaml (code and data), and the
run's device, precision and ranks. A later run resumes from it only if all of them are the same;
otherwise it starts from scratch and says why in one line. The stage removes it once its outputs are written.
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from petlab.core import distributed, paths
from petlab.core.checksums import file_digest
from petlab.core.outputs import write_bytes
from petlab.core.params import Params, to_dict


class Resume:
    """Where a training loop keeps its end-of-epoch checkpoint, and the inputs it must have been made from.

    `inputs` is called once, when first needed (it reads every dep, the data included); None keeps no checkpoint.
    """

    def __init__(self, path: str | Path, inputs: Callable[[], dict | None], name: str):
        self.path, self.name, self._inputs = Path(path), name, inputs
        self.writable = True

    @classmethod
    def for_stage(
        cls, stage: str, params: Params, dvc_file: str | Path = "dvc.yaml", item: dict | None = None
    ) -> Resume:
        """A stage's checkpoint, resume/<stage>.pt. For one instance of a `matrix` stage (a study cell, cnn@0-5:
        `stage` its name, `item` its values, {"seed": "0", "size": "5"}) it is keyed by that instance's own command
        and deps, so cells run side by side never share one: resume/study/cnn@0-5.pt."""
        path = paths.RESUME / f"{stage}.pt" if item is None else paths.RESUME / "study" / f"{stage}.pt"
        return cls(path, lambda: stage_inputs(stage.split("@")[0], params, dvc_file, item), stage)

    @functools.cached_property
    def inputs(self) -> dict | None:
        return self._inputs()

    def load(self, run: dict) -> dict | None:
        """The training state saved from the same inputs and `run` (device, precision, ...), or None.

        None, with one line from rank 0 saying why, for a checkpoint that cannot be read or was made from other
        inputs; None and nothing said where there is no checkpoint.
        """
        if not self.path.is_file() or self.inputs is None:  # no file: no need to read the deps yet
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            saved_inputs, state, epoch = saved["inputs"], saved["state"], int(saved["state"]["epoch"])
        except Exception as err:  # truncated, corrupt, or not a checkpoint of ours: the run is not lost, only slower
            first = str(err).splitlines()[0][:100] if str(err) else ""
            self.say(f"starting from scratch: {self.path} cannot be read ({type(err).__name__}: {first})")
            return None
        why = differences(saved_inputs, {**self.inputs, "run": run})
        if why:
            self.say(f"starting from scratch: {self.path} (after epoch {epoch}) was made with other inputs: {why}")
            return None
        return state

    def save(self, run: dict, state: dict) -> None:
        """Replace the checkpoint with `state` (rank 0 only), atomically: a run killed while saving keeps the
        previous one. A checkpoint that cannot be written costs the resume, not the run: one line, then none."""
        if not distributed.is_main() or not self.writable or self.inputs is None:
            return
        buf = io.BytesIO()
        torch.save({"inputs": {**self.inputs, "run": run}, "state": state}, buf)
        try:
            write_bytes(self.path, buf.getvalue())
        except OSError as err:
            self.writable = False
            self.say(f"WARNING: cannot write {self.path} ({err.strerror or err}); this run cannot be resumed")

    def remove(self) -> None:
        """Once the stage's outputs are written: nothing is left to resume."""
        self.path.unlink(missing_ok=True)
        for folder in dict.fromkeys((self.path.parent, paths.RESUME)):  # resume/study/, then resume/: when empty
            try:
                folder.rmdir()
            except OSError:
                break

    def say(self, message: str) -> None:
        if distributed.is_main():
            print(f"{self.name}: {message}", flush=True)


def stage_inputs(
    stage: str, params: Params, dvc_file: str | Path = "dvc.yaml", item: dict | None = None
) -> dict | None:
    """What a stage's outputs depend on, as dvc.yaml declares it: its command, the values of its params (flattened
    to dotted keys, so a change names the key) and a digest of each dep (every file of a folder). `item`: the values
    of one instance of a `matrix` stage, put in for its ${item.KEY}s.

    None where dvc.yaml does not declare the stage (a stage run by hand elsewhere): nothing to key a checkpoint by,
    so none is kept."""
    import yaml

    try:
        spec = yaml.safe_load(Path(dvc_file).read_text())["stages"][stage]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None

    def instance(text: str) -> str:
        for key, value in (item or {}).items():
            text = text.replace(f"${{item.{key}}}", str(value))
        return text

    values = flatten(to_dict(params))
    keys = [entry for entry in spec.get("params") or [] if isinstance(entry, str)]  # keys of params.yaml
    chosen = {k: v for k, v in values.items() if any(k == key or k.startswith(f"{key}.") for key in keys)}
    deps = [instance(str(dep)) for dep in spec.get("deps") or []]
    return {"cmd": instance(spec.get("cmd")), "params": chosen, "deps": {dep: path_digest(Path(dep)) for dep in deps}}


def flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def path_digest(path: Path) -> str | None:
    """SHA-256 of a file, or of a folder's relative file names and their digests; None where nothing is there.

    Python's byte-code caches are left out: they follow from the sources and change without them."""
    if path.is_file():
        return file_digest(path)
    if not path.is_dir():
        return None
    lines = [
        f"{f.relative_to(path).as_posix()} {file_digest(f)}\n"
        for f in sorted(path.rglob("*"))
        if f.is_file() and "__pycache__" not in f.relative_to(path).parts
    ]
    return hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def differences(saved: Any, current: dict) -> str:
    """What differs between the inputs a checkpoint was made from and this run's, in a few words ('' if nothing)."""
    if not isinstance(saved, dict) or saved.keys() != current.keys():
        return "it was made by another version of this code"
    why = []
    if saved["cmd"] != current["cmd"]:
        why.append("the stage's command changed")
    for section, what in (("params", "params changed"), ("deps", "code or data changed")):
        old, new = saved[section], current[section]
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if changed:
            why.append(f"{what} ({', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''})")
    old, new = saved["run"], current["run"]
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        why.append("this run differs in " + ", ".join(f"{k} ({old.get(k)} -> {new.get(k)})" for k in changed))
    return "; ".join(why)


def rng_states(device: torch.device) -> dict:
    """Every random number generator training draws from (dropout, mostly), in forms torch.load(weights_only) reads."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":  # this rank's GPU
        states["cuda"] = torch.cuda.get_rng_state(device)
    if device.type == "mps":
        states["mps"] = torch.mps.get_rng_state()
    return states


def set_rng_states(states: dict, device: torch.device) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
    if device.type == "mps":
        torch.mps.set_rng_state(states["mps"])
