"""The pretrained backbone (timm) with the probe's head, and where its weights come from: timm's hub, a local file, the backbone_weights stage's copy."""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import torch
from safetensors.torch import save
from torch import nn

from petlab.core.checksums import file_digest, verify_checksum
from petlab.core.errors import PipelineError
from petlab.core.outputs import write_bytes
from petlab.core.params import TrainViTParams
from petlab.core.records import DESCRIBED_FILE
from petlab.models.registry import register


class FrozenBackboneClassifier(nn.Module):
    """A timm backbone (no classifier), frozen except the parameters named by `unfreeze`, and a trainable head.

    `unfreeze` holds parameter-name prefixes ("blocks.11", "layer4", "norm"): those parts fine-tune.
    The head is linear, or "mlp": Linear-GELU-Dropout-Linear with `head_hidden` units.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        unfreeze: Sequence[str] = (),
        head: str = "linear",
        head_hidden: int = 512,
        head_dropout: float = 0.0,
    ):
        super().__init__()
        self.backbone = backbone
        if head == "mlp":
            self.head = nn.Sequential(
                nn.Linear(backbone.num_features, head_hidden),
                nn.GELU(),
                nn.Dropout(head_dropout),
                nn.Linear(head_hidden, num_classes),
            )
        else:
            self.head = nn.Linear(backbone.num_features, num_classes)
        self.backbone.requires_grad_(False)
        unfreeze_backbone(self.backbone, list(unfreeze))
        self.backbone.eval()

    @property
    def trains_backbone(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> FrozenBackboneClassifier:
        # The backbone stays in eval mode while the head trains: its dropout/BN must not change features.
        # Fine-tuned parts keep their BatchNorm statistics too: small batches would only make them noisy.
        self.training = mode
        self.head.train(mode)
        self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trains_backbone):
            return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register("timm_probe")
def build_timm_probe(
    num_classes: int,
    timm_model: str,
    unfreeze: Sequence[str] = (),
    head: str = "linear",
    head_hidden: int = 512,
    head_dropout: float = 0.0,
) -> nn.Module:
    import timm

    return FrozenBackboneClassifier(
        timm.create_model(timm_model, pretrained=False, num_classes=0),
        num_classes,
        unfreeze,
        head,
        head_hidden,
        head_dropout,
    )


def unfreeze_backbone(backbone: nn.Module, prefixes: list[str]) -> None:
    """Make the parameters under each dotted-name prefix trainable; a prefix that names nothing is an error."""
    names = [name for name, _ in backbone.named_parameters()]
    for prefix in prefixes:
        matched = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not matched:
            parts = sorted({n.split(".")[0] for n in names})
            raise PipelineError(
                f"train_vit.unfreeze: {prefix!r} names no parameter of the backbone "
                f"(its parts: {', '.join(parts)}; deeper names like blocks.11 or layer4.1 work too)"
            )
        for name, p in backbone.named_parameters():
            if name in matched:
                p.requires_grad_(True)


def load_pretrained_backbone(
    model_name: str, pretrained: bool, weights: str | None, weights_sha256: str | None = None
) -> tuple[nn.Module, str]:
    """A timm backbone without classifier, and a description of where its weights came from.

    pretrained and no weights file: timm's own hub loading (HF hub, or its cache with HF_HUB_OFFLINE=1).
    A weights file: .safetensors/.pth/.bin state dicts, or timm's original .npz format (custom_load),
    checked against weights_sha256 when given. timm reads .pth/.bin with torch.load(weights_only=True)
    and .npz with np.load(allow_pickle=False), so a file cannot run code (tests/test_models.py).
    """
    import timm

    source = weights_source(model_name, pretrained, weights)
    if not pretrained:
        return timm.create_model(model_name, pretrained=False, num_classes=0), source
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise PipelineError(f"train_vit.weights = {weights!r}: file not found")
        if weights_sha256 is not None:
            verify_checksum(path, weights_sha256, "train_vit.weights_sha256")
        # timm resets custom_load for a supplied file; .npz files are the original JAX format and need it.
        overlay = {"file": str(path), "custom_load": path.suffix == ".npz"}
        try:
            model = timm.create_model(model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
        except Exception as err:
            raise PipelineError(
                f"train_vit.weights = {weights!r}: cannot load into {model_name} "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            ) from None
        return model, source
    from huggingface_hub import constants as hub

    why = ", HF_HUB_OFFLINE=1" if hub.HF_HUB_OFFLINE else ""
    if not why and not hub_answers(hub.ENDPOINT):
        # Offline, the hub client retries each file for about half a minute before it looks in its cache: decide
        # now, and use the cache alone as HF_HUB_OFFLINE=1 does (the client reads this flag at every request).
        why = f", {hub.ENDPOINT} does not answer"
        hub.HF_HUB_OFFLINE = True
    try:
        model = timm.create_model(model_name, pretrained=True, num_classes=0)
    except Exception as err:
        raise PipelineError(
            f"cannot get pretrained weights for {model_name} ({type(err).__name__}{why}). Either set "
            f"train_vit.weights to a local weights file (.safetensors, .pth or timm's .npz), or put the model in the "
            f"Hugging Face cache on a machine with internet "
            f"(python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\") "
            f"and run with HF_HUB_OFFLINE=1"
        ) from None
    return model, source


def hub_answers(endpoint: str, timeout: float = 5.0) -> bool:
    """Whether the Hugging Face hub's host, or the proxy the environment names for it, accepts a connection within
    `timeout` seconds."""
    url = urlsplit(endpoint)
    proxies = getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not proxy_bypass(url.hostname):  # the hub client goes through it too (HTTPS_PROXY and the like)
        url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


def weights_source(model_name: str, pretrained: bool, weights: str | None) -> str:
    """Where load_pretrained_backbone takes the weights from, known without loading them (no network)."""
    import timm

    if not pretrained:
        return "random init (pretrained: false)"
    if weights is not None:
        path = Path(weights).expanduser().resolve()
        description = weights_description(path)
        # A file inside the project by its path there: records and reports then name no folder of this machine.
        shown = path.relative_to(Path.cwd().resolve()) if path.is_relative_to(Path.cwd().resolve()) else path
        return f"{description}{DESCRIBED_FILE}{shown})" if description else f"file {shown}"
    cfg = timm.models.get_pretrained_cfg(model_name)
    return f"timm hub {cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else model_name}"


def weights_description(path: Path) -> str | None:
    """What a safetensors weights file says it holds (its metadata's `description`, as petlab.models.stand_in writes),
    so that reports name weights that stand in for others; None for other files."""
    from safetensors import safe_open

    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("description")
    except Exception:  # not a valid safetensors file: loading it fails with its own error
        return None


# The backbone's weights as the pipeline versions them: resolved once by the backbone_weights stage into a
# safetensors file that DVC tracks, with where they came from in the file's own metadata (BACKBONE_INFO_KEY).
BACKBONE_INFO_KEY = "petlab"


def backbone_info(path: str | Path) -> dict | None:
    """What the backbone_weights stage recorded in the file, or None for a missing file or one it did not write."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})[BACKBONE_INFO_KEY])
    except Exception:  # missing, truncated, not safetensors, or no info: all mean "resolve the weights again"
        return None


def load_backbone(path: str | Path, model_name: str) -> tuple[nn.Module, dict]:
    """The backbone saved by the backbone_weights stage, and what it recorded (model, pretrained, source, ...)."""
    import timm
    from safetensors.torch import load_file

    info = backbone_info(path)
    if info is None:
        raise PipelineError(f"{path}: missing or not written by the backbone_weights stage; run `dvc repro`")
    if info["model"] != model_name:
        raise PipelineError(
            f"{path} holds weights of {info['model']}, not of train_vit.model = {model_name!r}; run `dvc repro`"
        )
    model = timm.create_model(model_name, pretrained=False, num_classes=0)
    model.load_state_dict(load_file(str(path)))
    return model, info


def timm_data_config(backbone: nn.Module) -> dict:
    """The preprocessing the backbone's weights expect (e.g. mean/std 0.5 for ViT augreg), never ImageNet's by default."""
    import timm

    return timm.data.resolve_model_data_config(backbone)


def check_dvc_sees(weights_file: Path, pinned: bool, local_weights: Path) -> None:
    """A local weights file outside `local_weights` (the backbone_weights stage's dep) could change with DVC none
    the wiser: the stage would not run, and the probe would keep the old weights. Refused, unless
    train_vit.weights_sha256 pins the bytes it must have."""
    inside = weights_file.resolve().is_relative_to(local_weights.resolve())
    if not inside and not pinned:
        raise PipelineError(
            f"train_vit.weights = '{weights_file}' is outside {local_weights}/, where DVC cannot see "
            f"it change; put it in {local_weights}/ (and `dvc add` it: {local_weights}/README.md), or "
            f"pin its bytes with train_vit.weights_sha256"
        )


def wanted_backbone(p: TrainViTParams, seed: int, local_weights: Path) -> dict:
    """What identifies the weights train_vit's params ask for (the record backbone_info reads back): the model,
    its source, and the seed of a random init or the SHA-256 of a local file (a new file at the same path is new
    weights)."""
    wanted = {"model": p.model, "pretrained": p.pretrained, "source": weights_source(p.model, p.pretrained, p.weights)}
    if not p.pretrained:
        wanted["seed"] = seed
    elif p.weights is not None and Path(p.weights).expanduser().is_file():
        weights_file = Path(p.weights).expanduser()
        check_dvc_sees(weights_file, p.weights_sha256 is not None, local_weights)
        if p.weights_sha256 is not None:
            verify_checksum(weights_file, p.weights_sha256, "train_vit.weights_sha256")
        wanted["source_sha256"] = file_digest(weights_file)
    return wanted


def save_backbone(path: Path, backbone: nn.Module, info: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    # One metadata entry of sorted JSON: the same weights and info give the same bytes.
    write_bytes(path, save(state, metadata={BACKBONE_INFO_KEY: json.dumps(info, sort_keys=True)}))
