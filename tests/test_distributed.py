"""Several ranks (gloo, on the CPU) take the same steps as one process, and evaluate the whole split."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from petlab.core.device import Precision
from petlab.core.errors import PipelineError
from petlab.core.params import LoaderParams, OptimParams
from petlab.core.runtime import cores_per_process, seed_everything
from petlab.data.dataset import ImageDataset
from petlab.data.loaders import EpochSampler, make_loader
from petlab.data.transforms import TransformSpec, eval_transform, train_transform
from petlab.models.cnn import SimpleCNN
from petlab.train.loop import StepContext, fit

SPEC = TransformSpec(size=16)
BATCH = 8  # global: 4 a rank on two ranks


def write_images(folder, count: int, num_classes: int = 3) -> list:
    g = torch.Generator().manual_seed(count)
    items = []
    for i in range(count):
        path = folder / f"{i:03d}.png"
        Image.fromarray(torch.randint(0, 256, (20, 24, 3), generator=g, dtype=torch.uint8).numpy()).save(path)
        items.append((path, i % num_classes))
    return items


def train_small_cnn(train_items, val_items):
    """Two epochs of the project's loop on augmented images; batch norm and dropout off (both per rank)."""
    seed_everything(0)
    model = SimpleCNN(3, [4, 8], dropout=0.0, batch_norm=False)
    loader_params = LoaderParams(num_workers=0)
    cpu = torch.device("cpu")
    train = make_loader(
        ImageDataset(train_items, train_transform(SPEC, "rrc"), seed=0), BATCH, True, 0, cpu, loader_params
    )
    val = make_loader(ImageDataset(val_items, eval_transform(SPEC), seed=0), BATCH, False, 0, cpu, loader_params)
    optim = OptimParams(epochs=2, batch_size=BATCH, lr=0.01, warmup_epochs=0.5, label_smoothing=0.1)
    ctx = StepContext(cpu, Precision(None, False), input_spec=SPEC)
    return fit(model, train, val, optim, ctx, num_classes=3)


def run_rank(rank: int, world: int, port: int, train_items, val_items, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = train_small_cnn(train_items, val_items)
        seed_everything(0)  # as every stage seeds
        mask = torch.nn.Dropout(0.5).train()(torch.ones(64)) == 0  # the mask a rank's dropout draws first
        torch.save(
            {"history": result.history, "state": result.best_state, "best_val": result.best_val, "dropout_mask": mask},
            out / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_with_half_batches_match_one_process(tmp_path):
    # 26 training images: 3 steps an epoch, and a tail that one process and two ranks both leave out;
    # 11 validation images: an odd count, so the ranks' shards are padded and the gather must trim.
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    train_items, val_items = write_images(tmp_path / "train", 26), write_images(tmp_path / "val", 11)
    one = train_small_cnn(train_items, val_items)
    mp.spawn(run_rank, args=(2, free_port(), train_items, val_items, tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    assert len(one.history) == 2
    # Each rank draws its own dropout masks (rank 0 those of one process): not B / N masks for a global batch of B.
    # That the ranks' training still repeats byte for byte, resumed or not: test_resume.py, two ranks with dropout.
    seed_everything(0)
    assert torch.equal(ranks[0]["dropout_mask"], torch.nn.Dropout(0.5).train()(torch.ones(64)) == 0)
    assert not torch.equal(ranks[0]["dropout_mask"], ranks[1]["dropout_mask"])
    for two in ranks:  # every rank holds the same, whole-epoch and whole-split numbers
        for row_one, row_two in zip(one.history, two["history"], strict=True):
            for key in ("train_loss", "val_loss"):
                assert row_two[key] == pytest.approx(row_one[key], abs=1e-5)
            for key in ("train_accuracy", "val_accuracy", "val_macro_f1", "lr"):
                assert row_two[key] == pytest.approx(row_one[key], abs=1e-6)
        assert two["best_val"] == pytest.approx(one.best_val, abs=1e-5)
        for name, tensor in one.best_state.items():  # 6 steps in, the weights are still the same
            torch.testing.assert_close(two["state"][name], tensor, atol=1e-5, rtol=0)


def test_epoch_sampler_shards_deal_out_one_process_order():
    whole = EpochSampler(10, shuffle=True, seed=3)
    shards = [EpochSampler(10, shuffle=True, seed=3, rank=r, num_replicas=3) for r in range(3)]
    for _ in range(2):  # two epochs: the order and the epoch tags move on together
        order = list(whole)
        dealt = [list(s) for s in shards]
        assert all(len(d) == 3 for d in dealt)
        assert [d[i] for i in range(3) for d in dealt] == order[:9]


def test_cores_are_shared_among_parallel_jobs(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("PETLAB_JOBS", "1")
    assert cores_per_process() == cores
    monkeypatch.setenv("PETLAB_JOBS", str(2 * cores))
    assert cores_per_process() == 1  # never below one
    monkeypatch.setenv("PETLAB_JOBS", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert cores_per_process() == max(1, cores // 2)
    monkeypatch.setenv("PETLAB_JOBS", "two")
    with pytest.raises(PipelineError, match="PETLAB_JOBS"):
        cores_per_process()


def test_a_global_batch_too_small_for_the_ranks_is_refused_in_one_line(monkeypatch):
    """Ranks started by hand with torchrun (several nodes) are not in the params: checked once joined."""
    from petlab.core import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 8)
    distributed.check_batch_per_rank(16, 2, "train_cnn.batch_size", "BatchNorm")
    with pytest.raises(
        PipelineError,
        match=r"^train_cnn\.batch_size = 8 gives each of the 8 ranks 1 sample\(s\); "
        r"BatchNorm needs at least 2 per rank$",
    ):
        distributed.check_batch_per_rank(8, 2, "train_cnn.batch_size", "BatchNorm")
