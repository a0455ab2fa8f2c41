"""Kaplan-Meier curves per risk group with a number-at-risk table (lifelines), as PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def km_plot(
    *,
    time: Sequence[float] | np.ndarray,
    event: Sequence[float] | np.ndarray,
    group: Sequence[str] | np.ndarray,
    out_png: str | os.PathLike[str],
    order: Sequence[str] = ("low", "mid", "high"),
    title: str = "",
    time_unit: str = "months",
) -> Path:
    """Write Kaplan-Meier curves of each risk group present (in ``order``) with the number
    at risk under the axis to ``out_png``; an empty group is named in the legend."""
    import matplotlib.pyplot as plt  # no backend switch: a notebook keeps its inline figures
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts

    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64)
    g = np.asarray(group, dtype=object)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    fitters = []
    for name in [n for n in order if n in set(g) or n in ("low", "high")]:
        rows = g == name
        if not rows.any():
            ax.plot([], [], label=f"{name} risk (no patient)")
            continue
        fitter = KaplanMeierFitter(label=f"{name} risk (n={int(rows.sum())})")
        fitter.fit(t[rows], e[rows])
        fitter.plot_survival_function(ax=ax, ci_show=True)
        fitters.append(fitter)
    ax.set_xlabel(f"time ({time_unit})")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    if fitters:
        add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk"])
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
