"""The two models and a small registry that rebuilds either from the config stored in its checkpoint."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import torch
from torch import nn

from petlab.downloads import verify_checksum
from petlab.runtime import PipelineError

MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def add(builder):
        MODEL_BUILDERS[name] = builder
        return builder

    return add


def create_model(config: dict) -> nn.Module:
    """Build a model from its config dict (as saved in checkpoints); weights are not loaded here."""
    kind = config["kind"]
    if kind not in MODEL_BUILDERS:
        raise PipelineError(f"unknown model kind {kind!r} (known: {', '.join(sorted(MODEL_BUILDERS))})")
    return MODEL_BUILDERS[kind](**{k: v for k, v in config.items() if k not in ("kind", "transform", "info")})


def count_parameters(model: nn.Module) -> dict[str, int]:
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


# ---------------------------------------------------------------- the CNN trained from scratch


class Conv2d(nn.Conv2d):
    """nn.Conv2d, computing the same numbers (to fp32 rounding; bitwise on the EPYC measured), with a faster CPU
    training step for channels-last fp32 inputs: the CNN's step on CPUs without native bf16.

    There oneDNN computes the weight gradient of a channels-last convolution several times slower than of an NCHW
    one (1.30 s against 0.45 s for the 32-to-64 convolution at 112 px, batch 64, on an AVX2 EPYC core), while
    the forward pass and the input gradient are faster in channels last. So, in that case only, the weight
    gradient is computed on NCHW copies of the input and of the output's gradient; everything else stays channels
    last. Layers on few input channels (the image's) keep oneDNN's own kernel: copying their large gradient would
    cost more than it saves. bf16 autocast (the step on CPUs with native bf16) and GPUs are not touched.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.in_channels >= 8
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.requires_grad
            and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and self.padding_mode == "zeros"
            and x.dim() == 4
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
        ):
            return ConvWeightGradInNCHW.apply(
                x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
            )
        return super().forward(x)


