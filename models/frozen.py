"""A TorchScript-frozen copy of an encoder module for fp32 inference on a CPU.

Eager PyTorch runs a CNN layer by layer: every activation (ReLU6, ReLU, …) is its own pass
over the feature map. ``torch.jit.freeze`` + ``torch.jit.optimize_for_inference`` hand the
whole graph to oneDNN, which fuses convolutions with their activations and keeps weights
pre-packed: fewer passes over memory per tile (figures: benchmarks/RESULTS.md),
outputs within 1e-5. The TorchScript API is deprecated in recent torch releases
(``torch.compile`` is its successor, but compiles for minutes per process on a CPU), so
everything here is guarded: its deprecation warnings are silenced, and any failure or any
disagreement with the eager module on the probe batch gives None (the caller stays eager).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from models.fusion import outputs_agree

MAX_PARAMETERS = 100_000_000
"""Larger models are not frozen: the frozen copy holds a second, pre-packed set of weights
(ViT-L/16 would take another 1.2 GB), and such models gain little from fusing activations."""


def freeze_for_cpu(module: nn.Module, probe: torch.Tensor, rtol: float = 1e-4) -> nn.Module | None:
    """A frozen, inference-optimised copy of eval-mode ``module`` traced on ``probe`` (a
    small input batch in the layout the module will see), or None where that is not possible
    or not faithful (outputs on ``probe`` further than ``rtol`` of their range from eager)."""
    if sum(p.numel() for p in module.parameters()) > MAX_PARAMETERS:
        return None
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module.eval(), probe, check_trace=False)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            expected, got = module(probe), frozen(probe)
    except Exception:  # noqa: BLE001 - an untraceable model or a torch without TorchScript
        return None
    return frozen if outputs_agree(expected, got, rtol) else None
