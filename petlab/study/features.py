"""The study's features: every train, val and test image through the frozen backbone, once for all probe cells.

Features depend neither on the seed nor on the subset (the backbone is frozen and images are not augmented), so
the probe's cells only pick their subset's rows. The record (study/cells/features.json) holds the backbone, its
forward GFLOPs per image (from which the report charges each probe cell the extraction of its own train and
selection images) and the wall seconds per split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from petlab.core.errors import PipelineError
from petlab.core.layout import SPLITS
from petlab.core.params import Params
from petlab.core.runtime import Stopwatch
from petlab.data.dataset import PreparedData
from petlab.models.registry import forward_gflops
from petlab.probe.features import extract_features
from petlab.probe.recipe import build_probe
from petlab.train.run import image_loader, make_context, transform_spec


@dataclass(frozen=True)
class StudyFeatures:
    features: dict[str, tuple[torch.Tensor, torch.Tensor]]  # per split: features and labels
    info: dict  # what the cache records of itself (petlab.probe.features.save_feature_cache)
    record: dict  # study/cells/features.json


def extract_study_features(params: Params, data: PreparedData, backbone: Path) -> StudyFeatures:
    p = params.train_vit
    if p.image_route:
        raise PipelineError(
            "train_vit.augment and train_vit.unfreeze change the features every step; the study's "
            "probe is the linear probe on features extracted once (augment false, unfreeze [])"
        )
    model, config = build_probe(params.train_vit, data.num_classes, backbone)
    spec = transform_spec(config)
    ctx = make_context(params.device, p.amp, channels_last=False, input_spec=spec)
    model.to(ctx.device)
    features, seconds = {}, {}
    for split in SPLITS:
        clock = Stopwatch()
        loader = image_loader(
            data, split, spec, p.feature_batch_size, False, ctx.device, seed=params.seed, loader=params.loader
        )
        features[split] = extract_features(model.backbone, loader, ctx, desc=f"study_features: {split}")
        seconds[split] = clock.seconds()
    images = {split: [path.relative_to(data.root).as_posix() for path, _ in data.items(split)] for split in SPLITS}
    info = {"timm_model": p.model, **config["info"], "transform": spec.as_dict(), "class_names": data.class_names}
    record = {
        "timm_model": p.model,
        **config["info"],
        "device": ctx.device.type,
        "forward_gflops_per_image": forward_gflops(model.backbone, spec.size, ctx.device),
        "seconds": seconds,
        "images": {s: len(images[s]) for s in SPLITS},
    }
    return StudyFeatures(features, {**info, "images": images}, record)
