"""Risk groups with cut-offs fixed on training data, and the tests that compare them.

Cut-offs are quantiles of the *training* slides' risks (median: two groups; tertiles:
three) and are applied unchanged to held-out slides: never a cut-point search on the data
a result is reported on. Log-rank p, hazard ratio (per step up in group) and the
treatment x group interaction come from lifelines (MIT). An empty group or a model that
cannot be fitted gives NaN with the reason in ``note``, never an exception.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from models.errors import TrainingDataError
from models.survival.metrics import ArrayLike

GROUP_SCHEMES = {"median": (0.5,), "tertiles": (1 / 3, 2 / 3)}
"""Risk-group schemes: the training-risk quantiles that separate the groups."""


def group_names(n_groups: int) -> list[str]:
    """``["low", "high"]`` or ``["low", "mid", "high"]``: group 0 has the lowest risk."""
    return ["low", "high"] if n_groups == 2 else ["low", "mid", "high"]


def risk_cutoffs(*, risk: ArrayLike, scheme: str = "median") -> list[float]:
    """Cut-offs between risk groups: quantiles of the training slides' ``risk``."""
    if scheme not in GROUP_SCHEMES:
        raise TrainingDataError(
            f"risk-group scheme must be one of {sorted(GROUP_SCHEMES)}, not {scheme!r}"
        )
    r = np.asarray(risk, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        raise TrainingDataError("no finite training risk to fix risk-group cut-offs on")
    return [float(np.quantile(r, q)) for q in GROUP_SCHEMES[scheme]]


def assign_groups(*, risk: ArrayLike, cutoffs: list[float]) -> np.ndarray:
    """Group index per slide (0 = lowest risk): risk <= cutoffs[0] is group 0, and so on."""
    return np.digitize(np.asarray(risk, dtype=np.float64), np.asarray(cutoffs), right=True)


def _nan_result(note: str) -> dict[str, Any]:
    return {
        "logrank_p": None,
        "hazard_ratio": None,
        "hazard_ratio_ci": [None, None],
        "note": note,
    }


def _number(value: float) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def logrank_p(*, time: ArrayLike, event: ArrayLike, group: ArrayLike) -> float:
    """Log-rank p-value across the groups (lifelines); NaN with fewer than 2 groups or no
    event."""
    from lifelines.statistics import multivariate_logrank_test

    g = np.asarray(group)
    e = np.asarray(event, dtype=np.float64)
    if len(np.unique(g)) < 2 or e.sum() == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(multivariate_logrank_test(np.asarray(time, dtype=np.float64), g, e).p_value)


def compare_groups(
    *, time: ArrayLike, event: ArrayLike, group: ArrayLike, n_groups: int = 2
) -> dict[str, Any]:
    """Log-rank p across groups, the hazard ratio per step up in group (Cox, 95% CI) and the
    slides and events per group. NaN (None) with ``note`` when a group is empty or there is
    no event."""
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64)
    g = np.asarray(group, dtype=np.int64)
    names = group_names(n_groups)
    counts = {n: int(np.sum(g == k)) for k, n in enumerate(names)}
    events = {n: int(np.sum(e[g == k])) for k, n in enumerate(names)}
    base = {"n_per_group": counts, "events_per_group": events}
    empty = [n for n, c in counts.items() if c == 0]
    if empty:
        return {**_nan_result(f"risk group(s) {empty} empty: no comparison"), **base}
    if e.sum() == 0:
        return {**_nan_result("no event: no comparison"), **base}
    from lifelines import CoxPHFitter

    try:
        p = logrank_p(time=t, event=e, group=g)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = pd.DataFrame({"time": t, "event": e, "group": g.astype(float)})
            cox = CoxPHFitter().fit(frame, "time", "event")
        hr = float(np.exp(cox.params_["group"]))
        low, high = np.exp(cox.confidence_intervals_.loc["group"].to_numpy())
    except Exception as exc:  # lifelines: convergence failure on separated data
        return {**_nan_result(f"Cox model did not fit: {exc}"), **base}
    return {
        "logrank_p": _number(p),
        "hazard_ratio": _number(hr),
        "hazard_ratio_ci": [_number(low), _number(high)],
        "note": None,
        **base,
    }


def _binary_treatment(treatment: ArrayLike) -> tuple[np.ndarray, list[str]]:
    values = pd.Series(np.asarray(treatment, dtype=object)).astype(str)
    levels = sorted(values.unique())
    if len(levels) != 2:
        raise TrainingDataError(
            f"treatment must have exactly 2 values (arms), got {len(levels)}: {levels[:5]}"
        )
    return (values == levels[1]).to_numpy(dtype=np.float64), levels


def treatment_interaction(
    *, time: ArrayLike, event: ArrayLike, group: ArrayLike, treatment: ArrayLike
) -> dict[str, Any]:
    """Treatment x risk-group interaction: likelihood-ratio test of a Cox model with
    ``group``, ``treatment`` and their product against one without the product (1 df).
    A small ``p_interaction`` says the risk groups predict who benefits from the treatment
    (predictive), not only who does worse (prognostic). ``hr_interaction`` > 1: the
    treated arm's hazard rises more steeply with risk group. NaN with ``note`` when the
    models cannot be fitted."""
    from lifelines import CoxPHFitter
    from scipy.stats import chi2

    try:
        arm, levels = _binary_treatment(treatment)
    except TrainingDataError as exc:
        return {"p_interaction": None, "hr_interaction": None, "note": str(exc)}
    frame = pd.DataFrame(
        {
            "time": np.asarray(time, dtype=np.float64),
            "event": np.asarray(event, dtype=np.float64),
            "group": np.asarray(group, dtype=np.float64),
            "treated": arm,
        }
    )
    frame["group_x_treated"] = frame["group"] * frame["treated"]
    result: dict[str, Any] = {"arms": levels, "treated_arm": levels[1]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            full = CoxPHFitter().fit(frame, "time", "event")
            reduced = CoxPHFitter().fit(frame.drop(columns="group_x_treated"), "time", "event")
    except Exception as exc:
        return {
            **result,
            "p_interaction": None,
            "hr_interaction": None,
            "note": f"Cox model did not fit: {exc}",
        }
    statistic = 2 * (full.log_likelihood_ - reduced.log_likelihood_)
    return {
        **result,
        "lr_statistic": _number(statistic),
        "p_interaction": _number(chi2.sf(max(statistic, 0.0), df=1)),
        "hr_interaction": _number(np.exp(full.params_["group_x_treated"])),
        "note": None,
    }
