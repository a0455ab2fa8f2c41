"""Survival losses in torch: Cox partial likelihood (Efron ties) and the discrete-time
negative log-likelihood of Zadeh & Schmid (2020), with ``risk`` higher = worse.

The Cox loss is written here (a few vectorised lines) rather than taken from torchsurv so
that it can mix a batch's risks (with gradient) with a memory of earlier risks (without):
see :class:`RiskMemory`. Tests pin it to lifelines' partial log-likelihood.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import Tensor


def cox_efron_nll(*, time: Tensor, event: Tensor, risk: Tensor) -> Tensor:
    """Negative Cox partial log-likelihood, Efron's method for tied event times, summed
    over events (0 when there is none). ``risk`` (n,) is the log hazard ratio."""
    risk = risk.double() if risk.dtype == torch.float64 else risk.float()
    event = event.to(risk.dtype)
    event_times = torch.unique(time[event > 0])
    if event_times.numel() == 0:
        return risk.sum() * 0.0
    shift = risk.detach().max()
    weight = torch.exp(risk - shift)
    at_risk = (time[None, :] >= event_times[:, None]).to(risk.dtype)  # (U, n)
    dies = ((time[None, :] == event_times[:, None]) & (event[None, :] > 0)).to(risk.dtype)
    d = dies.sum(dim=1)  # events per distinct time (U,)
    risk_sum = at_risk @ weight
    tied_sum = dies @ weight
    steps = torch.arange(int(d.max()), dtype=risk.dtype, device=risk.device)  # l = 0..max(d)-1
    used = steps[None, :] < d[:, None]
    fraction = steps[None, :] / d[:, None]
    inner = risk_sum[:, None] - fraction * tied_sum[:, None]
    log_terms = torch.where(used, torch.log(inner.clamp_min(1e-300)) + shift, 0.0)
    return log_terms.sum() - (dies @ risk).sum()


class RiskMemory:
    """The last ``size`` (risk, time, event) of earlier steps, without gradient: Cox needs
    risk sets larger than one bag, so each step's bags are scored against them too."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: deque[tuple[Tensor, Tensor, Tensor]] = deque()
        self.count = 0

    def __repr__(self) -> str:
        return f"RiskMemory({self.count} of {self.size} slides)"

    def extend(self, *, time: Tensor, event: Tensor, risk: Tensor) -> None:
        """Remember these slides (oldest forgotten beyond ``size``)."""
        for i in range(len(risk)):
            self.items.append((risk[i].detach(), time[i], event[i]))
        while len(self.items) > self.size:
            self.items.popleft()
        self.count = len(self.items)

    def joined(self, *, time: Tensor, event: Tensor, risk: Tensor) -> tuple[Tensor, ...]:
        """(time, event, risk) of these slides followed by the remembered ones."""
        if not self.items:
            return time, event, risk
        r, t, e = (torch.stack(v) for v in zip(*self.items, strict=True))
        return (torch.cat([time, t]), torch.cat([event, e]), torch.cat([risk, r.to(risk.dtype)]))


def time_bins(*, time: np.ndarray, event: np.ndarray, n_bins: int) -> list[float]:
    """Inner edges of ``n_bins`` discrete-time bins: quantiles of the observed event times
    (of the training slides), so that each bin holds about as many events."""
    t = np.asarray(time, dtype=np.float64)
    observed = t[(np.asarray(event, dtype=np.float64) > 0) & np.isfinite(t)]
    if observed.size == 0:
        observed = t[np.isfinite(t)]
    if observed.size == 0:
        return [float(i) for i in range(1, n_bins)]
    return [float(q) for q in np.quantile(observed, np.arange(1, n_bins) / n_bins)]


def bin_index(*, time: Tensor, edges: Tensor) -> Tensor:
    """Bin of each time: 0 for time < edges[0], ..., len(edges) for time >= edges[-1]."""
    return torch.bucketize(time.contiguous(), edges.to(time.dtype), right=True)


def discrete_nll(*, logits: Tensor, time_bin: Tensor, event: Tensor) -> Tensor:
    """Per-slide negative log-likelihood of discrete-time hazards (Zadeh & Schmid 2020).

    ``logits`` (n, K): hazard h_k = sigmoid(logit_k), the probability of the event in bin k
    given survival to its start. An event in bin j: -log h_j - sum_{k<j} log(1 - h_k); a
    slide censored in bin j survived bins 0..j: -sum_{k<=j} log(1 - h_k)."""
    logits = logits.float()
    k = torch.arange(logits.shape[1], device=logits.device)
    j = time_bin.long().clamp(0, logits.shape[1] - 1)[:, None]
    log_survive = torch.nn.functional.logsigmoid(-logits)  # log(1 - h)
    log_hazard = torch.nn.functional.logsigmoid(logits)
    observed = event.float()[:, None] > 0
    survive_bins = torch.where(observed, k[None, :] < j, k[None, :] <= j)
    nll = -(log_survive * survive_bins).sum(dim=1)
    at_event = (k[None, :] == j) & observed
    return nll - (log_hazard * at_event).sum(dim=1)


def discrete_survival(logits: Tensor) -> Tensor:
    """Survival to the end of each bin, S_k = prod_{i<=k} (1 - h_i): (n, K)."""
    return torch.exp(torch.cumsum(torch.nn.functional.logsigmoid(-logits.float()), dim=1))


def discrete_risk(logits: Tensor) -> Tensor:
    """Risk (higher = worse) of discrete-time hazards: minus the sum of the survival
    curve over the bins (an expected survival in bins, negated)."""
    return -discrete_survival(logits).sum(dim=1)
