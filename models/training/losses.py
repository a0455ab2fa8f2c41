"""Training losses: class-weighted cross-entropy and MSE/Huber, per task, unknowns masked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.mil import MILOutput, TaskSpec


def _task_losses(
    out: MILOutput,
    targets: Mapping[str, Tensor],
    tasks: Sequence[TaskSpec],
    class_weights: Mapping[str, Tensor],
    regression_loss: str,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per task: (sum of the losses of slides whose target is known, number of such slides).

    Classification: class-weighted cross-entropy (target -1 = unknown). Regression: MSE or
    Huber on standardised targets (NaN = unknown). Unknown targets add exactly zero.
    """
    terms = {}
    for task in tasks:
        pred, y = out.outputs[task.name].float(), targets[task.name]
        if task.kind == "classification":
            known = y >= 0
            safe = y.clamp(min=0)
            per = F.cross_entropy(pred, safe, reduction="none") * class_weights[task.name][safe]
        else:
            known = ~torch.isnan(y)
            safe = torch.where(known, y, torch.zeros_like(y))
            loss_fn = F.mse_loss if regression_loss == "mse" else F.huber_loss
            per = loss_fn(pred, safe, reduction="none")
        terms[task.name] = ((per * known).sum(), known.sum())
    return terms


def _batch_loss(
    out: MILOutput,
    targets: Mapping[str, Tensor],
    tasks: Sequence[TaskSpec],
    class_weights: Mapping[str, Tensor],
    regression_loss: str,
) -> Tensor:
    """Training loss of a batch: sum over tasks of the mean over known targets, plus the
    head's extra loss (CLAM's instance loss)."""
    terms = _task_losses(out, targets, tasks, class_weights, regression_loss)
    total = sum(loss / count.clamp(min=1) for loss, count in terms.values())
    if out.extra_loss is not None:
        total = total + out.extra_loss.float()
    return total


def _class_weights(codes: np.ndarray, n_classes: int, weighted: bool) -> Tensor:
    """Weights whose mean over the known training slides is 1: n / (C_present * n_c)."""
    if not weighted:
        return torch.ones(n_classes)
    counts = np.bincount(codes[codes >= 0], minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)
