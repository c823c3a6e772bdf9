"""Running a stage's main(): its outputs checked writable first, its wall time recorded, and every failure the
user can fix (or Ctrl-C) turned into one line and an exit code."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from petlab.core.errors import PipelineError
from petlab.core.outputs import check_writable, stage_outputs, write_json
from petlab.core.outputs import timing_file as stage_timing_file
from petlab.core.runtime import DETERMINISTIC_VARIABLE, Stopwatch, launched_by_torchrun


def run_stage(
    name: str,
    main: Callable[[], None],
    live_dirs: Sequence[str | Path] = (),
    timing_file: str | Path | None = None,
    timing_extra: dict | None = None,
    record_time: bool = True,
) -> None:
    """Run a stage's main(), turning known failures and Ctrl-C into one line and an exit code.

    On success the stage's wall time goes to metrics/timing/<name>.json, where `dvc metrics diff`
    shows a slowdown (kept apart from the result metrics, which must not change between reruns).
    `timing_file` puts it elsewhere, with `timing_extra` beside it (a study cell's: with the machine it ran on).
    `record_time=False` writes no timing file (a command that is no DVC stage).
    `live_dirs` are written while the stage runs (TensorBoard logs, so they can be watched): when the
    stage fails they are removed, so no partial event file outlives the run.
    """
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises KeyboardInterrupt from here on
    clock = Stopwatch()
    try:
        main_rank = os.environ.get("RANK", "0") == "0"  # one rank of several (torchrun): only rank 0 writes
        check_writable(stage_outputs(name))  # before any work: a read-only metrics/ must not cost a whole run
        try:
            main()
        except BaseException:
            for folder in live_dirs if main_rank else ():  # a failed stage leaves no partial TensorBoard or
                shutil.rmtree(folder, ignore_errors=True)  # trace files (rank 0's: the others write none)
            raise
        leave_process_group()
        if main_rank and record_time:
            write_json(timing_file or stage_timing_file(name), {"seconds": clock.seconds(), **(timing_extra or {})})
    except PipelineError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:
        if err.errno is None:  # not a file-system failure: a bug, whose traceback is worth having
            raise
        # Disk full, read-only or permission denied while writing (or reading) some file: one line.
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"{name}: error: {where}{err.strerror or err} (errno {errno.errorcode.get(err.errno, err.errno)})",
            file=sys.stderr,
        )
        sys.exit(1)
    except Exception as err:
        if launched_by_torchrun() and peer_failed(err):
            sys.exit(1)  # a collective broke because another rank failed: that rank prints the reason
        op = nondeterministic_op(err)
        if op is None:
            raise
        print(
            f"{name}: error: {op} has no deterministic kernel on this device, and the pipeline runs deterministic "
            f"kernels only, so that reruns repeat; set {DETERMINISTIC_VARIABLE}=warn to run it anyway, with reruns "
            "that may differ in their last bits (docs/reproducibility.md)",
            file=sys.stderr,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        if launched_by_torchrun():
            sys.exit(130)  # one rank of several: the launcher (the stage or torchrun) reports the interruption
        print(f"{name}: interrupted; no output was half-written, re-run `dvc repro` to finish", file=sys.stderr)
        sys.exit(130)


# The two sides of the comparison. The stages after training run once per model (`foreach` in dvc.yaml), so a change
# to one model re-runs that model's stages alone; the report pairs the two.
MODELS = ("cnn", "vit")


def run_model_stage(stage: str, main: Callable[[str], None], live_dir: str | None = None) -> None:
    """`python -m stages.<stage> MODEL`, which dvc.yaml runs as `<stage>@MODEL`: main(MODEL) run as that stage,
    its wall time in metrics/timing/<stage>_<MODEL>.json; `live_dir` (a format of `model`) as run_stage's."""
    args = sys.argv[1:]
    if len(args) != 1 or args[0] not in MODELS:
        print(
            f"{stage}: error: usage: python -m stages.{stage} {' | '.join(MODELS)}; got {' '.join(args) or 'nothing'}",
            file=sys.stderr,
        )
        sys.exit(1)
    model = args[0]
    run_stage(
        f"{stage}@{model}",
        lambda: main(model),
        live_dirs=[live_dir.format(model=model)] if live_dir else (),
        timing_file=stage_timing_file(f"{stage}@{model}"),
    )


def leave_process_group() -> None:
    """Leave torchrun's process group (petlab.core.distributed.join), after the stage finished cleanly on this rank.

    Not after a failure: NCCL's teardown (ncclCommAbort) is a collective in some NCCL versions and would wait, until
    the timeout, on ranks that are still in a collective with the failed one. The process exits instead, and torchrun
    stops the other ranks."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def nondeterministic_op(err: Exception) -> str | None:
    """The operation named by torch's error for one without a deterministic kernel
    (torch.use_deterministic_algorithms(True)), or None for any other error."""
    marker = " does not have a deterministic implementation"
    if isinstance(err, RuntimeError) and marker in str(err):
        return str(err).split(marker)[0].strip() or "an operation"
    return None


def peer_failed(err: Exception) -> bool:
    return isinstance(err, torch.distributed.DistError) or "closed by peer" in str(err)
