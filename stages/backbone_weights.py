"""Stage backbone_weights: the probe's backbone weights, resolved once into a file that DVC versions.

It runs when what identifies the weights changes (dvc.yaml: the params that name them, and the folder weights/,
where a local file lives, whose bytes DVC hashes), so a `dvc repro` with nothing changed runs nothing. Then it
either keeps models/backbone.safetensors, when the file already holds the weights from the same source (the same
local file by SHA-256, the same hub id, or the same seeded random init), without any network access, or resolves
them again: a local file, the Hugging Face cache or the hub. Unchanged weights give a byte-identical file, so
nothing downstream re-runs; new weights at the same path do.
"""

import json
from pathlib import Path

from safetensors.torch import save
from torch import nn

from petlab.core.checksums import file_digest, verify_checksum
from petlab.core.errors import PipelineError
from petlab.core.outputs import write_bytes, write_json
from petlab.core.params import load_params
from petlab.core.runtime import seed_everything
from petlab.core.stage import run_stage
from petlab.models.backbone import BACKBONE_INFO_KEY, backbone_info, load_pretrained_backbone, weights_source

BACKBONE = Path("models/backbone.safetensors")
METRICS = Path("metrics/backbone.json")
LOCAL_WEIGHTS = Path("weights")  # a dep of this stage in dvc.yaml: DVC sees a file there change


def check_dvc_sees(weights_file: Path, pinned: bool) -> None:
    """A local weights file outside weights/ could change with DVC none the wiser: this stage would not run, and
    the probe would keep the old weights. Refused, unless train_vit.weights_sha256 pins the bytes it must have."""
    inside = weights_file.resolve().is_relative_to(LOCAL_WEIGHTS.resolve())
    if not inside and not pinned:
        raise PipelineError(
            f"train_vit.weights = '{weights_file}' is outside {LOCAL_WEIGHTS}/, where DVC cannot see "
            f"it change; put it in {LOCAL_WEIGHTS}/ (and `dvc add` it: {LOCAL_WEIGHTS}/README.md), or "
            f"pin its bytes with train_vit.weights_sha256"
        )


def save_backbone(path: Path, backbone: nn.Module, info: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    # One metadata entry of sorted JSON: the same weights and info give the same bytes.
    write_bytes(path, save(state, metadata={BACKBONE_INFO_KEY: json.dumps(info, sort_keys=True)}))


def main() -> None:
    params = load_params()  # every key of params.yaml, checked before any work
    p = params.train_vit
    wanted = {"model": p.model, "pretrained": p.pretrained, "source": weights_source(p.model, p.pretrained, p.weights)}
    if not p.pretrained:
        wanted["seed"] = params.seed
    elif p.weights is not None and Path(p.weights).expanduser().is_file():
        weights_file = Path(p.weights).expanduser()
        check_dvc_sees(weights_file, p.weights_sha256 is not None)
        if p.weights_sha256 is not None:
            verify_checksum(weights_file, p.weights_sha256, "train_vit.weights_sha256")
        wanted["source_sha256"] = file_digest(weights_file)  # a new file at the same path is new weights
    if backbone_info(BACKBONE) == wanted:
        print(f"backbone_weights: {BACKBONE} already holds {p.model} from {wanted['source']}")
    else:
        seed_everything(params.seed)  # the random init of pretrained: false
        backbone, _ = load_pretrained_backbone(p.model, p.pretrained, p.weights, p.weights_sha256)
        save_backbone(BACKBONE, backbone, wanted)
        print(f"backbone_weights: {p.model} from {wanted['source']} -> {BACKBONE}")
    if not p.pretrained:
        print("backbone_weights: WARNING: random backbone weights (train_vit.pretrained = false); not the real result")
    write_json(METRICS, {**wanted, "file": str(BACKBONE), "sha256": file_digest(BACKBONE)})


if __name__ == "__main__":
    run_stage("backbone_weights", main)
