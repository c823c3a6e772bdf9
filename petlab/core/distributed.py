"""Training as several processes (ranks) under torchrun: PyTorch's own launcher, DistributedDataParallel,
and evaluation over the whole split however it is sharded.

One process is the default: no process group, every helper here a no-op. With dist.nproc_per_node > 1 a
training stage started as usual (`dvc repro`) runs itself again under `torch.distributed.run` as that many
ranks on this machine; started by torchrun (several nodes: `torchrun --nnodes ... -m stages.train_cnn`) it
joins the process group torchrun set up. The batch size in params is the global one, split evenly across
ranks, so N ranks take the same optimisation steps as one process (up to batch norm, whose statistics stay
per rank). Only rank 0 writes anything.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
from torch import nn

from petlab.core.errors import PipelineError
from petlab.core.runtime import cores_per_process, launched_by_torchrun


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """The one process that writes checkpoints, metrics, logs and prints progress."""
    return rank() == 0


def tqdm_disable() -> bool | None:
    """Progress bars where a terminal shows them (tqdm's None), on rank 0 only."""
    return None if is_main() else True


def launch_or_join(stage: str, nproc_per_node: int, batch_size: int, device: torch.device) -> bool:
    """Start the ranks, or be one of them. True: this process launched them and they have finished the stage.

    One process (nproc_per_node 1, not under torchrun) gets False at once, with nothing initialised.
    """
    if launched_by_torchrun():
        join(device)
        return False
    if nproc_per_node == 1:
        return False
    check_device(device, nproc_per_node)
    if batch_size % nproc_per_node:
        raise PipelineError(
            f"{stage}.batch_size = {batch_size} does not split evenly across "
            f"dist.nproc_per_node = {nproc_per_node} ranks; make it a multiple"
        )
    args = ["--standalone", f"--nproc-per-node={nproc_per_node}", "-m", f"stages.{stage}"]
    print(f"{stage}: {nproc_per_node} ranks on this machine, as `torchrun {' '.join(args)}`", flush=True)
    # Threads per rank from the cores this job may use; torchrun would otherwise set 1 (and warn).
    os.environ["OMP_NUM_THREADS"] = str(max(1, cores_per_process() // nproc_per_node))
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun's own logging and failure report would only repeat, at length, the line a failing rank prints.
    for name, logger in logging.Logger.manager.loggerDict.items():
        if name.startswith("torch.distributed") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)
    try:
        run(parse_args(args))
    except ChildFailedError as err:
        rank_failed, failure = err.get_first_failure()
        raise PipelineError(f"rank {rank_failed} failed (exit code {failure.exitcode}); its error is above") from None
    except SignalException:  # Ctrl-C or a kill reached torchrun, which has stopped the ranks
        raise KeyboardInterrupt from None
    return True


def check_device(device: torch.device, ranks: int) -> None:
    if device.type == "mps":
        raise PipelineError("dist.nproc_per_node > 1 needs device cpu or cuda (MPS has no distributed backend)")
    if device.type == "cuda" and ranks > torch.cuda.device_count():
        raise PipelineError(
            f"dist.nproc_per_node = {ranks} but this machine has {torch.cuda.device_count()} "
            "CUDA GPU(s): one rank per GPU"
        )


def join(device: torch.device) -> None:
    """Join torchrun's process group: NCCL between GPUs (each rank its own, LOCAL_RANK), gloo on the CPU. The stage
    runner leaves it after a clean finish only (petlab.core.stage.leave_process_group)."""
    check_device(device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def wrap(model: nn.Module) -> nn.Module:
    """The model that training steps run through: DistributedDataParallel averages gradients across ranks."""
    if world_size() == 1:
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def share_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (batch norm's running statistics, which each rank updates from its own batches) on
    every rank, so all ranks validate the model that rank 0 saves."""
    if world_size() > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def check_batch_per_rank(batch_size: int, minimum: int, key: str, why: str) -> None:
    """Refuse a global batch that leaves a rank fewer than `minimum` samples. Params can only check
    dist.nproc_per_node; ranks started by hand with torchrun (several nodes) are known only here."""
    if batch_size // world_size() < minimum:
        raise PipelineError(
            f"{key} = {batch_size} gives each of the {world_size()} ranks {batch_size // world_size()} "
            f"sample(s); {why} needs at least {minimum} per rank"
        )


def rank_batch_size(batch_size: int) -> int:
    """Each rank's share of the global batch size."""
    if batch_size % world_size():
        raise PipelineError(
            f"batch size {batch_size} does not split evenly across {world_size()} ranks; "
            "make the batch_size a multiple of the number of ranks"
        )
    return batch_size // world_size()


def gather_shards(local: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, interleaved back into one tensor on every rank (row i came from rank i % N).

    Shards must be the same size and dealt out round-robin (rank r holds rows r, r + N, ...), as
    DistributedSampler and EpochSampler deal them: the result is then in the order of one process.
    """
    if world_size() == 1:
        return local
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    local_on = local.to(on).contiguous()
    parts = [torch.empty_like(local_on) for _ in range(world_size())]
    dist.all_gather(parts, local_on)
    return torch.stack(parts, dim=1).flatten(0, 1).to(local.device)


def gather_objects(obj) -> list:
    """Every rank's `obj` (anything picklable), in rank order, on every rank; [obj] for one process."""
    if world_size() == 1:
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    return gather_shards(value.reshape(1)).sum() if world_size() > 1 else value
