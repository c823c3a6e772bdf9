import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import TensorDataset

from petlab.core.device import Precision
from petlab.core.params import LoaderParams, OptimParams
from petlab.core.runtime import seed_everything
from petlab.data.loaders import make_loader
from petlab.train.loop import HISTORY_COLUMNS, StepContext, fit, make_optimizer, predict, validate
from petlab.train.state import selection_key

CPU = StepContext(torch.device("cpu"), Precision(None, False))


def digits_loaders():
    """scikit-learn's real 8x8 handwritten digits, as 3-channel images."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).div(16).unsqueeze(1).repeat(1, 3, 1, 1)
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    train, val = order[:1400], order[1400:]
    loader = LoaderParams(num_workers=0)
    return (
        make_loader(TensorDataset(x[train], y[train]), 64, True, 0, torch.device("cpu"), loader),
        make_loader(TensorDataset(x[val], y[val]), 128, False, 0, torch.device("cpu"), loader),
    )


def small_cnn():
    from petlab.models.cnn import SimpleCNN

    return SimpleCNN(10, [16, 32], dropout=0.1)


def test_fit_learns_real_digits_and_keeps_the_best_epoch():
    seed_everything(0)
    train_loader, val_loader = digits_loaders()
    model = small_cnn()
    optim = OptimParams(epochs=6, lr=3e-3, weight_decay=0.01, warmup_epochs=1, label_smoothing=0.1)
    result = fit(model, train_loader, val_loader, optim, CPU, num_classes=10)
    assert result.best_val["accuracy"] > 0.9  # chance is 0.1
    assert len(result.history) == 6 and set(result.history[0]) == set(HISTORY_COLUMNS)
    assert len(result.epoch_seconds) == 6 and all(s > 0 for s in result.epoch_seconds)  # wall times kept apart
    best = max(result.history, key=lambda r: selection_key({"macro_f1": r["val_macro_f1"], "loss": r["val_loss"]}))
    assert result.best_epoch == best["epoch"]
    # The kept state is the best epoch's, not the last one's.
    model.load_state_dict(result.best_state)
    logits, labels = predict(model, val_loader, CPU)
    assert (logits.argmax(1) == labels).float().mean().item() == pytest.approx(result.best_val["accuracy"], abs=1e-6)


def digits_feature_loaders(n_train: int, n_val: int, batch_size: int):
    """The digits' 64 pixels as features (in [0, 1]), a seeded draw of n_train for training and n_val for val."""
    digits = load_digits()
    x, y = torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = order[:n_train], order[n_train : n_train + n_val]
    loader = LoaderParams(num_workers=0)
    return (
        make_loader(TensorDataset(x[train], y[train]), batch_size, True, 0, torch.device("cpu"), loader),
        make_loader(TensorDataset(x[val], y[val]), 64, False, 0, torch.device("cpu"), loader),
    )


def test_selection_keeps_the_trained_head_when_a_tiny_val_set_ties():
    """10 val images (some classes absent): val macro-F1 stops moving after two epochs. Keeping the earliest
    best macro-F1 kept that barely trained head; ties now go to the lowest val loss, late in training."""
    seed_everything(0)
    train_loader, val_loader = digits_feature_loaders(300, 10, 32)
    head = nn.Linear(64, 10)
    optim = OptimParams(epochs=12, batch_size=32, lr=0.03, warmup_epochs=0.0, weight_decay=0.0, label_smoothing=0.0)
    result = fit(head, train_loader, val_loader, optim, CPU, num_classes=10)
    history = result.history
    best_f1 = max(row["val_macro_f1"] for row in history)
    tied = [row for row in history if row["val_macro_f1"] == best_f1]
    earliest = tied[0]["epoch"]  # what the earliest-tie rule kept
    assert earliest <= 3 and len(tied) >= 8
    assert result.best_epoch == min(tied, key=lambda row: row["val_loss"])["epoch"] > earliest
    assert history[result.best_epoch - 1]["train_loss"] < history[earliest - 1]["train_loss"] / 3
    head.load_state_dict(result.best_state)  # the state kept is the one the record describes
    assert validate(head, val_loader, nn.CrossEntropyLoss(), CPU, 10)["loss"] == pytest.approx(
        result.best_val["loss"], abs=1e-5
    )


