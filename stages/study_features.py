"""Stage study_features: every train, val and test image through the frozen backbone, once for all probe cells.

Features depend neither on the seed nor on the subset (the backbone is frozen and images are not augmented),
so the probe's cells only pick their subset's rows. study/cells/features.json records the backbone, its forward
GFLOPs per image (from which the report charges each probe cell the extraction of its own train and selection
images) and the wall seconds per split.
"""

from pathlib import Path

from petlab.core.errors import PipelineError
from petlab.core.layout import SPLITS
from petlab.core.outputs import check_writable, write_json
from petlab.core.params import load_params
from petlab.core.runtime import Stopwatch
from petlab.core.stage import run_stage
from petlab.models.registry import forward_gflops
from petlab.probe.features import extract_features, save_feature_cache
from petlab.probe.recipe import build_probe
from petlab.study.cells import FEATURES, FEATURES_RECORD, check_pipeline_copy, machine, timing_path
from petlab.train.run import image_loader, make_context, setup_stage, transform_spec

DATA = Path("data/oxford_pets")
BACKBONE = Path("models/backbone.safetensors")  # written by the main pipeline's backbone_weights stage


def main() -> None:
    check_pipeline_copy(load_params().study)
    check_writable([FEATURES, FEATURES_RECORD])
    params, data = setup_stage(DATA)
    p = params.train_vit
    if p.image_route:
        raise PipelineError(
            "train_vit.augment and train_vit.unfreeze change the features every step; the study's "
            "probe is the linear probe on features extracted once (augment false, unfreeze [])"
        )
    model, config = build_probe(params, data.num_classes, BACKBONE)
    spec = transform_spec(config)
    ctx = make_context(params, p.amp, channels_last=False, input_spec=spec)
    model.to(ctx.device)
    features, seconds = {}, {}
    for split in SPLITS:
        clock = Stopwatch()
        loader = image_loader(data, split, spec, p.feature_batch_size, False, params, ctx.device)
        features[split] = extract_features(model.backbone, loader, ctx, desc=f"study_features: {split}")
        seconds[split] = clock.seconds()
    images = {split: [path.relative_to(data.root).as_posix() for path, _ in data.items(split)] for split in SPLITS}
    save_feature_cache(
        FEATURES,
        features,
        {
            "timm_model": p.model,
            **config["info"],
            "transform": spec.as_dict(),
            "class_names": data.class_names,
            "images": images,
        },
    )
    write_json(
        FEATURES_RECORD,
        {
            "timm_model": p.model,
            **config["info"],
            "device": ctx.device.type,
            "forward_gflops_per_image": forward_gflops(model.backbone, spec.size, ctx.device),
            "seconds": seconds,
            "images": {s: len(images[s]) for s in SPLITS},
        },
    )
    if not config["info"]["pretrained"]:
        print("study_features: WARNING: random backbone weights (train_vit.pretrained = false); not the real result")
    print(f"study_features: {', '.join(f'{len(images[s])} {s}' for s in SPLITS)} images -> {FEATURES}")


if __name__ == "__main__":
    run_stage("study_features", main, timing_file=timing_path("study_features"), timing_extra={"machine": machine()})
