"""Schedules of the one training loop (cosine, plateau) and the fine-tuning route of train_vit."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from petlab.core.device import Precision
from petlab.core.params import LoaderParams, OptimParams, parse_params
from petlab.core.runtime import seed_everything
from petlab.train.loop import StepContext, fit, make_optimizer, predict


def lrs(optimizer) -> list[float]:
    return [round(g["lr"], 8) for g in optimizer.param_groups]


def test_cosine_schedule_warms_up_then_decays_and_ignores_val_loss():
    optim = OptimParams(epochs=4, lr=1.0, warmup_epochs=1.0)
    optimizer, schedule = make_optimizer([nn.Parameter(torch.zeros(2, 2))], optim, steps_per_epoch=2)
    seen = []
    for _ in range(4):
        for _ in range(2):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()  # the schedule follows the optimizer's updates
        schedule.epoch_end(1.0)
    assert seen[:3] == [0.5, 1.0, 1.0]  # warmup reaches the lr; cosine starts from it
    assert all(a > b for a, b in zip(seen[2:], seen[3:])) and seen[-1] < 0.2


def test_plateau_schedule_cuts_the_lr_when_val_loss_stalls_after_warmup():
    optim = OptimParams(
        epochs=10, lr=1.0, warmup_epochs=1.0, scheduler="plateau", plateau_factor=0.5, plateau_patience=1
    )
    param = nn.Parameter(torch.zeros(2, 2))
    optimizer, schedule = make_optimizer(
        [{"params": [param]}, {"params": [nn.Parameter(torch.zeros(3, 3))], "lr": 0.1}], optim, steps_per_epoch=2
    )
    assert lrs(optimizer)[::2] == [0.5, 0.05]  # warming up; each group from its own lr
    per_epoch = []
    for val_loss in [3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0]:
        for _ in range(2):
            optimizer.step()
        schedule.epoch_end(val_loss)
        per_epoch.append(lrs(optimizer)[0])
    # Improving, then two epochs without improvement (> patience 1) halve the lr, and again two later.
    assert per_epoch == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert lrs(optimizer)[2] == 0.025  # the other group is cut alike
    optimizer.step()
    assert lrs(optimizer)[0] == 0.25  # updates after warmup leave the plateau's lr alone


def test_fit_feeds_the_val_loss_to_the_plateau_schedule():
    """A validation model that cannot improve: with patience 0 the lr is cut after every epoch but the first."""
    seed_everything(0)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    model, frozen = nn.Linear(4, 2), nn.Linear(4, 2).requires_grad_(False)
    optim = OptimParams(
        epochs=4, batch_size=8, lr=0.1, warmup_epochs=0.0, scheduler="plateau", plateau_factor=0.1, plateau_patience=0
    )
    from petlab.data.loaders import make_loader

    cpu = torch.device("cpu")
    loader = make_loader(TensorDataset(x, y), 8, True, 0, cpu, LoaderParams(num_workers=0))
    val = make_loader(TensorDataset(x, y), 8, False, 0, cpu, LoaderParams(num_workers=0))
    result = fit(model, loader, val, optim, StepContext(cpu, Precision(None, False)), 2, eval_model=frozen)
    assert [row["lr"] for row in result.history] == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_scheduler_param_is_checked():
    assert parse_params({"train_vit": {"model": "test_vit", "scheduler": "plateau"}}).train_vit.scheduler == "plateau"
    with pytest.raises(Exception, match="train_cnn.scheduler"):
        parse_params({"train_cnn": {"scheduler": "step"}})


def test_fine_tuning_trains_named_parts_and_evaluates_through_images(tmp_path, fake_pets):
    from petlab.core.outputs import load_torch
    from petlab.core.params import DataParams
    from petlab.data.dataset import PreparedData
    from petlab.measure.evaluation import probe_logits
    from petlab.prepare.splits import prepare_dataset
    from petlab.probe.recipe import build_probe, train_probe
    from petlab.train.run import image_loader, save_trained, transform_spec

    prepare_dataset(DataParams(root=str(fake_pets), max_side=64, val_fraction=0.25), 0, tmp_path / "data")
    data = PreparedData.open(tmp_path / "data")
    params = parse_params(
        {
            "device": "cpu",
            "loader": {"num_workers": 0},
            "train_vit": {
                "model": "test_vit",
                "pretrained": False,
                "unfreeze": ["blocks.1"],
                "backbone_lr": 0.01,
                "head": "mlp",
                "head_hidden": 8,
                "epochs": 1,
                "batch_size": 8,
                "warmup_epochs": 0.0,
                "amp": False,
                "scheduler": "plateau",
            },
        }
    )
    seed_everything(params.seed)
    initial, _ = build_probe(params.train_vit, data.num_classes)
    seed_everything(params.seed)
    trained = train_probe(params, data, tmp_path / "runs", tmp_path / "features.pt")

    assert trained.summary["route"] == "fine_tuned"
    assert not any(k.endswith("/features") for k in load_torch(tmp_path / "features.pt"))  # nothing cached
    before, after = initial.state_dict(), trained.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("backbone.blocks.1.", "head.")) for k in changed)
    assert any(k.startswith("backbone.blocks.1.") for k in changed)

    save_trained(
        "train_vit",
        trained,
        data.class_names,
        tmp_path / "vit.pt",
        tmp_path / "m.json",
        tmp_path / "plots",
        tmp_path / "t.csv",
    )
    checkpoint = load_torch(tmp_path / "vit.pt")
    assert checkpoint["model_config"]["info"]["feature_cache"] is False
    logits, labels = probe_logits(checkpoint, params, data, "test")  # reads no feature cache
    assert logits.shape == (len(data.items("test")), data.num_classes)
    model = trained.model.eval()
    spec = transform_spec(checkpoint["model_config"])
    loader = image_loader(data, "test", spec, 16, False, torch.device("cpu"), seed=params.seed, loader=params.loader)
    direct, direct_labels = predict(
        model, loader, StepContext(torch.device("cpu"), Precision(None, False), input_spec=spec)
    )
    assert torch.allclose(logits, direct, atol=1e-5) and torch.equal(labels, direct_labels)