def test_fit_warns_when_the_batch_is_larger_than_the_train_split(capsys):
    seed_everything(0)
    train_loader, val_loader = digits_feature_loaders(20, 10, 64)
    result = fit(
        nn.Linear(64, 10), train_loader, val_loader, OptimParams(epochs=2, batch_size=64), CPU, 10, name="probe"
    )
    assert result.steps_per_epoch == 1
    assert "probe: WARNING: batch_size 64 is larger than the 20 training samples" in capsys.readouterr().out


def test_fit_is_deterministic_on_cpu():
    runs = []
    for _ in range(2):
        seed_everything(1)
        train_loader, val_loader = digits_loaders()
        runs.append(fit(small_cnn(), train_loader, val_loader, OptimParams(epochs=2), CPU, num_classes=10))
    assert runs[0].history == runs[1].history
    assert all(torch.equal(runs[0].best_state[k], runs[1].best_state[k]) for k in runs[0].best_state)


def test_schedule_warms_up_linearly_then_decays_to_zero():
    model = nn.Linear(2, 2)
    optim = OptimParams(epochs=10, lr=1.0, warmup_epochs=2)
    optimizer, scheduler = make_optimizer(model.parameters(), optim, steps_per_epoch=5)
    lrs = []
    for _ in range(50):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # the schedule follows the optimizer's updates
    assert scheduler.updates == 50
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert max(lrs) == pytest.approx(1.0)
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[30] == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 40)))


class HandWrittenSchedule:
    """The reference: warmup, cosine and plateau written out by hand with torch's LambdaLR and ReduceLROnPlateau.
    LRSchedule must give the same lr at every update."""

    def __init__(self, optimizer, optim: OptimParams, steps_per_epoch: int):
        total = max(1, optim.epochs * steps_per_epoch)
        self.warmup = int(round(optim.warmup_epochs * steps_per_epoch))
        self.steps = 0
        self.plateau = None
        if optim.scheduler == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=optim.plateau_factor, patience=optim.plateau_patience
            )

        def factor(step: int) -> float:
            if step < self.warmup:
                return (step + 1) / self.warmup
            if self.plateau is not None:
                return 1.0
            progress = (step - self.warmup) / max(1, total - self.warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        self.per_step = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def step(self) -> None:
        self.steps += 1
        if self.plateau is None or self.steps <= self.warmup:
            self.per_step.step()

    def epoch_end(self, val_loss: float) -> None:
        if self.plateau is not None and self.steps >= self.warmup:
            self.plateau.step(val_loss)


def two_groups(lr: float | None) -> list[dict]:
    """A head at the optim's lr and, with `lr`, a backbone at its own (as train_vit.backbone_lr)."""
    groups = [{"params": [nn.Parameter(torch.zeros(3, 3)), nn.Parameter(torch.zeros(3))]}]
    if lr is not None:
        groups.append({"params": [nn.Parameter(torch.zeros(4, 4))], "lr": lr})
    return groups


@pytest.mark.parametrize("scheduler", ["cosine", "plateau"])
@pytest.mark.parametrize(
    "warmup_epochs,steps_per_epoch,backbone_lr",
    [(0.0, 5, None), (1.0, 5, None), (0.5, 3, 1e-4), (1.3, 7, 2e-5), (2.0, 1, 3e-4), (7.0, 4, None)],
)
def test_the_lr_of_every_update_is_the_hand_written_schedules(scheduler, warmup_epochs, steps_per_epoch, backbone_lr):
    optim = OptimParams(
        epochs=7, lr=3e-3, warmup_epochs=warmup_epochs, scheduler=scheduler, plateau_factor=0.5, plateau_patience=1
    )
    optimizer, schedule = make_optimizer(two_groups(backbone_lr), optim, steps_per_epoch)
    # One group per lr (make_optimizer splits each in two, with and without weight decay, at the same lr).
    reference_optimizer = torch.optim.AdamW(
        [{"params": g["params"], **({"lr": g["lr"]} if "lr" in g else {})} for g in two_groups(backbone_lr)],
        lr=optim.lr,
    )
    reference = HandWrittenSchedule(reference_optimizer, optim, steps_per_epoch)
    val_losses = [3.0, 2.0, 2.0, 2.0, 1.5, 1.5, 1.5]  # improving, then stalling: plateau cuts the lr twice
    compared = 0
    for val_loss in val_losses:
        for _ in range(steps_per_epoch):
            lrs = [g["lr"] for g in optimizer.param_groups[::2]]
            expected = [g["lr"] for g in reference_optimizer.param_groups]
            assert lrs == pytest.approx(expected, rel=1e-9, abs=0), f"update {compared}"
            compared += 1
            optimizer.step()
            reference_optimizer.step()
            reference.step()
        schedule.epoch_end(val_loss)
        reference.epoch_end(val_loss)
    assert compared == 7 * steps_per_epoch and schedule.updates == compared
    assert [g["lr"] for g in optimizer.param_groups[::2]] == pytest.approx(
        [g["lr"] for g in reference_optimizer.param_groups], rel=1e-9, abs=0
    )
    if scheduler == "plateau" and warmup_epochs < 3:
        assert optimizer.param_groups[0]["lr"] < optim.lr / 2  # the plateau did cut it


def test_steps_gradscaler_skips_leave_the_lr_schedule_where_it_is():
    """Overflowing fp16 gradients (here inf, injected in the first three steps): GradScaler skips those steps,
    and the lr must stay that of the first update until the optimizer really makes it."""
    seed_everything(0)
    train_loader, val_loader = digits_feature_loaders(160, 40, 32)  # 5 steps an epoch
    head = nn.Linear(64, 10)
    backward_passes = []

    def overflow_first_three(grad):
        backward_passes.append(1)
        return grad * math.inf if len(backward_passes) <= 3 else grad

    head.weight.register_hook(overflow_first_three)
    steps = []
    optim = OptimParams(epochs=3, batch_size=32, lr=0.01, warmup_epochs=1.0)
    scaled = StepContext(torch.device("cpu"), Precision(None, True))  # GradScaler on the CPU, with fp32
    counting = register_optimizer_step_post_hook(lambda *_: steps.append(1))
    try:
        result = fit(head, train_loader, val_loader, optim, scaled, num_classes=10)
    finally:
        counting.remove()
    assert len(backward_passes) == 15 and len(steps) == 12  # three steps skipped
    # Warmup over 5 updates: 2 made in epoch 1, so epoch 2 starts at the third update's lr.
    assert [row["lr"] for row in result.history] == pytest.approx(
        [0.01 / 5, 0.01 * 3 / 5, 0.5 * 0.01 * (1 + math.cos(math.pi * 2 / 10))], rel=1e-5
    )


def test_weight_decay_spares_biases_and_norms():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    optimizer, _ = make_optimizer(model.parameters(), OptimParams(weight_decay=0.1), steps_per_epoch=1)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}


