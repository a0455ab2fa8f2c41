"""TensorFlow-style 'SAME' convolutions as plain convolutions, for a known input size.

timm's ``Conv2dSame`` (the ``tf_*`` ports: tf_efficientnet, tf_efficientnet_lite, …) pads
every input with ``F.pad`` before convolving, because TensorFlow's 'SAME' padding of a
stride-2 layer is asymmetric: (p, p + 1) pixels. That pad is a full copy of the activation
map, and a slow one on channels_last CPU tensors: EfficientNet-Lite0's five stride-2 layers
pay it on every tile (figures: benchmarks/RESULTS.md).

For a known input size the pad is fixed, and a pad of (p, p + 1) equals a symmetric pad of
p + 1 with one leading row/column of zeros in the kernel: the same products, read by the
convolution itself with no copy. :func:`static_same_padding` swaps every such layer for a
:class:`StaticSameConv2d` (a ``Conv2d``, so batch-norm folding still applies), checks the
result on a probe batch, and leaves the module unchanged when anything disagrees.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.fusion import outputs_agree


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) in pixels of one axis (dilation 1)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class StaticSameConv2d(nn.Conv2d):
    """A 'SAME' convolution whose padding is built into its kernel for one input size.

    ``weight`` is the original kernel with ``extra`` leading zero rows/columns; inputs of
    ``input_hw`` pixels take the plain ``Conv2d`` path, others are padded as the original
    layer did (correct for any size, only slower).
    """

    def __init__(self, conv: nn.Conv2d, input_hw: tuple[int, int]) -> None:
        (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
        (bh, ah), (bw, aw) = same_padding(input_hw[0], kh, sh), same_padding(input_hw[1], kw, sw)
        extra = (ah - bh, aw - bw)
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            (kh + extra[0], kw + extra[1]),
            stride=conv.stride,
            padding=(ah, aw),
            groups=conv.groups,
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        grad = conv.weight.requires_grad
        self.weight = nn.Parameter(
            F.pad(conv.weight.detach(), (extra[1], 0, extra[0], 0)), requires_grad=grad
        )
        if conv.bias is not None:
            self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=grad)
        self.input_hw = tuple(input_hw)
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.input_hw:
            return super().forward(x)
        weight = self.weight[:, :, self.extra[0] :, self.extra[1] :]
        (kh, kw), (sh, sw) = weight.shape[-2:], self.stride
        bh, ah = same_padding(x.shape[-2], kh, sh)
        bw, aw = same_padding(x.shape[-1], kw, sw)
        x = F.pad(x, (bw, aw, bh, ah))
        return F.conv2d(x, weight, self.bias, self.stride, 0, 1, self.groups)


def _same_convs(module: nn.Module) -> list[str]:
    """Names of timm ``Conv2dSame`` layers (dilation 1) inside ``module``."""
    try:
        from timm.layers import Conv2dSame
    except ImportError:
        return []
    return [
        name
        for name, child in module.named_modules()
        if isinstance(child, Conv2dSame) and tuple(child.dilation) == (1, 1)
    ]


def _input_sizes(module: nn.Module, names: list[str], probe: torch.Tensor) -> dict[str, tuple]:
    """The spatial input size (H, W) each named layer sees when ``module`` runs ``probe``."""
    sizes: dict[str, tuple] = {}
    layers = dict(module.named_modules())

    def record(name: str):
        def hook(_: nn.Module, args: tuple) -> None:
            sizes.setdefault(name, tuple(args[0].shape[-2:]))

        return hook

    handles = [layers[name].register_forward_pre_hook(record(name)) for name in names]
    try:
        with torch.inference_mode():
            module(probe)
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def static_same_padding(
    module: nn.Module, probe: torch.Tensor, rtol: float = 1e-4
) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``module`` with its 'SAME' convolutions made static for the
    input size of ``probe`` (e.g. 2 x 3 x 224 x 224), and how many were replaced.

    The copy must reproduce the original's output on ``probe`` within ``rtol`` of its
    range, else ``(module, 0)`` comes back unchanged.
    """
    module = module.eval()
    names = _same_convs(module)
    if not names:
        return module, 0
    sizes = _input_sizes(module, names, probe)
    static = copy.deepcopy(module)
    layers = dict(static.named_modules())
    replaced = 0
    for name in names:
        if name not in sizes:
            continue  # not on the forward path of this input
        parent_name, _, child = name.rpartition(".")
        parent = layers[parent_name] if parent_name else static
        setattr(parent, child, StaticSameConv2d(layers[name], sizes[name]))
        replaced += 1
    with torch.inference_mode():
        expected, got = module(probe), static(probe)
    if not outputs_agree(expected, got, rtol):
        return module, 0
    return static, replaced
