"""Images worse than the test split's: a fixed, seeded set of corruptions at graded severities, after ImageNet-C
(Hendrycks and Dietterich, ICLR 2019), made with torchvision.transforms.v2's functional kernels (JPEG with PIL).

Each corruption is applied to the prepared test image (the pixels the models would be given), before the model's
own evaluation transform (resize and centre crop), so the probe's features are re-extracted from corrupted pixels.
Severity 0 is the clean image. The random ones (noise) draw from a generator seeded by (seed, image), so the same
seed gives the same corrupted bytes, whatever the loader's workers.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from petlab.core.metrics import classification_metrics
from petlab.core.params import Params
from petlab.core.runtime import seeded_rng
from petlab.data.dataset import PreparedData, draw_subset, read_image
from petlab.data.loaders import make_loader
from petlab.data.transforms import eval_transform
from petlab.train.loop import predict
from petlab.train.run import load_checkpoint_for, trained_on_device

# Severities 1-3, as ImageNet-C's 1, 3 and 5 where it has the same corruption. Blur's sigma is a fraction of the
# image's shorter side (ImageNet-C's 1, 3 and 6 pixels on 224 px), so a small image is blurred alike.
CORRUPTIONS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.18, 0.38),  # sd of the noise on pixel values in [0, 1]
    "gaussian_blur": (0.0045, 0.0134, 0.0268),  # sigma / shorter side
    "jpeg": (25, 15, 7),  # JPEG quality
    "brightness": (0.6, 0.4, 0.2),  # brightness factor: darker (a photo taken in poor light)
    "contrast": (0.4, 0.2, 0.05),  # contrast factor
}
SEVERITIES = (1, 2, 3)


def corrupt(image: torch.Tensor, corruption: str, severity: int, seed: int) -> torch.Tensor:
    """A uint8 (3, H, W) image under one corruption at severity 1-3 (0: the image itself), as uint8."""
    if severity == 0:
        return image
    level = CORRUPTIONS[corruption][severity - 1]
    if corruption == "gaussian_noise":
        with seeded_rng(seed):
            noisy = F.gaussian_noise(F.to_dtype(image, torch.float32, scale=True), mean=0.0, sigma=level, clip=True)
        return F.to_dtype(noisy, torch.uint8, scale=True)
    if corruption == "gaussian_blur":
        sigma = max(level * min(image.shape[-2:]), 0.3)
        kernel = 2 * math.ceil(3 * sigma) + 1
        return F.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
    if corruption == "jpeg":  # with PIL, as ImageNet-C does (torchvision's JPEG codec is deprecated in 0.29)
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=int(level))
        return read_image("jpeg", buffer.getvalue())
    if corruption == "brightness":
        return F.adjust_brightness(image, level)
    if corruption == "contrast":
        return F.adjust_contrast(image, level)
    raise ValueError(f"unknown corruption {corruption!r}")


class CorruptedImages(Dataset):
    """Every (condition, image) of `items` under `conditions` ((corruption, severity) pairs), read, corrupted and put
    through a model's evaluation transform: sample k is image k % len(items) under condition k // len(items). One
    dataset, so one loader scores every condition (its workers start once, not once per condition)."""

    def __init__(self, items: Sequence, conditions: Sequence[tuple[str, int]], transform: Callable, seed: int):
        self.items, self.conditions = list(items), list(conditions)
        self.transform, self.seed = transform, seed

    def __len__(self) -> int:
        return len(self.items) * len(self.conditions)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        (corruption, severity), index = self.conditions[k // len(self.items)], k % len(self.items)
        path, label = self.items[index]
        image = corrupt(read_image(path), corruption, severity, self.seed * 1_000_003 + index)
        return self.transform(image), label


def conditions() -> list[tuple[str, int]]:
    """Every (corruption, severity) scored, clean first."""
    return [("clean", 0)] + [(c, s) for c in CORRUPTIONS for s in SEVERITIES]


def relative_drop(clean: float, corrupted: float) -> float:
    """The share of the clean score lost under corruption, as ImageNet-C's relative corruption error compares errors
    with the clean error: 0 when nothing is lost, 1 when all of it is."""
    return 1 - corrupted / clean if clean > 0 else 0.0


@dataclass(frozen=True)
class CorruptionScores:
    """One model's scores on the drawn test images under every condition (corruption, severity), clean first."""

    model: str
    images: list[str]  # relative to the prepared data's root
    labels: list[int]
    scores: dict[tuple[str, int], dict]  # classification_metrics per condition
    predictions: dict[tuple[str, int], list[int]]  # the predicted class of each image, per condition

    def mean_accuracy(self, severity: int) -> float:
        """The accuracy averaged over the corruptions at one severity (0: the clean accuracy)."""
        if severity == 0:
            return self.scores["clean", 0]["accuracy"]
        return sum(self.scores[c, severity]["accuracy"] for c in CORRUPTIONS) / len(CORRUPTIONS)

    def summary(self) -> dict:
        """The clean score, the mean over every corruption and severity, and the relative drop between."""
        out = {}
        for metric in ("accuracy", "macro_f1"):
            clean = self.scores["clean", 0][metric]
            corrupted = sum(self.scores[c, s][metric] for c, s in conditions()[1:]) / (len(conditions()) - 1)
            out.update(
                {
                    f"clean_{metric}": round(clean, 6),
                    f"corrupted_{metric}": round(corrupted, 6),
                    f"relative_drop_{metric}": round(relative_drop(clean, corrupted), 6),
                }
            )
        return out

    def score_rows(self) -> Iterator[dict]:
        for c, v in conditions():
            scores = {k: round(x, 6) for k, x in self.scores[c, v].items() if k != "top5_accuracy"}
            yield {"corruption": c, "severity": v, "model": self.model, **scores}

    def mean_accuracy_rows(self) -> Iterator[dict]:
        """The mean over corruptions at each severity, for `dvc plots show` (severity 0: clean)."""
        for v in (0, *SEVERITIES):
            yield {"severity": v, f"{self.model}_accuracy": round(self.mean_accuracy(v), 6)}

    def prediction_rows(self) -> Iterator[dict]:
        for c, v in conditions():
            for i, (image, label) in enumerate(zip(self.images, self.labels)):
                yield {
                    "image": image,
                    "label": label,
                    "corruption": c,
                    "severity": v,
                    self.model: self.predictions[c, v][i],
                }


