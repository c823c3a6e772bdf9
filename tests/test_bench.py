"""The benchmark's two ways compute the same things, its FLOP count is the documented one, and the quick
benchmark runs every row, the whole pipeline's included."""

from __future__ import annotations

import ast
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench import (
    conv_pass,
    count_step_flops,
    largest_conv,
    pipeline_model,
    pipeline_params,
    plain_eval_transform,
    plain_loader,
    plain_train_step,
    plain_train_transform,
    probe_from_images,
)
from petlab.core.device import select_precision
from petlab.core.params import DataParams, LoaderParams, Params, TrainCNNParams, TrainViTParams
from petlab.core.runtime import seeded_rng
from petlab.data.dataset import PreparedData, read_image
from petlab.data.transforms import TransformSpec, train_transform
from petlab.models.backbone import FrozenBackboneClassifier, load_pretrained_backbone, timm_data_config
from petlab.models.cnn import SimpleCNN
from petlab.prepare.splits import prepare_oxford_pets
from petlab.probe.features import load_feature_split
from petlab.probe.recipe import train_probe
from petlab.train.loop import StepContext, make_optimizer, train_step

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def test_cached_features_and_image_route_train_the_same_head(tmp_path, fake_pets, test_vit_weights):
    prepare_oxford_pets(DataParams(root=str(fake_pets)), 0, tmp_path / "prepared")
    data = PreparedData.open(tmp_path / "prepared")
    probe = TrainViTParams(
        model="test_vit",
        pretrained=True,
        weights=str(test_vit_weights),
        augment=False,
        solver="sgd",
        amp=False,
        epochs=4,
        batch_size=8,
        warmup_epochs=1.0,
    )
    params = Params(seed=3, device="cpu", loader=LoaderParams(num_workers=0), train_vit=probe)

    torch.manual_seed(0)  # the head's initial weights, the same for both routes
    cached = train_probe(params, data, tmp_path / "runs", tmp_path / "features.pt")
    torch.manual_seed(0)
    model = FrozenBackboneClassifier(
        load_pretrained_backbone("test_vit", True, str(test_vit_weights))[0], data.num_classes
    )
    spec = TransformSpec.from_timm(timm_data_config(model.backbone))

    # The same features: what the cache holds is what the backbone gives on the un-augmented images.
    cache = load_feature_split(tmp_path / "features.pt", "train").tensors[0]
    with torch.no_grad():
        fresh = torch.cat(
            [
                model.features(x)
                for x, _ in plain_loader(data.items("train"), plain_eval_transform(spec), 16, False, params.seed)
            ]
        )
    assert cache.shape == fresh.shape and cache.shape[0] == len(data.items("train"))
    torch.testing.assert_close(cache, fresh, atol=1e-5, rtol=1e-5)

    # The same training: both heads end with the same weights and predict the same test classes.
    head = probe_from_images(model, data, spec, probe, params.seed)
    assert not torch.equal(head.weight, nn.Linear(head.in_features, head.out_features).weight)
    torch.testing.assert_close(head.weight, cached.model.head.weight, atol=1e-4, rtol=1e-4)
    test_features = load_feature_split(tmp_path / "features.pt", "test").tensors[0]
    with torch.no_grad():
        assert torch.equal(head(test_features).argmax(1), cached.model.head(test_features).argmax(1))


def test_pipeline_data_path_gives_the_plain_ways_crops(tmp_path, fake_pets):
    """uint8 tensor kernels and per-batch normalisation: the same crops and flips as PIL's per-image way
    (12 samples: a flip missed on one side would fail), pixel values within one grey level (the two resize
    kernels round differently)."""
    from PIL import Image

    prepare_oxford_pets(DataParams(root=str(fake_pets)), 0, tmp_path / "prepared")
    spec = TransformSpec(size=48)
    std = torch.tensor(spec.std).view(3, 1, 1)
    for k, (path, _) in enumerate(PreparedData.open(tmp_path / "prepared").items("train")[:12]):
        with seeded_rng(k), Image.open(path) as image:
            plain = plain_train_transform(spec)(image.convert("RGB"))
        with seeded_rng(k):
            ours = spec.normalize(train_transform(spec)(read_image(path))[None])[0]
        levels = (plain - ours).abs() * std * 255
        assert levels.max() <= 1.01 and levels.mean() < 0.25, (path, levels.max(), levels.mean())


