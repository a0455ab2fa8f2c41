"""Cross-validated survival evaluation: per-fold metrics and the pooled summary.

Slides of one patient are aggregated first (mean risk; the patient's time and event), so
a patient with two slides counts once. Each fold is scored against its own training
slides: Uno's tau is the 80th percentile of their follow-up, the censoring distribution
and (Cox) Breslow baseline come from them, and the held-out slides' risk groups use the
cut-offs fixed on them. Nothing is tuned on the slides a number is reported on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from models.survival.groups import compare_groups, treatment_interaction
from models.survival.metrics import (
    _comparable,
    _concordant,
    _inverse_weights,
    censoring_survival,
    cumulative_auc,
    harrell_c,
    integrated_brier,
    uno_c,
)

IBS_POINTS = 20
"""Time points of the integrated Brier score's trapezoid rule."""


def _number(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def patient_level(frame: pd.DataFrame) -> pd.DataFrame:
    """Slides -> patients: columns ``patient``, ``time``, ``event`` (the first slide's),
    ``risk`` and ``group`` (mean; group re-assigned by the caller) and curve columns
    ``s_<k>`` (mean). Rows with unknown time are dropped."""
    frame = frame[np.isfinite(frame["time"].to_numpy(dtype=np.float64))]
    rules = {c: "mean" for c in frame.columns if c == "risk" or c.startswith("s_")}
    rules.update({c: "first" for c in frame.columns if c not in rules and c != "patient"})
    return frame.groupby("patient", sort=False).agg(rules).reset_index()


def breslow_survival(
    *, time: np.ndarray, event: np.ndarray, risk: np.ndarray, new_risk: np.ndarray, at: np.ndarray
) -> np.ndarray:
    """S(t | risk) = exp(-H0(t) exp(risk)) at times ``at`` for ``new_risk``, with Breslow's
    baseline cumulative hazard H0 from training (time, event, risk): (n_new, len(at))."""
    event_times = np.unique(time[event > 0])
    weight = np.exp(risk - risk.max())
    steps = np.array(
        [np.sum((time == u) & (event > 0)) / np.sum(weight[time >= u]) for u in event_times]
    )
    cumulative = np.concatenate([[0.0], np.cumsum(steps)])
    h0 = cumulative[np.searchsorted(event_times, at, side="right")]
    return np.exp(-np.outer(np.exp(new_risk - risk.max()), h0))


def bin_survival(curves: np.ndarray, bins: Sequence[float], at: np.ndarray) -> np.ndarray:
    """Survival at times ``at`` from discrete-time curves (n, K): the curve value at the
    end of the last bin finished by t (1 inside the first bin)."""
    index = np.searchsorted(np.asarray(bins, dtype=np.float64), at, side="right")
    padded = np.concatenate([np.ones((len(curves), 1)), curves], axis=1)
    return padded[:, index]


@dataclass
class FoldData:
    """Patient-level (time, event, risk, curves) of one fold's held-out and training slides."""

    test: pd.DataFrame
    train: pd.DataFrame
    bins: Sequence[float] | None  # discrete-time bin edges; None for Cox

    def __repr__(self) -> str:
        return f"FoldData({len(self.test)} held-out and {len(self.train)} training patients)"

    def tau(self) -> float:
        """Uno's tau: the 80th percentile of the training follow-up."""
        return float(np.quantile(self.train["time"], 0.8))

    def survival_at(self, at: np.ndarray) -> np.ndarray:
        """Predicted survival of the held-out patients at ``at``."""
        if self.bins is None:
            return breslow_survival(
                time=self.train["time"].to_numpy(), event=self.train["event"].to_numpy(),
                risk=self.train["risk"].to_numpy(), new_risk=self.test["risk"].to_numpy(), at=at,
            )  # fmt: skip
        curves = self.test[[c for c in self.test.columns if c.startswith("s_")]].to_numpy()
        return bin_survival(curves, self.bins, at)


def _ibs(data: FoldData) -> float:
    t = data.test["time"].to_numpy()
    low = float(np.quantile(t, 0.1))
    high = min(data.tau(), float(np.quantile(t, 0.9)))
    if not high > low:
        return float("nan")
    at = np.linspace(low, high, IBS_POINTS)
    return integrated_brier(
        time=t, event=data.test["event"].to_numpy(), survival=data.survival_at(at), times=at,
        train_time=data.train["time"].to_numpy(), train_event=data.train["event"].to_numpy(),
    )  # fmt: skip


def _c_indices(data: FoldData, rows: np.ndarray | None = None) -> tuple[float, float]:
    test = data.test if rows is None else data.test.iloc[rows]
    t, e, r = (test[c].to_numpy(dtype=np.float64) for c in ("time", "event", "risk"))
    harrell = harrell_c(time=t, event=e, risk=r)
    uno = uno_c(
        time=t, event=e, risk=r, train_time=data.train["time"].to_numpy(),
        train_event=data.train["event"].to_numpy(), tau=data.tau(),
    )  # fmt: skip
    return harrell, uno


def fold_metrics(data: FoldData, times: Sequence[float]) -> dict[str, Any]:
    """``n`` (patients), ``n_events``, ``c_index``, ``c_index_uno``, ``auc_<t>`` at each of
    ``times`` and ``ibs``; None where undefined, with the reason in ``note``."""
    t, e, r = (data.test[c].to_numpy(dtype=np.float64) for c in ("time", "event", "risk"))
    out: dict[str, Any] = {"n": len(t), "n_events": int(e.sum())}
    note = None
    if len(t) < 2 or e.sum() == 0 or data.train["event"].sum() == 0:
        note = "no event in this fold (or its training folds): metrics undefined"
    harrell, uno = _c_indices(data) if note is None else (math.nan, math.nan)
    out.update(c_index=_number(harrell), c_index_uno=_number(uno))
    aucs = np.full(len(times), np.nan)
    if note is None:
        aucs = cumulative_auc(
            time=t, event=e, risk=r, train_time=data.train["time"].to_numpy(),
            train_event=data.train["event"].to_numpy(), times=times,
        )  # fmt: skip
    out.update({f"auc_{_label(x)}": _number(a) for x, a in zip(times, aucs, strict=True)})
    out["ibs"] = _number(_ibs(data)) if note is None else None
    out["note"] = note
    return out


def _label(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _mean(values: Sequence[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return _number(np.mean(found)) if found else None


def _pair_matrices(data: FoldData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(comparable pairs, comparable pairs weighted as Uno's, concordance) of the held-out
    patients: the C-indices of a resample are sums over its rows and columns."""
    t, e, r = (data.test[c].to_numpy(dtype=np.float64) for c in ("time", "event", "risk"))
    train_t, train_e = data.train["time"].to_numpy(), data.train["event"].to_numpy()
    weight = _inverse_weights(censoring_survival(time=train_t, event=train_e), t) ** 2
    comparable = _comparable(t, e > 0).astype(np.float64)
    uno = comparable * np.where(t < data.tau(), weight, 0.0)[:, None]
    return comparable, uno, _concordant(r)


def _bootstrap_mean_c(folds: Sequence[FoldData], seed: int, n_boot: int = 200) -> list[list]:
    """95% CIs of the mean over folds of Harrell's and of Uno's C: patients resampled
    within each fold, the folds' values averaged per replicate (percentile bootstrap)."""
    rng = np.random.default_rng(seed)
    usable = [f for f in folds if f.test["event"].sum() > 0 and f.train["event"].sum() > 0]
    matrices = [_pair_matrices(f) for f in usable]
    values = np.full((n_boot, 2), np.nan)
    for b in range(n_boot):
        per_fold = []
        for comparable, uno, concordant in matrices:
            rows = rng.integers(0, len(comparable), len(comparable))
            sub = np.ix_(rows, rows)
            c, u, k = comparable[sub], uno[sub], concordant[sub]
            with np.errstate(invalid="ignore", divide="ignore"):
                per_fold.append([(c * k).sum() / c.sum(), np.nansum(u * k) / np.nansum(u)])
        finite = np.asarray(per_fold, dtype=np.float64).reshape(-1, 2)
        for column in range(2):  # a fold whose resample has no comparable pair is skipped
            kept = finite[np.isfinite(finite[:, column]), column]
            values[b, column] = kept.mean() if kept.size else np.nan
    return [_percentiles(values[:, 0]), _percentiles(values[:, 1])]


def _percentiles(values: np.ndarray) -> list[float | None]:
    finite = values[np.isfinite(values)]
    if finite.size < len(values) / 2:
        return [None, None]
    return [_number(np.quantile(finite, 0.025)), _number(np.quantile(finite, 0.975))]


def summarise(
    folds: Sequence[FoldData],
    per_fold: Sequence[Mapping[str, Any]],
    pooled: pd.DataFrame,
    *,
    n_groups: int,
    treatment: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The metrics.json entry of a survival task: fold means of the metrics (with
    bootstrap CIs for the C-indices), and on the pooled out-of-fold patients (``pooled``:
    time, event, risk, group[, treatment]) the log-rank test, hazard ratio and, with
    ``treatment``, the treatment x risk-group interaction."""
    entry: dict[str, Any] = {"kind": "survival"}
    keys = [k for k in per_fold[0] if k not in ("fold", "n", "n_events", "note")]
    intervals = dict(zip(("c_index", "c_index_uno"), _bootstrap_mean_c(folds, seed), strict=True))
    for key in keys:
        entry[key] = _mean([f[key] for f in per_fold])
        if key in intervals:
            entry[f"{key}_ci"] = intervals[key]
    t, e, r = (pooled[c].to_numpy(dtype=np.float64) for c in ("time", "event", "risk"))
    entry["c_index_pooled"] = _number(harrell_c(time=t, event=e, risk=r))
    g = pooled["group"].to_numpy(dtype=np.int64)
    entry.update(compare_groups(time=t, event=e, group=g, n_groups=n_groups))
    if treatment is not None:
        known = pooled["treatment"].notna().to_numpy()
        entry["treatment"] = {
            "column": treatment,
            **treatment_interaction(
                time=t[known], event=e[known], group=g[known],
                treatment=pooled["treatment"].to_numpy()[known],
            ),
        }  # fmt: skip
    entry["n_patients"], entry["n_events"] = len(t), int(e.sum())
    return entry