def score_corruptions(model: str, checkpoint: Path, params: Params, data: PreparedData) -> CorruptionScores:
    """A trained model on robustness.test_per_class test images of each class (a seeded, stratified draw: the same
    images for both models) under every condition, through its own evaluation transform, in one loader."""
    items = data.items("test")
    chosen = [
        items[i] for i in draw_subset([label for _, label in items], params.robustness.test_per_class, params.seed)
    ]
    trained, ctx, spec = trained_on_device(load_checkpoint_for(checkpoint, data), params, model)
    dataset = CorruptedImages(chosen, conditions(), eval_transform(spec), params.seed)
    loader = make_loader(dataset, params.evaluate.batch_size, False, params.seed, ctx.device, params.loader)
    all_logits, all_labels = predict(trained, loader, ctx, desc=f"robustness: {model}")
    scores, predictions = {}, {}
    for i, condition in enumerate(conditions()):  # condition i: samples i*n .. (i+1)*n - 1
        part = slice(i * len(chosen), (i + 1) * len(chosen))
        scores[condition] = classification_metrics(all_logits[part], all_labels[part], data.num_classes)
        predictions[condition] = all_logits[part].argmax(1).tolist()
    images = [path.relative_to(data.root).as_posix() for path, _ in chosen]
    return CorruptionScores(model, images, [label for _, label in chosen], scores, predictions)
