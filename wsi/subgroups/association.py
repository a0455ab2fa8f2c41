"""Do the frozen groups differ in outcome? Tests on patients, Benjamini–Hochberg over all.

Slides are first folded into patients (:func:`patient_table`): a patient's group is the
group most of its slides fall in, its outcome the first known value. Then:

* survival (``TIME:EVENT``): multivariate log-rank test across groups, and a Cox model's
  hazard ratios of each group against group 1 (the largest), adjusted for covariates, with
  a likelihood-ratio test of the group terms (lifelines);
* treatment: a Cox likelihood-ratio test of the group × treatment interaction terms, with
  the treatment's hazard ratio within each group;
* other label columns: chi-square (text or two-valued columns) or Kruskal–Wallis (numbers).

Every p-value gets a Benjamini–Hochberg q-value (``scipy.stats.false_discovery_control``).
Rows with a missing outcome, treatment or covariate are dropped from that test and counted
(``n_dropped``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from wsi.errors import LabelsError

MIN_PER_TEST = 4
"""Patients a test needs (in at least two groups) to be run at all."""

MIN_EXPECTED = 5.0
"""Below this expected count in any cell, a chi-square p-value comes from permutations."""

PERMUTATIONS = 2000
"""Label permutations of the Monte-Carlo chi-square p-value (seeded: the same p every run)."""


def patient_table(assignments: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: ``patient_id``, ``group`` (its slides' most common group, the
    lowest on a tie), ``n_slides`` and the first known value of every label column.

    ``assignments`` has ``slide_id, group``; ``labels`` has ``slide_id`` and optionally
    ``patient_id`` (absent or empty: the slide is its own patient)."""
    table = assignments[["slide_id", "group"]].merge(labels, on="slide_id", how="left")
    if "patient_id" not in table:
        table["patient_id"] = table["slide_id"]
    table["patient_id"] = table["patient_id"].where(table["patient_id"].notna(), table["slide_id"])
    by = table.groupby("patient_id", sort=True)
    group = by["group"].agg(lambda g: int(g.value_counts().sort_index().idxmax()))
    out = by.first()  # first non-null value per column
    out["group"] = group
    out["n_slides"] = by.size()
    return out.drop(columns=["slide_id"]).reset_index()


def _complete(table: pd.DataFrame, columns: Sequence[str]) -> tuple[pd.DataFrame, int]:
    keep = table[list(columns)].notna().all(axis=1)
    return table[keep].copy(), int((~keep).sum())


