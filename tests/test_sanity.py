import shutil

import torch

from petlab.core.device import Precision
from petlab.core.params import DataParams
from petlab.data.dataset import PreparedData
from petlab.data.transforms import TransformSpec
from petlab.models.cnn import SimpleCNN
from petlab.prepare.splits import prepare_oxford_pets
from petlab.sanity.checks import check_data
from petlab.sanity.overfit import image_batches, overfit, overfit_items, standardize
from petlab.train.loop import StepContext


def prepared(fake_pets, tmp_path):
    out = tmp_path / "prepared"
    prepare_oxford_pets(DataParams(root=str(fake_pets), val_fraction=0.25, max_side=64), seed=0, out_dir=out)
    return PreparedData.open(out)


def test_clean_data_passes_and_a_copied_image_is_a_leak(fake_pets, tmp_path):
    data = prepared(fake_pets, tmp_path)
    report, failures = check_data(data)
    assert failures == [] and report["cross_split_duplicates"]["count"] == 0
    assert report["counts"]["train"]["total"] == 36 and report["unreadable"]["count"] == 0

    leaked = data.items("train")[0][0]
    shutil.copy(leaked, data.root / "test" / leaked.parent.name / "copy_of_train.jpg")
    (data.root / "val" / leaked.parent.name / "broken.jpg").write_bytes(b"not a jpeg")
    report, failures = check_data(data)
    assert report["cross_split_duplicates"]["count"] == 1
    assert any("copy_of_train.jpg" in f for f in report["cross_split_duplicates"]["groups"][0])
    assert report["unreadable"]["count"] == 1 and "broken.jpg" in report["unreadable"]["files"][0]
    assert any("cannot be decoded" in f for f in failures)


def test_overfit_reaches_full_accuracy_on_two_batches(fake_pets, tmp_path):
    data = prepared(fake_pets, tmp_path)
    torch.manual_seed(0)
    items = overfit_items(data, batches=2, batch_size=8, seed=0)
    spec = TransformSpec(size=32)
    batches = image_batches(items, spec, batch_size=8)
    assert batches[0][0].dtype == torch.uint8 and batches[0][0].shape == (8, 3, 32, 32)
    result = overfit(
        SimpleCNN(4, [8, 16], dropout=0.0),
        batches,
        StepContext(torch.device("cpu"), Precision(None, False), input_spec=spec),
        lr=3e-3,
        max_steps=200,
    )
    assert result["steps_to_100pct"] is not None and result["final_accuracy"] == 1.0


def test_overfit_reports_failure_when_labels_are_noise(fake_pets, tmp_path):
    """A model cannot fit contradictory labels: the check must say so rather than pass."""
    data = prepared(fake_pets, tmp_path)
    items = overfit_items(data, batches=1, batch_size=8, seed=0)
    spec = TransformSpec(size=32)
    x, y = image_batches(items, spec, batch_size=8)[0]
    batches = [(torch.cat([x, x]), torch.cat([y, (y + 1) % 4]))]  # each image with two different labels
    result = overfit(
        SimpleCNN(4, [8], dropout=0.0),
        batches,
        StepContext(torch.device("cpu"), Precision(None, False), input_spec=spec),
        lr=3e-3,
        max_steps=20,
    )
    assert result["steps_to_100pct"] is None and result["final_accuracy"] <= 0.5


def test_standardized_features_keep_what_a_linear_head_can_fit():
    """Nearly identical features (as from a random backbone) become separable in few steps."""
    torch.manual_seed(0)
    base = torch.randn(1, 64)
    x = base + 1e-3 * torch.randn(32, 64)
    y = torch.arange(32) % 4
    batches = standardize([(x[:16], y[:16]), (x[16:], y[16:])])
    z = torch.cat([b[0] for b in batches])
    assert torch.allclose(z.mean(0), torch.zeros(64), atol=1e-3) and torch.allclose(z.std(0), torch.ones(64), atol=1e-3)
    ctx = StepContext(torch.device("cpu"), Precision(None, False))
    result = overfit(torch.nn.Linear(64, 4), batches, ctx, lr=3e-3, max_steps=300)
    assert result["steps_to_100pct"] is not None
