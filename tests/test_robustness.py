"""The corruptions on a real photograph: none at severity 0, growing with the severity, clear at the highest, the same
bytes for the same seed; and the probe's features taken from the corrupted pixels."""

import numpy as np
import pytest
import torch
from PIL import Image

from petlab.data.transforms import TransformSpec, eval_transform
from petlab.measure.robustness import CORRUPTIONS, CorruptedImages, conditions, corrupt, relative_drop


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """scikit-learn's sample photograph of a palace (427 x 640), as uint8 (3, H, W)."""
    from sklearn.datasets import load_sample_image

    return torch.from_numpy(load_sample_image("china.jpg").copy()).permute(2, 0, 1).contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.float() - b.float()) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corruption_grows_with_its_severity_from_none_to_clear(photo, corruption):
    assert torch.equal(corrupt(photo, corruption, 0, seed=1), photo)  # severity 0: the clean image itself
    quality = [psnr(photo, corrupt(photo, corruption, s, seed=1)) for s in (1, 2, 3)]
    assert quality[0] > quality[1] > quality[2], quality  # each severity worse than the one before
    assert quality[2] < 22, quality  # the highest changes the image clearly (noise at sd 0.38: about 10 dB)
    out = corrupt(photo, corruption, 3, seed=1)
    assert out.dtype == torch.uint8 and out.shape == photo.shape


def test_the_mildest_corruptions_leave_the_photo_recognisable(photo):
    """Severity 1 is a mild photo defect: the image's structure survives (PSNR at least 20 dB for the pixel-level
    ones; darkness and low contrast move every pixel but keep the picture)."""
    for corruption in ("gaussian_noise", "gaussian_blur", "jpeg"):
        assert psnr(photo, corrupt(photo, corruption, 1, seed=1)) > 20, corruption
    darker = corrupt(photo, "brightness", 1, seed=1).float()
    assert darker.mean() == pytest.approx(0.6 * photo.float().mean(), rel=0.02)
    flat = corrupt(photo, "contrast", 1, seed=1).float()
    assert flat.std() < 0.5 * photo.float().std() and np.corrcoef(flat.flatten(), photo.float().flatten())[0, 1] > 0.99


def test_the_same_seed_gives_the_same_bytes(photo):
    noisy = corrupt(photo, "gaussian_noise", 2, seed=7)
    assert torch.equal(noisy, corrupt(photo, "gaussian_noise", 2, seed=7))
    assert not torch.equal(noisy, corrupt(photo, "gaussian_noise", 2, seed=8))
    before = torch.get_rng_state()
    corrupt(photo, "gaussian_noise", 2, seed=7)
    assert torch.equal(before, torch.get_rng_state())  # the global generator, which dropout draws from, untouched


def test_the_probes_features_come_from_the_corrupted_pixels(photo, tmp_path):
    import timm

    path = tmp_path / "china.jpg"
    Image.fromarray(photo.permute(1, 2, 0).numpy()).save(path, quality=95)
    backbone = timm.create_model("test_vit", pretrained=False, num_classes=0).eval()
    spec = TransformSpec(size=backbone.default_cfg["input_size"][-1])

    dataset = CorruptedImages([(path, 0), (path, 1)], conditions(), eval_transform(spec), seed=3)
    assert len(dataset) == 2 * 16 and dataset[17][1] == 1  # image 1 under condition 1

    def features(k: int) -> torch.Tensor:
        image, _ = dataset[k]
        with torch.no_grad():
            return backbone(spec.normalize(image[None]))

    clean = features(0)
    for i, (corruption, severity) in enumerate(conditions()[1:], start=1):
        if severity == 3:
            assert not torch.allclose(clean, features(2 * i), atol=1e-3), corruption
    assert conditions()[0] == ("clean", 0) and len(conditions()) == 1 + 5 * 3
    assert torch.equal(dataset[2 * 3][0], dataset[2 * 3][0])  # the same seed, the same corrupted pixels


def test_relative_drop():
    assert relative_drop(0.9, 0.45) == pytest.approx(0.5) and relative_drop(0.8, 0.8) == 0.0
    assert relative_drop(0.0, 0.0) == 0.0  # nothing to lose