def test_bf16_step_on_cpu_gives_close_loss_to_fp32():
    from petlab.core.device import cpu_supports_bf16
    from petlab.train.loop import train_step

    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    losses = []
    for ctx in (CPU, StepContext(torch.device("cpu"), Precision(torch.bfloat16, False), channels_last=True)):
        torch.manual_seed(0)
        model = small_cnn().to(memory_format=torch.channels_last if ctx.channels_last else torch.contiguous_format)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses.append([float(train_step(model, x, y, opt, nn.CrossEntropyLoss(), ctx, None)[0]) for _ in range(3)])
    assert losses[0] == pytest.approx(losses[1], rel=0.05)


HOST_COPIES = ("cpu", "item", "tolist", "numpy", "__float__", "__int__", "__bool__")


def count_host_copies(monkeypatch) -> list[str]:
    """Calls from the project's code that bring a tensor's values to the host: on a GPU, each waits for the
    device to finish the work queued before it. (On the CPU they cost nothing, but the calls are the same.)"""
    import sys
    from pathlib import Path

    package = str(Path(__file__).resolve().parents[1] / "petlab")
    calls = []
    for method in HOST_COPIES:
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, _method=method, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(package):
                calls.append(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    return calls


def test_an_epoch_copies_to_the_host_as_often_whatever_its_number_of_steps(monkeypatch):
    from petlab.train.loop import train_one_epoch

    calls = count_host_copies(monkeypatch)
    per_epoch = []
    for n_train in (64, 320):  # 2 and 10 steps
        seed_everything(0)
        train_loader, _ = digits_feature_loaders(n_train, 10, 32)
        head = nn.Linear(64, 10)
        optimizer, _ = make_optimizer(head.parameters(), OptimParams(epochs=1), len(train_loader))
        calls.clear()
        train_one_epoch(head, train_loader, optimizer, nn.CrossEntropyLoss(), CPU, 10)
        per_epoch.append(list(calls))
    assert per_epoch[0] == per_epoch[1] and len(per_epoch[0]) <= 6, per_epoch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_and_prediction_steps_never_wait_for_the_gpu():
    """CUDA's sync debug mode warns at every operation that waits for the device: none may happen per step."""
    import warnings

    from petlab.train.loop import train_one_epoch

    gpu = StepContext(torch.device("cuda"), Precision(torch.bfloat16, False))
    counts = []
    for n_train in (64, 320):
        seed_everything(0)
        x, y = torch.randn(n_train, 64), torch.randint(0, 10, (n_train,))
        pinned = LoaderParams(num_workers=0, pin_memory=True)  # as on CUDA by default: copies need not wait
        train_loader = make_loader(TensorDataset(x, y), 32, True, 0, gpu.device, pinned)
        val_loader = make_loader(TensorDataset(x, y), 32, False, 0, gpu.device, pinned)
        head = nn.Linear(64, 10).cuda()
        optimizer, _ = make_optimizer(head.parameters(), OptimParams(epochs=1), len(train_loader))
        train_one_epoch(head, train_loader, optimizer, nn.CrossEntropyLoss(), gpu, 10)  # first-call set-up
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_one_epoch(head, train_loader, optimizer, nn.CrossEntropyLoss(), gpu, 10)
                predict(head, val_loader, gpu)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchronizing" in str(w.message) for w in caught))
    assert counts[0] == counts[1], counts


class CopyRecorder:
    """A batch whose copies to a device are recorded (an MPS device cannot be made here)."""

    dtype = torch.int64

    def __init__(self):
        self.copies = []

    def dim(self) -> int:
        return 1

    def to(self, device, non_blocking=False, **kwargs):
        self.copies.append(non_blocking)
        return self


@pytest.mark.parametrize("device, non_blocking", [("cuda", True), ("mps", False), ("cpu", False)])
def test_labels_and_batches_are_copied_asynchronously_on_cuda_only(device, non_blocking):
    """torch has open reports of corrupted non-blocking CPU-to-MPS copies: the labels take the path the images take."""
    import inspect

    from petlab.train import loop as train

    labels = CopyRecorder()
    StepContext(torch.device(device), Precision(None, False)).to_device(labels)
    assert labels.copies == [non_blocking]
    step = inspect.getsource(train.train_step)
    assert "ctx.to_device(y)" in step and "non_blocking=True" not in step


def test_the_history_and_the_best_so_far_are_written_after_every_epoch(tmp_path):
    """What `dvc exp show` and `dvc plots show` read while a model trains: after epoch k, k history rows and the best
    of those k epochs; the final files (save_trained) are a run's without these writes, byte for byte."""
    import json

    from petlab.train.run import progress_writer

    metrics, history_file = tmp_path / "metrics.json", tmp_path / "history.csv"
    write = progress_writer(metrics, history_file)
    seen = []

    def on_epoch(history, best):
        write(history, best)
        seen.append((history_file.read_text().count("\n") - 1, json.loads(metrics.read_text())))

    runs = []
    for callback in (on_epoch, None):
        seed_everything(1)
        runs.append(fit(small_cnn(), *digits_loaders(), OptimParams(epochs=3), CPU, num_classes=10, on_epoch=callback))
    live, plain = runs
    assert [rows for rows, _ in seen] == [1, 2, 3]
    assert [m["last_epoch"] for _, m in seen] == [1, 2, 3] and all(m["in_progress"] for _, m in seen)
    assert seen[-1][1]["best_epoch"] == live.best_epoch and seen[-1][1]["val_macro_f1"] == live.best_val["macro_f1"]
    assert all(m["best_epoch"] <= m["last_epoch"] for _, m in seen)
    assert live.history == plain.history and live.best_epoch == plain.best_epoch
    assert not list(tmp_path.glob(".*.tmp"))
