"""Fold inference-mode batch norms into the convolutions before them.

A ``Conv2d`` (or a subclass such as timm's ``Conv2dSame``) followed by a ``BatchNorm2d``
(timm's ``BatchNormAct2d`` too) computes an affine
map of the convolution's output; with frozen statistics that map can be moved into the
convolution's weights and bias, and the norm replaced by its activation (or nothing). On a CPU
this saves the norm's pass over every activation map: fewer ops per tile (figures:
benchmarks/RESULTS.md).

Pairs are found as consecutive children of one module (``conv_pw`` then ``bn1``, the layout of
timm's EfficientNet and ResNet blocks); :func:`fold_batchnorm` checks the folded module
against the original on a probe batch and leaves the module untouched when they disagree.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Move ``bn`` (eval statistics) into ``conv``'s weight and bias, in place."""
    scale = (
        bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        if bn.affine
        else (1.0 / torch.sqrt(bn.running_var + bn.eps))
    )
    shift = (bn.bias.detach() if bn.affine else 0.0) - bn.running_mean * scale
    weight = conv.weight.detach() * scale.reshape(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.detach() * scale + shift
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.bias = nn.Parameter(bias.to(weight.dtype), requires_grad=False)


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of ``bn`` once its affine map is folded: timm's dropout + activation."""
    parts = [getattr(bn, name, None) for name in ("drop", "act")]
    parts = [p for p in parts if isinstance(p, nn.Module) and not isinstance(p, nn.Identity)]
    if not parts:
        return nn.Identity()
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats
        and bn.running_mean is not None
        and conv.out_channels == bn.num_features
        and not bn._forward_hooks
    )


def _pairs(module: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, conv name, norm name) of every foldable consecutive pair, depth first."""
    found = []
    names = list(module._modules)
    for first, second in zip(names, names[1:], strict=False):
        conv, bn = module._modules[first], module._modules[second]
        if conv is not None and bn is not None and _foldable(conv, bn):
            found.append((module, first, second))
    for child in module.children():
        found.extend(_pairs(child))
    return found


def fold_batchnorm(
    module: nn.Module, probe: torch.Tensor, rtol: float = 1e-3
) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``module`` with conv + batch-norm pairs folded, and their count.

    ``probe`` is an input batch (e.g. 2 x 3 x 224 x 224); the folded copy must reproduce the
    original's output on it within ``rtol`` of its range, else ``(module, 0)`` comes back
    unchanged (a model whose children are not in forward order, say).
    """
    module = module.eval()
    if not _pairs(module):
        return module, 0
    folded = copy.deepcopy(module)
    pairs = _pairs(folded)
    for parent, conv_name, bn_name in pairs:
        bn = parent._modules[bn_name]
        _fold_into(parent._modules[conv_name], bn)
        parent._modules[bn_name] = _after_norm(bn)
    with torch.inference_mode():
        expected, got = module(probe), folded(probe)
    if not outputs_agree(expected, got, rtol):
        return module, 0
    return folded, len(pairs)


def outputs_agree(expected: torch.Tensor, got: object, rtol: float) -> bool:
    """Whether a rewritten module's output ``got`` is a tensor of ``expected``'s shape
    within ``rtol`` of ``expected``'s range (the check every inference rewrite passes)."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return False
    scale = float(expected.abs().max()) or 1.0
    return float((expected - got).abs().max()) <= rtol * scale
