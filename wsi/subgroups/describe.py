"""What sets each group apart: feature effect sizes and mean TME per group."""

from __future__ import annotations

import numpy as np
import pandas as pd

TOP_FEATURES = 5
"""Features listed per group, by absolute effect size."""


def effect_sizes(
    table: pd.DataFrame, groups: pd.Series, *, top: int = TOP_FEATURES
) -> pd.DataFrame:
    """Per group, the ``top`` columns whose mean differs most from the other slides':
    ``group, feature, mean_group, mean_rest, cohens_d`` (pooled-SD standardised difference).

    ``table`` and ``groups`` are indexed by slide_id."""
    groups = groups.reindex(table.index)
    x = table.to_numpy(np.float64)
    rows = []
    for g in sorted(groups.unique()):
        inside = (groups == g).to_numpy()
        a, b = x[inside], x[~inside]
        if len(a) < 2 or len(b) < 2:
            continue
        pooled = np.sqrt(
            ((len(a) - 1) * a.var(axis=0, ddof=1) + (len(b) - 1) * b.var(axis=0, ddof=1))
            / (len(a) + len(b) - 2)
        )
        d = np.divide(
            a.mean(axis=0) - b.mean(axis=0), pooled, out=np.zeros(x.shape[1]), where=pooled > 0
        )
        for j in np.argsort(-np.abs(d))[:top]:
            rows.append(
                {
                    "group": int(g),
                    "feature": str(table.columns[j]),
                    "mean_group": float(a[:, j].mean()),
                    "mean_rest": float(b[:, j].mean()),
                    "cohens_d": float(d[j]),
                }
            )
    return pd.DataFrame(rows, columns=["group", "feature", "mean_group", "mean_rest", "cohens_d"])


def group_profiles(
    numeric: pd.DataFrame, text: pd.DataFrame | None, groups: pd.Series
) -> pd.DataFrame:
    """Per group: ``n_slides``, the mean of every numeric TME column and, for each text
    column (``immune_phenotype``), the fraction of the group's slides with each value."""
    groups = groups.rename("group")
    frame = numeric.join(groups, how="inner")
    out = frame.groupby("group").mean()
    out.insert(0, "n_slides", frame.groupby("group").size())
    if text is not None:
        for c in text.columns:
            mix = pd.crosstab(
                groups, text[c].reindex(groups.index).fillna("unknown"), normalize="index"
            )
            mix.columns = [f"{c}_{v}" for v in mix.columns]
            out = out.join(mix)
    return out.reset_index()
