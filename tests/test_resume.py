"""A training loop stopped during an epoch continues from the end of the one before, to the same result byte for
byte; anything else (other inputs, an unreadable checkpoint) starts from scratch and says why in one line."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from test_distributed import free_port, write_images

from petlab.core.device import Precision
from petlab.core.params import LoaderParams, OptimParams, parse_params
from petlab.core.resume import Resume, path_digest, stage_inputs
from petlab.core.runtime import seed_everything
from petlab.data.dataset import ImageDataset
from petlab.data.loaders import make_loader
from petlab.data.transforms import TransformSpec, eval_transform, train_transform
from petlab.models.cnn import SimpleCNN
from petlab.train.loop import StepContext, fit

SPEC = TransformSpec(size=16)


class StoppedIn(ImageDataset):
    """Raises KeyboardInterrupt (as Ctrl-C does) at the first sample of epoch `stop` (1-based), if any."""

    def __init__(self, items, transform, seed: int, stop: int | None):
        super().__init__(items, transform, seed)
        self.stop = stop

    def __getitem__(self, k: int):
        if self.stop is not None and k // len(self.items) == self.stop - 1:
            raise KeyboardInterrupt
        return super().__getitem__(k)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    (folder / "train").mkdir()
    (folder / "val").mkdir()
    return write_images(folder / "train", 26), write_images(folder / "val", 11)


def train(
    images,
    optim: OptimParams,
    resume: Resume | None = None,
    stop: int | None = None,
    workers: int = 0,
    precision: Precision | None = None,
):
    """A small CNN with dropout and batch norm (the RNG and the buffers matter), on augmented images."""
    seed_everything(0)
    model = SimpleCNN(3, [4, 8], dropout=0.3, batch_norm=True)
    cpu, loader = torch.device("cpu"), LoaderParams(num_workers=workers)
    train_loader = make_loader(StoppedIn(images[0], train_transform(SPEC, "rrc"), 0, stop), 8, True, 0, cpu, loader)
    val_loader = make_loader(ImageDataset(images[1], eval_transform(SPEC), seed=0), 8, False, 0, cpu, loader)
    return fit(
        model,
        train_loader,
        val_loader,
        optim,
        StepContext(cpu, precision or Precision(None, False), input_spec=SPEC),
        3,
        name="net",
        resume=resume,
    )


def same_result(a, b) -> bool:
    return (
        a.history == b.history
        and a.best_epoch == b.best_epoch
        and a.best_val == b.best_val
        and a.best_state.keys() == b.best_state.keys()
        and all(torch.equal(a.best_state[k], b.best_state[k]) for k in a.best_state)
    )


def resume_in(tmp_path, lr: float) -> Resume:
    return Resume(tmp_path / "resume" / "net.pt", lambda: {"cmd": "train", "params": {"lr": lr}, "deps": {}}, "net")


@pytest.mark.parametrize(
    "optim,precision",
    [
        (OptimParams(epochs=4, batch_size=8, lr=0.01, warmup_epochs=0.5), Precision(None, True)),  # with GradScaler
        (
            OptimParams(epochs=4, batch_size=8, lr=0.01, warmup_epochs=1.0, scheduler="plateau", plateau_patience=0),
            Precision(None, False),
        ),
    ],
    ids=["cosine_gradscaler", "plateau"],
)
def test_stopped_during_epoch_3_it_resumes_after_epoch_2_with_the_same_result(
    images, tmp_path, capsys, optim, precision
):
    reference = train(images, optim, precision=precision)
    resume = resume_in(tmp_path, optim.lr)
    with pytest.raises(KeyboardInterrupt):
        train(images, optim, resume, stop=3, precision=precision)
    assert "net: epoch 2/4" in capsys.readouterr().out and resume.path.is_file()

    resumed = train(images, optim, resume, precision=precision)
    out = capsys.readouterr().out
    assert f"net: resumed after epoch 2 ({resume.path})\n" in out
    assert "net: epoch 1/4" not in out and "net: epoch 3/4" in out  # epochs 1 and 2 kept, not trained again
    assert same_result(resumed, reference)
    assert len(resumed.epoch_seconds) == 4  # the first two from the stopped run

    resume.remove()
    assert not resume.path.exists() and not resume.path.parent.exists()


def test_other_inputs_or_an_unreadable_checkpoint_start_from_scratch_in_one_line(images, tmp_path, capsys):
    optim = OptimParams(epochs=3, batch_size=8, lr=0.01, warmup_epochs=0.5)
    reference = train(images, optim)
    with pytest.raises(KeyboardInterrupt):
        train(images, optim, resume_in(tmp_path, 0.01), stop=2)
    capsys.readouterr()

    changed = train(images, optim, resume_in(tmp_path, 0.02))  # as if params.yaml said lr 0.02 now
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "scratch" in line] == [
        f"net: starting from scratch: {tmp_path / 'resume' / 'net.pt'} (after epoch 1) was made with other "
        "inputs: params changed (lr)"
    ]
    assert "resumed" not in out and same_result(changed, reference)

    path = resume_in(tmp_path, 0.01).path
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, as by a full disk
    again = train(images, optim, resume_in(tmp_path, 0.01))
    out = capsys.readouterr().out
    scratch = [line for line in out.splitlines() if "scratch" in line]
    assert len(scratch) == 1 and scratch[0].startswith(f"net: starting from scratch: {path} cannot be read (")
    assert "Traceback" not in out and same_result(again, reference)

    path.write_bytes(b"not a checkpoint")
    train(images, optim, resume_in(tmp_path, 0.01))
    assert "cannot be read" in capsys.readouterr().out


def test_training_does_not_depend_on_the_number_of_loader_workers(images):
    """DataLoader draws its workers' seed from the loader's generator, not from the RNG dropout draws from."""
    optim = OptimParams(epochs=2, batch_size=8, lr=0.01, warmup_epochs=0.5)
    assert same_result(train(images, optim, workers=0), train(images, optim, workers=2))


def test_a_stage_is_keyed_by_its_command_params_and_every_file_of_its_deps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.py").write_text("a = 1\n")
    (tmp_path / "code" / "__pycache__").mkdir()
    (tmp_path / "data.txt").write_text("data\n")
    stage = {
        "cmd": "python -m stages.train_cnn",
        "deps": ["code", "data.txt", "missing"],
        "params": ["seed", "train_cnn.lr"],
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train_cnn": stage}}))
    params = parse_params({"train_cnn": {"lr": 0.01}})
    inputs = stage_inputs("train_cnn", params)
    assert inputs["params"] == {"seed": 42, "train_cnn.lr": 0.01}
    assert inputs["deps"]["missing"] is None and inputs["cmd"] == stage["cmd"]

    (tmp_path / "code" / "__pycache__" / "a.pyc").write_bytes(b"\0")  # byte code follows the sources
    assert stage_inputs("train_cnn", params) == inputs
    before = path_digest(tmp_path / "code")
    (tmp_path / "code" / "b.py").write_text("")
    assert path_digest(tmp_path / "code") != before
    (tmp_path / "data.txt").write_text("other data\n")
    changed = stage_inputs("train_cnn", parse_params({"train_cnn": {"lr": 0.02}}))
    assert changed["params"]["train_cnn.lr"] == 0.02 and changed["deps"]["data.txt"] != inputs["deps"]["data.txt"]
    assert stage_inputs("train_vit", params) is None  # not in dvc.yaml: no checkpoint is kept
    unkeyed = Resume.for_stage("train_vit", params)
    unkeyed.save({}, {"epoch": 1})
    assert unkeyed.load({}) is None and not unkeyed.path.exists()


def resume_on_ranks(rank: int, world: int, port: int, images, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        optim = OptimParams(epochs=3, batch_size=8, lr=0.01, warmup_epochs=0.5)
        reference = train(images, optim)
        resume = resume_in(out, optim.lr)
        with pytest.raises(KeyboardInterrupt):
            train(images, optim, resume, stop=2)
        dist.barrier()  # rank 0 has written the checkpoint (a restarted run comes long after)
        resumed = train(images, optim, resume, stop=1)  # raises if any rank trains epoch 1 again
        torch.save(
            {"same": same_result(resumed, reference), "checkpoint": resume.path.is_file()}, out / f"rank{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_resume_from_rank_0s_checkpoint_each_with_its_own_generators(images, tmp_path):
    mp.spawn(resume_on_ranks, args=(2, free_port(), images, tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks == [{"same": True, "checkpoint": True}] * 2
    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == ["net.pt"]  # one file, rank 0's
