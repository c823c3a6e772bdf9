"""Models: the registry, the CNN, the frozen-backbone probe, and loading weights from untrusted files."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import REPO
from torch import nn

from petlab.core.checksums import file_digest
from petlab.core.errors import PipelineError
from petlab.models.backbone import FrozenBackboneClassifier, hub_answers, load_pretrained_backbone, timm_data_config
from petlab.models.cnn import SimpleCNN
from petlab.models.registry import count_parameters, create_model


def test_simple_cnn_shapes_and_registry_roundtrip():
    config = {"kind": "simple_cnn", "num_classes": 5, "widths": [4, 8, 16], "dropout": 0.2, "transform": {"size": 32}}
    model = create_model(config)
    assert isinstance(model, SimpleCNN)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    # Global average pooling: any input size works.
    assert model(torch.randn(1, 3, 48, 40)).shape == (1, 5)
    twin = create_model(config)
    twin.load_state_dict(model.state_dict())


def test_unknown_model_kind_is_a_clear_error():
    with pytest.raises(PipelineError, match="unknown model kind 'nope'"):
        create_model({"kind": "nope"})


def test_probe_backbone_stays_frozen_and_in_eval_mode():
    model = create_model({"kind": "timm_probe", "num_classes": 3, "timm_model": "test_vit"})
    assert isinstance(model, FrozenBackboneClassifier)
    model.train()
    assert model.head.training and not model.backbone.training
    counts = count_parameters(model)
    assert counts["trainable"] == model.backbone.num_features * 3 + 3 < counts["total"]
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    loss = model(torch.randn(4, 3, 160, 160)).sum()
    loss.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())


def test_weights_file_is_loaded_into_the_backbone(test_vit_weights):
    backbone, source = load_pretrained_backbone("test_vit", pretrained=True, weights=str(test_vit_weights))
    reference = timm.create_model("test_vit", pretrained=False, num_classes=0)
    from safetensors.torch import load_file

    saved = load_file(str(test_vit_weights))
    assert torch.equal(backbone.patch_embed.proj.weight, saved["patch_embed.proj.weight"])
    assert not torch.equal(backbone.patch_embed.proj.weight, reference.patch_embed.proj.weight)
    assert source == f"file {test_vit_weights.resolve()}"


def test_preprocessing_comes_from_the_model_not_imagenet():
    backbone, _ = load_pretrained_backbone("vit_tiny_patch16_224", pretrained=False, weights=None)
    config = timm_data_config(backbone)
    assert tuple(config["mean"]) == (0.5, 0.5, 0.5) and tuple(config["std"]) == (0.5, 0.5, 0.5)


def test_missing_weights_file_names_the_param(tmp_path):
    with pytest.raises(PipelineError, match="train_vit.weights"):
        load_pretrained_backbone("test_vit", pretrained=True, weights=str(tmp_path / "missing.safetensors"))


def test_unreachable_hub_names_both_offline_ways():
    # A fresh process: huggingface_hub reads HF_HUB_OFFLINE when it is imported.
    code = (
        "from petlab.models.backbone import load_pretrained_backbone\n"
        "load_pretrained_backbone('test_vit', pretrained=True, weights=None)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert proc.returncode != 0
    assert "train_vit.weights" in proc.stderr and "HF_HUB_OFFLINE=1" in proc.stderr


def closed_port() -> int:
    """A local port that refuses connections: one the system just handed out, closed again."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def load_with_silent_hub(hf_home: Path) -> subprocess.CompletedProcess:
    """test_vit's hub weights in a fresh process whose hub does not answer, HF_HUB_OFFLINE unset."""
    code = (
        "from petlab.models.backbone import load_pretrained_backbone\n"
        "print(load_pretrained_backbone('test_vit', pretrained=True, weights=None)[1])"
    )
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE" and "proxy" not in key.lower()}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HOME=str(hf_home))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_a_hub_that_does_not_answer_stops_the_load_at_once(tmp_path):
    """Offline, the first stage stops with its one line, without the hub client's minute of retries."""
    proc = load_with_silent_hub(tmp_path / "hf")  # an empty cache: nothing to fall back on
    assert proc.returncode != 0 and "Retrying" not in proc.stderr, proc.stderr
    assert "does not answer" in proc.stderr and "train_vit.weights" in proc.stderr