def _design(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Numeric covariates as they are, text ones as 0/1 indicators (first level dropped)."""
    parts = []
    for c in columns:
        col = table[c]
        if pd.api.types.is_numeric_dtype(col):
            parts.append(col.astype(float).rename(c))
        else:
            parts.append(pd.get_dummies(col.astype(str), prefix=c, drop_first=True, dtype=float))
    return pd.concat(parts, axis=1) if parts else pd.DataFrame(index=table.index)


def _group_dummies(groups: pd.Series) -> pd.DataFrame:
    levels = sorted(groups.unique())
    return pd.DataFrame(
        {f"group_{g}": (groups == g).astype(float) for g in levels[1:]}, index=groups.index
    )


def _cox(frame: pd.DataFrame, time: str, event: str) -> Any:
    from lifelines import CoxPHFitter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CoxPHFitter(penalizer=1e-6).fit(frame, duration_col=time, event_col=event)


def _lrt(full: Any, reduced: Any | None, df: int) -> tuple[float, float]:
    """Likelihood-ratio statistic and p of ``full`` against ``reduced`` (None: no terms)."""
    from scipy.stats import chi2

    if reduced is None:
        result = full.log_likelihood_ratio_test()
        return float(result.test_statistic), float(result.p_value)
    stat = max(0.0, 2.0 * (full.log_likelihood_ - reduced.log_likelihood_))
    return stat, float(chi2.sf(stat, df))


def _hazard_ratios(fit: Any, names: Sequence[str]) -> list[dict[str, Any]]:
    summary = fit.summary
    return [
        {
            "term": n,
            "hazard_ratio": float(summary.loc[n, "exp(coef)"]),
            "ci_low": float(summary.loc[n, "exp(coef) lower 95%"]),
            "ci_high": float(summary.loc[n, "exp(coef) upper 95%"]),
            "p_value": float(summary.loc[n, "p"]),
        }
        for n in names
    ]


def _outcome(
    table: pd.DataFrame, time: str, event: str, extra: Sequence[str]
) -> tuple[pd.DataFrame, int]:
    for c in (time, event, *extra):
        if c not in table.columns:
            raise LabelsError(
                f"column {c!r} is not in the labels; columns present: "
                f"{[c for c in table.columns if c not in ('group', 'n_slides')]}"
            )
    data, dropped = _complete(table, [time, event, *extra])
    data[time] = pd.to_numeric(data[time], errors="coerce")
    data[event] = pd.to_numeric(data[event], errors="coerce")
    bad = data[time].isna() | data[event].isna() | ~data[event].isin([0, 1]) | (data[time] < 0)
    if bad.any():
        raise LabelsError(
            f"{time}:{event} must be times >= 0 and events 0/1; patient(s) "
            f"{data.loc[bad, 'patient_id'].tolist()[:5]} are not"
        )
    return data, dropped


def survival_tests(
    table: pd.DataFrame, *, time: str, event: str, covariates: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Log-rank across groups and the covariate-adjusted Cox test of the group terms
    (hazard ratios against group 1 with 95 % CIs in ``"hazard_ratios"``)."""
    from lifelines.statistics import multivariate_logrank_test

    data, dropped = _outcome(table, time, event, covariates)
    base = {
        "target": time,
        "n": len(data),
        "n_events": int(data[event].sum()),
        "n_dropped": dropped,
    }
    if data["group"].nunique() < 2 or len(data) < MIN_PER_TEST:
        return [
            {
                **base,
                "test": "logrank",
                "p_value": None,
                "note": "fewer than two groups with known survival",
            }
        ]
    lr = multivariate_logrank_test(data[time], data["group"], data[event])
    tests = [
        {
            **base,
            "test": "logrank",
            "statistic": float(lr.test_statistic),
            "df": int(data["group"].nunique() - 1),
            "p_value": float(lr.p_value),
        }
    ]
    dummies = _group_dummies(data["group"])
    cov = _design(data, covariates)
    frame = pd.concat([data[[time, event]], dummies, cov], axis=1)
    try:
        full = _cox(frame, time, event)
        reduced = _cox(frame.drop(columns=dummies.columns), time, event) if cov.shape[1] else None
        stat, p = _lrt(full, reduced, dummies.shape[1])
    except Exception as exc:  # lifelines' convergence failures have several types
        tests.append({**base, "test": "cox", "p_value": None, "note": f"Cox fit failed: {exc}"})
        return tests
    tests.append(
        {
            **base,
            "test": "cox",
            "statistic": stat,
            "df": dummies.shape[1],
            "p_value": p,
            "covariates": list(covariates),
            "reference_group": int(min(data["group"])),
            "hazard_ratios": _hazard_ratios(full, dummies.columns),
        }
    )
    return tests


def _treatment_dummies(data: pd.DataFrame, treatment: str) -> pd.DataFrame:
    arm = data[treatment].astype(str)
    levels = sorted(arm.unique())
    return pd.DataFrame(
        {f"{treatment}_{lv}": (arm == lv).astype(float) for lv in levels[1:]}, index=data.index
    )


def interaction_test(
    table: pd.DataFrame,
    *,
    time: str,
    event: str,
    treatment: str,
    covariates: Sequence[str] = (),
) -> dict[str, Any]:
    """Likelihood-ratio test of the group × treatment terms of a Cox model (group +
    treatment + covariates without them), with the treatment's hazard ratio per group."""
    data, dropped = _outcome(table, time, event, [treatment, *covariates])
    base = {
        "target": time,
        "test": "interaction",
        "treatment": treatment,
        "n": len(data),
        "n_events": int(data[event].sum()),
        "n_dropped": dropped,
    }
    if data["group"].nunique() < 2 or data[treatment].nunique() < 2:
        return {**base, "p_value": None, "note": "needs two groups and two treatment arms"}
    groups, arms = _group_dummies(data["group"]), _treatment_dummies(data, treatment)
    inter = pd.DataFrame(
        {f"{g}:{a}": groups[g] * arms[a] for g in groups for a in arms}, index=data.index
    )
    frame = pd.concat([data[[time, event]], groups, arms, _design(data, covariates)], axis=1)
    try:
        reduced = _cox(frame, time, event)
        full = _cox(pd.concat([frame, inter], axis=1), time, event)
    except Exception as exc:
        return {**base, "p_value": None, "note": f"Cox fit failed: {exc}"}
    stat, p = _lrt(full, reduced, inter.shape[1])
    return {
        **base,
        "statistic": stat,
        "df": inter.shape[1],
        "p_value": p,
        "treatment_effect_by_group": _within_groups(data, time, event, arms),
    }


def _within_groups(
    data: pd.DataFrame, time: str, event: str, arms: pd.DataFrame
) -> list[dict[str, Any]]:
    """The treatment's hazard ratio(s) in each group alone (unadjusted)."""
    rows = []
    for g, part in data.groupby("group"):
        frame = pd.concat([part[[time, event]], arms.loc[part.index]], axis=1)
        if part[event].sum() < 2 or (arms.loc[part.index].std() == 0).any():
            continue
        try:
            fit = _cox(frame, time, event)
        except Exception:  # too few events in this group for a fit: no row
            continue
        rows += [{"group": int(g), **hr} for hr in _hazard_ratios(fit, arms.columns)]
    return rows


def label_tests(table: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Chi-square (text or two-valued columns) or Kruskal–Wallis (numbers) per column."""
    from scipy.stats import chi2_contingency, kruskal

    tests = []
    for c in columns:
        data, dropped = _complete(table, [c])
        base = {"target": c, "n": len(data), "n_dropped": dropped}
        values = data[c]
        numeric = pd.api.types.is_numeric_dtype(values) and values.nunique() > 2
        if data["group"].nunique() < 2 or values.nunique() < 2 or len(data) < MIN_PER_TEST:
            tests.append(
                {
                    **base,
                    "test": "kruskal" if numeric else "chi2",
                    "p_value": None,
                    "note": "one group or one value only",
                }
            )
        elif numeric:
            samples = [v.to_numpy(float) for _, v in values.groupby(data["group"])]
            stat, p = kruskal(*samples)
            tests.append(
                {
                    **base,
                    "test": "kruskal",
                    "statistic": float(stat),
                    "df": len(samples) - 1,
                    "p_value": float(p),
                }
            )
        else:
            crosstab = pd.crosstab(data["group"], values.astype(str))
            stat, p, dof, expected = chi2_contingency(crosstab, correction=False)
            method = "asymptotic"
            if expected.min() < MIN_EXPECTED:  # the chi-square law is liberal for small cells
                p, method = _permutation_p(data["group"], values.astype(str), stat), "permutation"
            tests.append(
                {
                    **base,
                    "test": "chi2",
                    "statistic": float(stat),
                    "df": int(dof),
                    "p_value": float(p),
                    "p_method": method,
                }
            )
    return tests


def _permutation_p(groups: pd.Series, values: pd.Series, observed: float) -> float:
    """Monte-Carlo p of the chi-square statistic under shuffled values, (hits + 1) / (B + 1)."""
    g = pd.factorize(groups)[0]
    v = pd.factorize(values)[0]
    n_g, n_v = g.max() + 1, v.max() + 1
    expected = np.outer(np.bincount(g), np.bincount(v)) / len(g)
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(PERMUTATIONS):
        table = np.bincount(g * n_v + rng.permutation(v), minlength=n_g * n_v).reshape(n_g, n_v)
        hits += ((table - expected) ** 2 / expected).sum() >= observed - 1e-9
    return (hits + 1) / (PERMUTATIONS + 1)


def add_q_values(tests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Benjamini–Hochberg q-values over every test with a p-value (None elsewhere)."""
    from scipy.stats import false_discovery_control

    ps = [t["p_value"] for t in tests if t.get("p_value") is not None]
    qs = iter(false_discovery_control(ps, method="bh").tolist() if ps else [])
    for t in tests:
        t["q_value"] = next(qs) if t.get("p_value") is not None else None
    return tests


def associate(
    table: pd.DataFrame,
    *,
    survival: tuple[str, str] | None = None,
    treatment: str | None = None,
    covariates: Sequence[str] = (),
    targets: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Every test on a :func:`patient_table`, with q-values: survival (log-rank, Cox),
    the treatment interaction (needs ``survival``), then each of ``targets``."""
    tests: list[dict[str, Any]] = []
    if treatment is not None and survival is None:
        raise LabelsError(
            "--treatment needs --survival TIME:EVENT: the interaction is tested on survival"
        )
    if survival is not None:
        tests += survival_tests(table, time=survival[0], event=survival[1], covariates=covariates)
    if treatment is not None and survival is not None:
        tests.append(
            interaction_test(
                table,
                time=survival[0],
                event=survival[1],
                treatment=treatment,
                covariates=covariates,
            )
        )
    absent = [c for c in targets if c not in table.columns]
    if absent:
        raise LabelsError(f"label column(s) {absent} not in the labels")
    tests += label_tests(table, targets)
    return add_q_values(tests)