class ConvWeightGradInNCHW(torch.autograd.Function):
    """conv2d whose backward computes the input gradient as usual and the weight (and bias) gradient in NCHW."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups, bias is not None)
        return nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conv

        def backward(grad, x, weight, mask):
            return torch.ops.aten.convolution_backward(
                grad,
                x,
                weight,
                [weight.shape[0]] if has_bias else None,
                stride,
                padding,
                dilation,
                False,
                [0, 0],
                groups,
                mask,
            )

        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = backward(grad, x, weight, [True, False, False])[0]
        want_weight, want_bias = ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]
        if want_weight or want_bias:
            _, grad_weight, grad_bias = backward(
                grad.contiguous(), x.contiguous(), weight.contiguous(), [False, want_weight, want_bias]
            )
        return grad_x, grad_weight, grad_bias, None, None, None, None


def conv_bn_relu(in_ch: int, out_ch: int, batch_norm: bool, stride: int = 1) -> list[nn.Module]:
    """3x3 conv (no bias when a BatchNorm follows: it would cancel it), optional BatchNorm, ReLU."""
    norm = [nn.BatchNorm2d(out_ch)] if batch_norm else []
    return [Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=not batch_norm), *norm, nn.ReLU(inplace=True)]


def max_pooled(block: list[nn.Module]) -> list[nn.Module]:
    """The block (ending in a ReLU) followed by a 2x2 max-pool, with the pool moved before that ReLU.

    ReLU and max-pooling commute exactly: max(relu(a), relu(b)) = relu(max(a, b)), and the gradient reaches the
    same element either way (the window's first maximum when it is positive, none otherwise). Pooling first,
    the ReLU and its backward touch a quarter of the elements. Neither has parameters, so the state_dict keys are
    those of Conv-BN-ReLU-MaxPool.
    """
    *rest, relu = block
    return [*rest, nn.MaxPool2d(2), relu]


class SimpleCNN(nn.Module):
    """Blocks of Conv-BN-ReLU-MaxPool (run as Conv-BN-MaxPool-ReLU: the same function, see max_pooled), global
    average pooling, dropout, a linear head."""

    def __init__(self, num_classes: int, widths: list[int], dropout: float, batch_norm: bool = True):
        super().__init__()
        self.features = self.make_features(widths, batch_norm)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], num_classes)

    @staticmethod
    def make_features(widths: list[int], batch_norm: bool) -> nn.Sequential:
        layers, in_ch = [], 3
        for width in widths:
            layers += max_pooled(conv_bn_relu(in_ch, width, batch_norm))
            in_ch = width
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))


@register("simple_cnn")
def build_simple_cnn(num_classes: int, widths: list[int], dropout: float, batch_norm: bool = True) -> nn.Module:
    return SimpleCNN(num_classes, widths, dropout, batch_norm)


# ---------------------------------------------------------------- other from-scratch baselines


class MLP(nn.Module):
    """The no-convolution baseline: flattened pixels through hidden layers of `widths` units."""

    def __init__(self, num_classes: int, widths: list[int], dropout: float, batch_norm: bool, input_size: int):
        super().__init__()
        layers, in_features = [nn.Flatten()], 3 * input_size * input_size
        for width in widths:
            norm = [nn.BatchNorm1d(width)] if batch_norm else []
            layers += [
                nn.Linear(in_features, width, bias=not batch_norm),
                *norm,
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
            ]
            in_features = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs added to a shortcut (a strided 1x1 conv where the shape changes), as in ResNet-18."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, batch_norm: bool):
        super().__init__()
        main = conv_bn_relu(in_ch, out_ch, batch_norm, stride) + conv_bn_relu(out_ch, out_ch, batch_norm)
        self.main = nn.Sequential(*main[:-1])  # the last ReLU comes after the addition
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            norm = [nn.BatchNorm2d(out_ch)] if batch_norm else []
            self.shortcut = nn.Sequential(Conv2d(in_ch, out_ch, 1, stride=stride, bias=not batch_norm), *norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.main(x) + self.shortcut(x))


class SmallResNet(SimpleCNN):
    """A 3x3 stem, then per width a stage of two residual blocks (stages after the first halve the size);
    pooling, dropout and head as in SimpleCNN."""

    @staticmethod
    def make_features(widths: list[int], batch_norm: bool) -> nn.Sequential:
        layers, in_ch = conv_bn_relu(3, widths[0], batch_norm), widths[0]
        for i, width in enumerate(widths):
            layers += [
                BasicBlock(in_ch, width, 1 if i == 0 else 2, batch_norm),
                BasicBlock(width, width, 1, batch_norm),
            ]
            in_ch = width
        return nn.Sequential(*layers)


class SmallVGG(nn.Module):
    """VGG-style: per width two 3x3 convs and a max-pool; global average pooling and a two-layer classifier."""

    def __init__(self, num_classes: int, widths: list[int], dropout: float, batch_norm: bool):
        super().__init__()
        layers, in_ch = [], 3
        for width in widths:
            layers += [*conv_bn_relu(in_ch, width, batch_norm), *max_pooled(conv_bn_relu(width, width, batch_norm))]
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Linear(in_ch, in_ch), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(in_ch, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


register("mlp")(MLP)
register("resnet")(SmallResNet)
register("vgg")(SmallVGG)


# ---------------------------------------------------------------- the linear probe on a frozen timm backbone


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


DESCRIBED_FILE = " (file "  # weights_source of a file that describes itself: "<description> (file <path>)"


def weights_label(info: dict) -> str:
    """What results say beside the backbone's name about its weights (`info` as build_probe records it): 'random
    weights', the description its weights file carries (a stand-in's), or '' for the weights the name implies."""
    if not info.get("pretrained", True):
        return "random weights"
    source = info.get("weights_source", "")
    return source.split(DESCRIBED_FILE)[0] if DESCRIBED_FILE in source and not source.startswith("file ") else ""


def weights_description(path: Path) -> str | None:
    """What a safetensors weights file says it holds (its metadata's `description`, as petlab.stand_in writes),
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