def test_a_hub_that_does_not_answer_leaves_the_cache(tmp_path, test_vit_weights):
    import shutil

    snapshot = tmp_path / "hf/hub/models--timm--test_vit.r160_in1k/snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(test_vit_weights, snapshot / "model.safetensors")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs/main").write_text("0" * 40)
    proc = load_with_silent_hub(tmp_path / "hf")
    assert proc.returncode == 0 and "Retrying" not in proc.stderr, proc.stderr
    assert "test_vit" in proc.stdout


def test_hub_answers_only_where_a_port_accepts(monkeypatch):
    import socket

    for key in [key for key in os.environ if "proxy" in key.lower()]:
        monkeypatch.delenv(key)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert hub_answers(f"http://127.0.0.1:{port}")
        assert not hub_answers(f"http://127.0.0.1:{closed_port()}", timeout=1)
        # Behind a proxy, the proxy is what must answer: the hub client reaches the hub through it.
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        assert hub_answers("https://hub.invalid")
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed_port()}")
        assert not hub_answers("https://hub.invalid", timeout=1)


def test_random_backbone_says_so():
    _, source = load_pretrained_backbone("test_vit", pretrained=False, weights=None)
    assert "random" in source


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext"])
def test_any_timm_model_can_be_the_frozen_backbone(name):
    model = create_model({"kind": "timm_probe", "num_classes": 3, "timm_model": name})
    size = timm_data_config(model.backbone)["input_size"][-1]
    assert model(torch.randn(2, 3, size, size)).shape == (2, 3)
    assert count_parameters(model)["trainable"] == model.backbone.num_features * 3 + 3


def test_npz_weights_go_through_timms_custom_load(monkeypatch, tmp_path):
    """Original JAX .npz weights need custom_load; timm resets it for a supplied file unless told."""
    seen, real_create_model = {}, timm.create_model

    def fake_create_model(name, pretrained, num_classes, pretrained_cfg_overlay=None):
        seen.update(pretrained_cfg_overlay)
        return real_create_model("test_vit", pretrained=False, num_classes=0)

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    for suffix, custom in ((".npz", True), (".safetensors", False)):
        path = tmp_path / f"weights{suffix}"
        path.write_bytes(b"x")
        load_pretrained_backbone("vit_tiny_patch16_224", pretrained=True, weights=str(path))
        assert seen == {"file": str(path), "custom_load": custom}