def test_pipeline_step_and_plain_step_give_close_losses():
    """bf16 autocast (where the CPU has it) and channels_last must not change what a step learns."""
    torch.manual_seed(0)
    model = SimpleCNN(5, [8, 16, 32], dropout=0.0)
    x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 5, (16,))
    ctx = StepContext(CPU, select_precision(CPU, amp=True), channels_last=True)
    optim = TrainCNNParams(lr=3e-3)
    plain_model, fast_model = copy.deepcopy(model), pipeline_model(model, ctx)
    assert fast_model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    plain_opt, _ = make_optimizer(plain_model.parameters(), optim, 1)
    fast_opt, _ = make_optimizer(fast_model.parameters(), optim, 1)
    loss_fn = nn.CrossEntropyLoss()
    plain_losses, fast_losses = [], []
    for _ in range(5):
        plain_losses.append(float(plain_train_step(plain_model, x, y, plain_opt, loss_fn)))
        fast_losses.append(float(train_step(fast_model, x, y, fast_opt, loss_fn, ctx, None)[0]))
    assert plain_losses[-1] < plain_losses[0]  # the steps really train
    for plain, fast in zip(plain_losses, fast_losses):
        assert abs(plain - fast) <= 0.03 * plain, (plain_losses, fast_losses)


def test_the_step_flops_are_the_convolutions_and_matrix_products_forward_and_backward():
    """FlopCounterMode's count of a real step, against the count by hand (a multiply-add is 2 FLOPs): each
    layer's forward, its weight gradient, and its input gradient except for the first convolution's input."""
    torch.manual_seed(0)
    batch, size, classes = 2, 32, 5
    model = SimpleCNN(classes, [4, 8], dropout=0.0)
    ctx = StepContext(CPU, select_precision(CPU, amp=True), channels_last=True)
    model = pipeline_model(model, ctx)
    optimizer, _ = make_optimizer(model.parameters(), TrainCNNParams(), 1)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))

    total, conv_flops, inputs = count_step_flops(model, x, y, optimizer, nn.CrossEntropyLoss(), ctx)

    conv1 = 2 * batch * 4 * size * size * 3 * 9  # 3 -> 4 channels at 32 px, 3x3
    conv2 = 2 * batch * 8 * (size // 2) ** 2 * 4 * 9  # 4 -> 8 at 16 px, after the first max-pool
    head = 2 * batch * 8 * classes
    assert conv_flops == {"features.0": 2 * conv1, "features.4": 3 * conv2}
    assert total == 2 * conv1 + 3 * conv2 + 3 * head
    assert inputs["features.0"] == {"shape": (batch, 3, size, size), "dtype": torch.float32, "requires_grad": False}
    assert inputs["features.4"]["shape"] == (batch, 4, size // 2, size // 2) and inputs["features.4"]["requires_grad"]
    assert model.features[0].weight.grad is not None  # the counted step was a real one

    # Both convolutions have the same FLOPs here: the one with more weights is the reference.
    assert conv_flops["features.0"] == conv_flops["features.4"] and largest_conv(model, conv_flops) == "features.4"
    # Measured alone, the reference does the work it does inside the step, and leaves the model's gradients be.
    before = model.features[4].weight.grad.clone()
    run = conv_pass(model.features[4], inputs["features.4"], ctx)
    with FlopCounterMode(display=False) as counter:
        run()
    run()
    assert counter.get_total_flops() == conv_flops["features.4"]
    assert torch.equal(model.features[4].weight.grad, before)


def test_quick_benchmark_runs_every_row(tmp_path):
    """`python -m benchmarks.bench --quick`, as the docs print it, every row but the whole pipeline's `dvc repro`:
    that row's summary (bench.pipeline_summary) is taken from the end-to-end test's own `dvc repro` of the whole
    pipeline (tests/test_pipeline.py)."""
    out = tmp_path / "quick.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--quick", "--no-pipeline", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report = json.loads(out.read_text())
    assert {"machine", "dataset", "probe", "probe_head", "cnn_step", "data_path", "loader", "evaluate"} <= set(report)
    for result in (
        report["probe"],
        report["probe_head"],
        report["cnn_step"],
        report["data_path"],
        report["loader"],
        report["evaluate"]["cnn"],
        report["evaluate"]["probe"],
    ):
        plain, pipeline = result["plain"], result["pipeline"]
        assert plain["seconds"] > 0 and pipeline["seconds"] > 0 and "peak_rss_rise_mb" in pipeline
        assert abs(result["speedup"] - plain["seconds"] / pipeline["seconds"]) < 0.01 * result["speedup"] + 0.01
    assert report["data_path"]["speedup_from_prepared_sizes_alone"] > 0
    assert report["probe"]["weights"].startswith("random")
    head = report["probe_head"]  # the L-BFGS head is fitted for real: above chance (0.2) on the generated features
    assert head["pipeline"]["solver"] == "lbfgs" and head["pipeline"]["val_accuracy"] > 0.3
    assert 0 <= head["plain"]["val_accuracy"] <= 1
    cnn_eval = report["evaluate"]["cnn"]  # the same model both ways: in fp32 the layout alone must not change logits
    tolerance = 1e-3 if cnn_eval["precision"] == "fp32" else 0.5
    assert cnn_eval["max_abs_logit_difference"] <= tolerance and cnn_eval["argmax_agreement"] > 0.5

    # The CNN step's GFLOP/s and its fraction of the largest convolution's rate, all from the same counts.
    cnn, conv = report["cnn_step"], report["cnn_step"]["largest_conv"]
    assert conv["gflop_per_pass"] == conv["gflop_in_step"] > 0 and conv["input_shape"][0] == cnn["batch_size"]
    assert (
        conv["precision"] == cnn["pipeline"]["precision"] and conv["channels_last"] == cnn["pipeline"]["channels_last"]
    )
    per_step = cnn["flops"]["per_step_gflop"]
    assert conv["passes_per_measurement"] >= cnn["steps_per_measurement"]
    for measured, runs, gflop in (
        (cnn["plain"], cnn["steps_per_measurement"], per_step),
        (cnn["pipeline"], cnn["steps_per_measurement"], per_step),
        (conv, conv["passes_per_measurement"], conv["gflop_per_pass"]),
    ):
        assert measured["gflop_per_s"] == pytest.approx(runs * gflop / measured["seconds"], rel=0.01, abs=0.01)
    assert cnn["pipeline_fraction_of_conv_rate"] == pytest.approx(
        cnn["pipeline"]["gflop_per_s"] / conv["gflop_per_s"], rel=0.01, abs=0.001
    )
    assert cnn["flops"]["per_image_gflop"] == pytest.approx(
        cnn["flops"]["per_step_gflop"] / cnn["batch_size"], rel=0.01
    )

    for row in (
        "linear probe",
        "probe head 200 x 32",
        "CNN training step",
        "decode + augment",
        "DataLoader",
        "evaluate CNN",
        "evaluate probe",
        "GFLOP/s",
        "of the largest convolution",
    ):
        assert row in proc.stdout, row
    assert str(out) in proc.stdout


def test_the_benchmarks_pipeline_params_pass_the_schema(tmp_path):
    for mode in ("quick", "full"):
        assert pipeline_params(mode, tmp_path)["data"]["root"] == str(tmp_path)


def test_the_benchmarks_pipeline_ignores_the_workspace_params(tmp_path, monkeypatch):
    """`dvc exp run` rewrites params.yaml; the benchmark's project must start from the defaults all the same."""
    (tmp_path / "params.yaml").write_text("data:\n  dataset: fashion_mnist\n  root: /nowhere\n")
    monkeypatch.chdir(tmp_path)
    params = pipeline_params("quick", tmp_path / "pets")
    assert params["data"]["dataset"] == "oxford_pets" and params["data"]["root"] == str(tmp_path / "pets")
    assert params["train_vit"]["model"] == "test_vit" and params["train_cnn"]["epochs"] == 1


def test_the_pipeline_never_imports_the_benchmark():
    """The benchmark is a tool around the pipeline: the library and the stages run without it."""
    for path in sorted([*(REPO / "petlab").rglob("*.py"), *(REPO / "stages").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(name.split(".")[0] == "benchmarks" for name in names), path
