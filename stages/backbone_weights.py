"""Stage backbone_weights: the probe's backbone weights, resolved once into a file that DVC versions.

It runs when what identifies the weights changes (dvc.yaml: the params that name them, and the folder weights/,
where a local file lives, whose bytes DVC hashes), so a `dvc repro` with nothing changed runs nothing. Then it
either keeps models/backbone.safetensors, when the file already holds the weights from the same source (the same
local file by SHA-256, the same hub id, or the same seeded random init), without any network access, or resolves
them again: a local file, the Hugging Face cache or the hub. Unchanged weights give a byte-identical file, so
nothing downstream re-runs; new weights at the same path do.
"""

from petlab.core import paths
from petlab.core.checksums import file_digest
from petlab.core.outputs import write_json
from petlab.core.params import load_params
from petlab.core.runtime import seed_everything
from petlab.core.stage import run_stage
from petlab.models.backbone import backbone_info, load_pretrained_backbone, save_backbone, wanted_backbone


def main() -> None:
    params = load_params()  # every key of params.yaml, checked before any work
    p = params.train_vit
    wanted = wanted_backbone(p, params.seed, paths.LOCAL_WEIGHTS)
    if backbone_info(paths.BACKBONE) == wanted:
        print(f"backbone_weights: {paths.BACKBONE} already holds {p.model} from {wanted['source']}")
    else:
        seed_everything(params.seed)  # the random init of pretrained: false
        backbone, _ = load_pretrained_backbone(p.model, p.pretrained, p.weights, p.weights_sha256)
        save_backbone(paths.BACKBONE, backbone, wanted)
        print(f"backbone_weights: {p.model} from {wanted['source']} -> {paths.BACKBONE}")
    if not p.pretrained:
        print("backbone_weights: WARNING: random backbone weights (train_vit.pretrained = false); not the real result")
    write_json(paths.BACKBONE_METRICS, {**wanted, "file": str(paths.BACKBONE), "sha256": file_digest(paths.BACKBONE)})


if __name__ == "__main__":
    run_stage("backbone_weights", main)