class RunsCode:
    """Unpickling this object creates `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_a_pth_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"pos_embed": torch.zeros(1), "payload": RunsCode(marker)}, path)
    with pytest.raises(PipelineError, match=r"train_vit.weights = .*evil.pth.*: cannot load into test_vit"):
        load_pretrained_backbone("test_vit", True, str(path))
    assert not marker.exists()


def test_an_npz_with_pickled_objects_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.npz"
    np.savez(path, **{"embedding/kernel": np.array([RunsCode(marker)], dtype=object)})
    with pytest.raises(PipelineError, match=r"evil.npz.*: cannot load into test_vit"):
        load_pretrained_backbone("test_vit", True, str(path))
    assert not marker.exists()


def test_weights_checksum_is_enforced(test_vit_weights):
    good = file_digest(test_vit_weights)
    model, source = load_pretrained_backbone("test_vit", True, str(test_vit_weights), weights_sha256=good)
    assert source == f"file {test_vit_weights.resolve()}"
    with pytest.raises(PipelineError, match=rf"train_vit.weights_sha256: .* has sha256 {good}, expected f+;"):
        load_pretrained_backbone("test_vit", True, str(test_vit_weights), weights_sha256="f" * 64)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_plain_state_dicts_load(tmp_path, test_vit_weights, suffix):
    from safetensors.torch import load_file

    state = load_file(test_vit_weights)
    path = tmp_path / f"weights{suffix}"
    torch.save(state, path) if suffix == ".pth" else path.write_bytes(test_vit_weights.read_bytes())
    model, _ = load_pretrained_backbone("test_vit", True, str(path))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


# ---------------------------------------------------------------- the faster CNN step computes what the plain one does


def plain_cnn(num_classes: int, widths: list[int], dropout: float, batch_norm: bool) -> nn.Module:
    """SimpleCNN as first written: torch's own Conv2d, Conv-BN-ReLU-MaxPool, NCHW."""
    layers, in_ch = [], 3
    for width in widths:
        norm = [nn.BatchNorm2d(width)] if batch_norm else []
        layers += [
            nn.Conv2d(in_ch, width, 3, padding=1, bias=not batch_norm),
            *norm,
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        in_ch = width
    model = nn.Module()
    model.features, model.pool = nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1)
    model.dropout, model.head = nn.Dropout(dropout), nn.Linear(in_ch, num_classes)
    model.forward = lambda x: model.head(model.dropout(model.pool(model.features(x)).flatten(1)))
    return model


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("batch_norm", [True, False])
def test_the_fast_cnn_step_matches_the_plain_fp32_model(batch_norm):
    """The pipeline's CNN (max-pool before ReLU, channels last, weight gradients through NCHW) against the model
    as first written, eager fp32 NCHW, from the same weights: the same training-mode logits and gradients, and
    the same evaluation outputs, up to fp32 rounding (kernels for different memory layouts sum in other orders)."""
    torch.manual_seed(0)
    fast = SimpleCNN(5, [8, 16, 32], dropout=0.3, batch_norm=batch_norm).to(memory_format=torch.channels_last)
    plain = plain_cnn(5, [8, 16, 32], dropout=0.3, batch_norm=batch_norm)
    plain.load_state_dict(fast.state_dict())  # the same keys: the reordering moved no parameter
    x, y = torch.randn(6, 3, 40, 40), torch.tensor([0, 1, 2, 3, 4, 0])
    outputs = {}
    for name, model, batch in (("fast", fast, x.contiguous(memory_format=torch.channels_last)), ("plain", plain, x)):
        model.train()
        torch.manual_seed(1)  # the same dropout mask
        logits = model(batch)
        nn.functional.cross_entropy(logits, y).backward()
        model.eval()
        outputs[name] = logits.detach(), model(batch)
    assert any(
        node.name() == "ConvWeightGradInNCHWBackward"
        for node in autograd_nodes(fast, x.contiguous(memory_format=torch.channels_last))
    )
    torch.testing.assert_close(outputs["fast"], outputs["plain"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads(fast), grads(plain), rtol=1e-4, atol=1e-6)
    # Running statistics updated alike, so the eval outputs above compare models trained by one step each.
    torch.testing.assert_close(fast.state_dict(), plain.state_dict(), rtol=1e-5, atol=1e-6)


def autograd_nodes(model: nn.Module, x: torch.Tensor) -> list:
    """Every node of the training-mode graph of model(x) (run on a copy: BatchNorm's running statistics of `model`
    stay as they are)."""
    model = copy.deepcopy(model).train()
    seen, todo = [], [model(x).grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.append(node)
            todo += [next_node for next_node, _ in node.next_functions]
    return seen


def test_relu_and_max_pool_commute_in_value_and_gradient():
    """The reordering's premise, on inputs full of ties, zeros and negative windows (where it could go wrong)."""
    x = torch.randint(-3, 3, (4, 3, 8, 8)).float()
    x[0, 0, :2, :2] = 0.0  # an all-zero window
    x[0, 1, :2, :2] = -1.0  # an all-negative window
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a = nn.functional.max_pool2d(torch.relu(a), 2)
    out_b = torch.relu(nn.functional.max_pool2d(b, 2))
    g = torch.randn_like(out_a)
    out_a.backward(g)
    out_b.backward(g)
    assert torch.equal(out_a, out_b) and torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("arch", ["simple_cnn", "resnet", "vgg"])
def test_the_nchw_weight_gradient_is_torchs_own(arch):
    """Against the same channels-last model on torch's own Conv2d, for plain, strided, 1x1 and biased convolutions
    (resnet's shortcuts, nets without BatchNorm): the gradients agree to fp32 rounding."""
    config = {"kind": arch, "num_classes": 3, "widths": [8, 16], "dropout": 0.0, "batch_norm": arch == "resnet"}
    torch.manual_seed(0)
    fast = create_model(config).to(memory_format=torch.channels_last)
    plain = copy.deepcopy(fast)
    for module in plain.modules():
        if isinstance(module, nn.Conv2d):
            module.__class__ = nn.Conv2d
    x, y = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last), torch.tensor([0, 1, 2, 0])
    for model in (fast, plain):
        model.train()
        nn.functional.cross_entropy(model(x), y).backward()
    uses_nchw_weight_grad = [
        any(node.name() == "ConvWeightGradInNCHWBackward" for node in autograd_nodes(model, x))
        for model in (fast, plain)
    ]
    assert uses_nchw_weight_grad == [True, False]
    torch.testing.assert_close(grads(fast), grads(plain), rtol=1e-5, atol=1e-7)
