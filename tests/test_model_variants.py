"""The from-scratch baselines (simple_cnn, mlp, resnet, vgg) and the transfer variants (unfreeze, MLP head)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from petlab.core.errors import PipelineError
from petlab.core.params import ParamsError, parse_params
from petlab.models.backbone import FrozenBackboneClassifier, unfreeze_backbone
from petlab.models.cnn import SmallResNet
from petlab.models.registry import create_model
from petlab.probe.recipe import build_probe
from petlab.train.cnn import cnn_config

ARCHS = ["simple_cnn", "mlp", "resnet", "vgg"]


def cnn_params(**train_cnn):
    return parse_params({"train_cnn": {"image_size": 32, "widths": [8, 16, 32], **train_cnn}}).train_cnn


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("batch_norm", [True, False])
def test_baseline_forward_and_batch_norm_switch(arch, batch_norm):
    torch.manual_seed(0)
    model = create_model(cnn_config(cnn_params(arch=arch, batch_norm=batch_norm), num_classes=5))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bool(norms) == batch_norm
    model.train()
    x = torch.randn(4, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (4, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(x[:1]).shape == (1, 5)  # one image in eval mode: BatchNorm uses running statistics


def test_config_rebuilds_the_same_model_and_mlp_needs_its_input_size():
    config = cnn_config(cnn_params(arch="mlp", widths=[64, 32]), num_classes=3)
    assert config["kind"] == "mlp" and config["input_size"] == 32
    model = create_model(config)
    rebuilt = create_model(config)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), rebuilt.eval()(x))
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 3, 28, 28))  # an MLP is tied to one input size, unlike the conv nets
    assert parse_params({"train_cnn": {"arch": "mlp", "image_size": 16, "widths": [8] * 6}})  # no halving limit
    with pytest.raises(ParamsError, match="train_cnn.arch"):
        parse_params({"train_cnn": {"arch": "alexnet"}})


def test_resnet_blocks_have_shortcuts_that_change_shape_only_between_stages():
    model = SmallResNet(num_classes=4, widths=[8, 16], dropout=0.0, batch_norm=True)
    blocks = [m for m in model.modules() if m.__class__.__name__ == "BasicBlock"]
    assert len(blocks) == 4
    assert [isinstance(b.shortcut, nn.Identity) for b in blocks] == [True, True, False, True]
    assert model.features(torch.randn(1, 3, 32, 32)).shape == (1, 16, 16, 16)


def test_crop_pad_evaluates_the_whole_image():
    assert cnn_config(cnn_params(augment="crop_pad"), 2)["transform"]["crop_pct"] == 1.0
    assert cnn_config(cnn_params(augment="rrc"), 2)["transform"]["crop_pct"] == 0.875


def test_crop_pad_shifts_the_image_within_a_zero_border():
    from PIL import Image

    from petlab.core.runtime import seeded_rng
    from petlab.data.transforms import TransformSpec, train_transform

    transform = train_transform(TransformSpec(size=32, mean=(0, 0, 0), std=(1, 1, 1), crop_pct=1.0), "crop_pad")
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    outputs = []
    for seed in range(20):
        with seeded_rng(seed):
            outputs.append(transform(white))
    assert all(x.shape == (3, 32, 32) for x in outputs)
    black_rows = [int((x[0] == 0).all(1).sum()) + int((x[0] == 0).all(0).sum()) for x in outputs]
    assert 1 <= max(black_rows) <= 8  # padding of 32 // 8 = 4 px a side at most
    assert len(set(black_rows)) > 1  # a different shift per seed


def probe_params(**train_vit):
    return parse_params({"train_vit": {"model": "test_vit", "pretrained": False, **train_vit}}).train_vit


def test_linear_probe_trains_only_the_head():
    model, config = build_probe(probe_params(), num_classes=3)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert isinstance(model.head, nn.Linear) and config["info"]["feature_cache"] is True
    assert not model.trains_backbone
    assert not model.features(torch.randn(1, 3, 160, 160)).requires_grad


def test_unfreeze_makes_exactly_the_named_parts_trainable():
    model, config = build_probe(probe_params(unfreeze=["blocks.1", "norm"]), num_classes=3)
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("blocks.1.", "norm.")) for n in trainable)
    assert trainable == {n for n, _ in model.backbone.named_parameters() if n.startswith(("blocks.1.", "norm."))}
    assert config["unfreeze"] == ["blocks.1", "norm"] and config["info"]["feature_cache"] is False
    rebuilt = create_model(config)
    assert {n for n, p in rebuilt.backbone.named_parameters() if p.requires_grad} == trainable
    model.train()
    assert not model.backbone.training  # frozen statistics and dropout even while parts fine-tune
    model(torch.randn(2, 3, 160, 160)).sum().backward()
    grads = {n for n, p in model.backbone.named_parameters() if p.grad is not None}
    assert grads == trainable


def test_unfreeze_prefix_is_a_whole_name_part():
    backbone = nn.Module()
    backbone.blocks = nn.ModuleList(nn.Linear(2, 2) for _ in range(12))
    backbone.requires_grad_(False)
    unfreeze_backbone(backbone, ["blocks.1"])
    assert {n for n, p in backbone.named_parameters() if p.requires_grad} == {"blocks.1.weight", "blocks.1.bias"}


def test_unfreeze_of_an_unknown_part_names_the_parts():
    with pytest.raises(PipelineError, match=r"'layer4' names no parameter.*blocks.*patch_embed"):
        build_probe(probe_params(unfreeze=["layer4"]), num_classes=3)


def test_unfreeze_works_for_timm_resnet_layer4():
    import timm

    model = FrozenBackboneClassifier(timm.create_model("resnet18", pretrained=False, num_classes=0), 4, ["layer4"])
    trainable = {n.split(".")[0] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer4"}


def test_mlp_head_with_dropout():
    model, config = build_probe(probe_params(head="mlp", head_hidden=16, head_dropout=0.5), num_classes=3)
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 16), (16, 3)]
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.head.modules())
    rebuilt = create_model(config)
    rebuilt.load_state_dict(model.state_dict())  # same structure from the saved config
    with pytest.raises(ParamsError, match="train_vit.head_dropout"):
        probe_params(head_dropout=1.0)
