"""Survival metrics with one sign convention: ``risk`` higher = worse (shorter survival).

Every function takes keyword-only ``time=`` (follow-up, any unit), ``event=`` (1 observed,
0 censored) and ``risk=``, so that arguments cannot be swapped silently. Undefined metrics
(no comparable pair, every slide censored, no time inside the follow-up) are NaN, never an
exception. Harrell's C comes from lifelines; Uno's C, the cumulative/dynamic AUC and the
integrated Brier score are written here from their papers (Uno et al. 2011, Uno et al.
2007, Graf et al. 1999) because the library that has them (scikit-survival) is GPL; the
tests pin them to scikit-survival to 1e-6.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ArrayLike = Sequence[float] | np.ndarray


def _arrays(time: ArrayLike, event: ArrayLike, *others: ArrayLike) -> list[np.ndarray]:
    arrays = [np.asarray(time, dtype=np.float64), np.asarray(event, dtype=np.float64) > 0]
    arrays += [np.asarray(o, dtype=np.float64) for o in others]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(
            f"time, event and risk must have the same length, got {[len(a) for a in arrays]}"
        )
    return arrays


def harrell_c(*, time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> float:
    """Harrell's concordance of ``risk`` (higher = worse) with survival; 0.5 for random.

    Pairs (i, j) are comparable when i had an event before j's time (or at j's censoring
    time); tied risks count one half. NaN without a comparable pair (lifelines'
    ``concordance_index`` on ``-risk``)."""
    from lifelines.utils import concordance_index

    t, e, r = _arrays(time, event, risk)
    if not e.any() or len(t) < 2:
        return float("nan")
    try:
        return float(concordance_index(t, -r, e))
    except ZeroDivisionError:  # lifelines: "No admissable pairs in the dataset"
        return float("nan")


def censoring_survival(*, time: ArrayLike, event: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier estimate G(t) of the censoring distribution: (distinct times, G at them).

    Censorings are the "events"; a slide with an event at t is no longer at risk of being
    censored at t (events come before censorings at tied times). G(t) for any t is the
    value at the last distinct time <= t (1 before the first)."""
    t, e = _arrays(time, event)
    times = np.unique(t)
    censored = np.array([np.sum((t == u) & ~e) for u in times], dtype=np.float64)
    events = np.array([np.sum((t == u) & e) for u in times], dtype=np.float64)
    at_risk = np.array([np.sum(t >= u) for u in times], dtype=np.float64) - events
    ratio = np.divide(censored, at_risk, out=np.zeros_like(censored), where=censored > 0)
    return times, np.cumprod(1.0 - ratio)


def _g_at(curve: tuple[np.ndarray, np.ndarray], t: np.ndarray) -> np.ndarray:
    times, probs = curve
    index = np.searchsorted(times, t, side="right") - 1
    return np.where(index >= 0, probs[np.clip(index, 0, None)], 1.0)


def _inverse_weights(curve: tuple[np.ndarray, np.ndarray], t: np.ndarray) -> np.ndarray:
    g = _g_at(curve, t)
    return np.divide(1.0, g, out=np.full_like(g, np.nan), where=g > 0)


def _comparable(t: np.ndarray, e: np.ndarray) -> np.ndarray:
    """(n, n): i had an event and j outlived it (or was censored at the same time)."""
    later = t[None, :] > t[:, None]
    censored_same = (t[None, :] == t[:, None]) & ~e[None, :]
    return e[:, None] & (later | censored_same)


def _concordant(r: np.ndarray, tied_tol: float = 1e-8) -> np.ndarray:
    """(n, n): 1 where r_i > r_j, 1/2 where they tie within ``tied_tol``."""
    diff = r[:, None] - r[None, :]
    return np.where(np.abs(diff) <= tied_tol, 0.5, (diff > 0).astype(np.float64))


def uno_c(
    *,
    time: ArrayLike,
    event: ArrayLike,
    risk: ArrayLike,
    train_time: ArrayLike,
    train_event: ArrayLike,
    tau: float | None = None,
) -> float:
    """Uno's IPCW concordance (Uno et al. 2011) up to ``tau``: comparable pairs weighted by
    1/G(T_i)^2, G the censoring distribution of the training slides (``train_time``,
    ``train_event``). Only events before ``tau`` count. NaN without a comparable pair or
    where G reaches 0 (follow-up beyond the training data's censoring)."""
    t, e, r = _arrays(time, event, risk)
    curve = censoring_survival(time=train_time, event=train_event)
    weight = _inverse_weights(curve, t) ** 2
    if tau is not None:
        weight = np.where(t < tau, weight, 0.0)
    pairs = _comparable(t, e) * weight[:, None]
    denominator = np.nansum(pairs)
    if denominator <= 0 or np.isnan(pairs[pairs > 0]).any():
        return float("nan")
    return float(np.sum(pairs * _concordant(r)) / denominator)


def cumulative_auc(
    *,
    time: ArrayLike,
    event: ArrayLike,
    risk: ArrayLike,
    train_time: ArrayLike,
    train_event: ArrayLike,
    times: ArrayLike,
) -> np.ndarray:
    """Cumulative/dynamic AUC(t) at each of ``times`` (Uno et al. 2007): cases had an event
    by t (weighted 1/G(T_i), G from the training slides), controls are still at risk after
    t. NaN at a time without cases or controls."""
    t, e, r = _arrays(time, event, risk)
    curve = censoring_survival(time=train_time, event=train_event)
    weight = _inverse_weights(curve, t)
    concordant = _concordant(r)
    out = []
    for when in np.atleast_1d(np.asarray(times, dtype=np.float64)):
        cases = np.where((t <= when) & e, weight, 0.0)
        controls = (t > when).astype(np.float64)
        denominator = cases.sum() * controls.sum()
        ok = denominator > 0 and np.isfinite(denominator)
        out.append(cases @ concordant @ controls / denominator if ok else np.nan)
    return np.asarray(out, dtype=np.float64)


def integrated_brier(
    *,
    time: ArrayLike,
    event: ArrayLike,
    survival: np.ndarray,
    times: ArrayLike,
    train_time: ArrayLike,
    train_event: ArrayLike,
) -> float:
    """Integrated Brier score (Graf et al. 1999; lower is better, 0.25 for a coin) of
    predicted survival probabilities ``survival`` (n, len(times)) at ``times``: the IPCW
    Brier score at each time, integrated by the trapezoid rule over [times[0], times[-1]]
    and divided by that span. NaN with fewer than two times."""
    t, e = _arrays(time, event)
    times = np.asarray(times, dtype=np.float64)
    survival = np.asarray(survival, dtype=np.float64)
    if times.size < 2 or len(t) == 0:
        return float("nan")
    curve = censoring_survival(time=train_time, event=train_event)
    g_observed = _g_at(curve, t)
    g_times = _g_at(curve, times)
    scores = []
    for k, when in enumerate(times):
        case = ((t <= when) & e).astype(np.float64)
        control = (t > when).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            term = np.where(case > 0, survival[:, k] ** 2 / g_observed, 0.0)
            term = term + np.where(control > 0, (1 - survival[:, k]) ** 2 / g_times[k], 0.0)
        scores.append(np.mean(term))
    return float(np.trapezoid(scores, times) / (times[-1] - times[0]))
