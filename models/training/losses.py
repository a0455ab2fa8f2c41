"""Training losses: class-weighted cross-entropy, MSE/Huber and survival (Cox or
discrete-time NLL), per task, unknowns masked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.mil import MILOutput, TaskSpec
from models.survival.losses import RiskMemory, cox_efron_nll, discrete_nll


def _task_losses(
    out: MILOutput,
    targets: Mapping[str, Tensor],
    tasks: Sequence[TaskSpec],
    class_weights: Mapping[str, Tensor],
    regression_loss: str,
    memory: Mapping[str, RiskMemory] | None = None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per task: (sum of the losses of slides whose target is known, number of such slides).

    Classification: class-weighted cross-entropy (target -1 = unknown). Regression: MSE or
    Huber on standardised targets (NaN = unknown). Survival (targets (B, 3): time, event,
    time bin; time NaN = unknown): see :func:`_survival_term`. Unknown targets add exactly
    zero.
    """
    terms = {}
    for task in tasks:
        pred, y = out.outputs[task.name].float(), targets[task.name]
        if task.kind == "survival":
            terms[task.name] = _survival_term(task, pred, y, (memory or {}).get(task.name))
            continue
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


def _survival_term(
    task: TaskSpec, pred: Tensor, y: Tensor, memory: RiskMemory | None
) -> tuple[Tensor, Tensor]:
    """Discrete-time NLL summed over the known slides; or the Cox negative partial
    log-likelihood (summed over events) of the known slides together with the remembered
    risks of ``memory``, which then remembers these slides too."""
    known = ~torch.isnan(y[:, 0])
    if not known.any():
        return pred.sum() * 0.0, known.sum()
    if task.n_bins is not None:
        safe = torch.where(known[:, None], y, torch.zeros_like(y))
        per = discrete_nll(logits=pred, time_bin=safe[:, 2], event=safe[:, 1])
        return (per * known).sum(), known.sum()
    time, event, risk = y[known, 0], y[known, 1], pred[known]
    if memory is not None:
        joined = memory.joined(time=time, event=event, risk=risk)
        memory.extend(time=time, event=event, risk=risk)
        time, event, risk = joined
    return cox_efron_nll(time=time, event=event, risk=risk), known.sum()


def _batch_loss(
    out: MILOutput,
    targets: Mapping[str, Tensor],
    tasks: Sequence[TaskSpec],
    class_weights: Mapping[str, Tensor],
    regression_loss: str,
    memory: Mapping[str, RiskMemory] | None = None,
) -> Tensor:
    """Training loss of a batch: sum over tasks of the mean over known targets, plus the
    head's extra loss (CLAM's instance loss)."""
    terms = _task_losses(out, targets, tasks, class_weights, regression_loss, memory)
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
