"""The CNN trained from scratch, and its variants (MLP, small ResNet, small VGG)."""

from __future__ import annotations

import torch
from torch import nn

from petlab.models.registry import register


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
