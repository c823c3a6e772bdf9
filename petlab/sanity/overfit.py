"""Can the training step learn at all: a handful of batches overfit by the CNN, the sanity stage's last check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from petlab.data.dataset import PreparedData, read_image
from petlab.data.transforms import TransformSpec, eval_transform
from petlab.train.loop import StepContext, train_step


def overfit_items(data: PreparedData, batches: int, batch_size: int, seed: int) -> list[tuple[Path, int]]:
    """A fixed, seeded draw of batches * batch_size training images covering many classes."""
    items = data.items("train")
    needed = batches * batch_size
    if needed > len(items):
        from petlab.core.params import ParamsError

        raise ParamsError(
            f"sanity.overfit_batches = {batches} with sanity.batch_size = {batch_size} needs {needed} "
            f"training images but there are {len(items)}; lower one of them"
        )
    order = np.random.default_rng(seed).permutation(len(items))[:needed]
    return [items[i] for i in sorted(order)]


def image_batches(
    items: list[tuple[Path, int]], spec: TransformSpec, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 batches of the images, eval-transformed (a StepContext with `spec` normalises them)."""
    transform = eval_transform(spec)
    x = torch.stack([transform(read_image(path)) for path, _ in items])
    y = torch.tensor([label for _, label in items])
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


def standardize(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-dimension z-scores over all the batches' features.

    A linear head absorbs any fixed affine map of its inputs, so this changes nothing about what the
    head can fit, only how fast Adam gets there: features of a random-init backbone differ between
    images by tiny amounts, and raw they would need thousands of steps.
    """
    x = torch.cat([b[0] for b in batches])
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    return [((f - mean) / std, y) for f, y in batches]


def overfit(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    ctx: StepContext,
    lr: float,
    max_steps: int,
    writer=None,
    tag: str = "model",
) -> dict:
    """Train on the same few batches until every one is classified right (train mode), or max_steps.

    Returns the step at which 100% was first reached (None if never), and the final loss and accuracy.
    """
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss()
    reached, loss_value, accuracy = None, float("nan"), 0.0
    for step in range(1, max_steps + 1):
        correct, total, losses = 0, 0, []
        for x, y in batches:
            loss, logits = train_step(model, x, y, optimizer, loss_fn, ctx, None)
            correct += int((logits.argmax(1).cpu() == y).sum())
            total += len(y)
            losses.append(float(loss))
        loss_value, accuracy = float(np.mean(losses)), correct / total
        if writer is not None:
            writer.add_scalar(f"overfit_{tag}/loss", loss_value, step)
            writer.add_scalar(f"overfit_{tag}/accuracy", accuracy, step)
        if accuracy == 1.0:
            reached = step
            break
    return {
        "steps_to_100pct": reached,
        "final_loss": round(loss_value, 6),
        "final_accuracy": round(accuracy, 6),
        "max_steps": max_steps,
        "images": sum(len(y) for _, y in batches),
    }
