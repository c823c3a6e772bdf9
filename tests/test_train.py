import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from petlab.data import make_loader
from petlab.params import LoaderParams, OptimParams
from petlab.runtime import Precision, seed_everything
from petlab.train import HISTORY_COLUMNS, StepContext, fit, make_optimizer, predict, selection_key, validate

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
    return (make_loader(TensorDataset(x[train], y[train]), 64, True, 0, torch.device("cpu"), loader),
            make_loader(TensorDataset(x[val], y[val]), 128, False, 0, torch.device("cpu"), loader))


def small_cnn():
    from petlab.models import SimpleCNN

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
    train, val = order[:n_train], order[n_train:n_train + n_val]
    loader = LoaderParams(num_workers=0)
    return (make_loader(TensorDataset(x[train], y[train]), batch_size, True, 0, torch.device("cpu"), loader),
            make_loader(TensorDataset(x[val], y[val]), 64, False, 0, torch.device("cpu"), loader))


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
    assert validate(head, val_loader, nn.CrossEntropyLoss(), CPU, 10)["loss"] == pytest.approx(result.best_val["loss"],
                                                                                                abs=1e-5)


def test_fit_warns_when_the_batch_is_larger_than_the_train_split(capsys):
    seed_everything(0)
    train_loader, val_loader = digits_feature_loaders(20, 10, 64)
    result = fit(nn.Linear(64, 10), train_loader, val_loader, OptimParams(epochs=2, batch_size=64), CPU, 10,
                 name="probe")
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
        optimizer.step()
        scheduler.step()
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert max(lrs) == pytest.approx(1.0)
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[30] == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 40)))


def test_weight_decay_spares_biases_and_norms():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    optimizer, _ = make_optimizer(model.parameters(), OptimParams(weight_decay=0.1), steps_per_epoch=1)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}


def test_bf16_step_on_cpu_gives_close_loss_to_fp32():
    from petlab.runtime import cpu_supports_bf16
    from petlab.train import train_step

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
