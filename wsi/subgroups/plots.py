"""Pictures of the groups: UMAP of slides, Kaplan–Meier panel, forest plot (PNG files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _figure(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def umap_plot(z: np.ndarray, groups: np.ndarray, path: Path, *, seed: int = 0) -> Path:
    """A 2-d UMAP (umap-learn) of the slides in model space, coloured by group."""
    import umap

    neighbours = max(2, min(15, len(z) - 1))
    xy = umap.UMAP(n_neighbors=neighbours, random_state=seed, n_jobs=1).fit_transform(z)
    fig, ax = _figure(figsize=(5.5, 4.5))
    for g in sorted(set(groups.tolist())):
        ax.scatter(*xy[groups == g].T, s=25, label=f"group {g}")
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(f"{len(z)} slides by subgroup")
    ax.legend(fontsize=8)
    return _save(fig, path)


def km_panel(
    table: pd.DataFrame, *, time: str, event: str, path: Path, treatment: str | None = None
) -> Path:
    """Kaplan–Meier curves per group (lifelines); with ``treatment``, one panel per group
    with a curve per arm."""
    from lifelines import KaplanMeierFitter

    data = table.dropna(subset=[time, event] + ([treatment] if treatment else []))
    groups = sorted(data["group"].unique())
    panels = [(None, data)] if treatment is None else [(g, data[data.group == g]) for g in groups]
    fig, axes = _figure(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, (g, part) in zip(axes[0], panels, strict=True):
        split = "group" if treatment is None else treatment
        for value, arm in part.groupby(split):
            label = f"group {value}" if treatment is None else f"{treatment}={value}"
            KaplanMeierFitter().fit(
                arm[time], arm[event], label=f"{label} (n={len(arm)})"
            ).plot_survival_function(ax=ax, ci_show=False)
        ax.set_xlabel(time)
        ax.set_ylim(0, 1.02)
        ax.set_title("all patients" if g is None else f"group {g}")
    axes[0][0].set_ylabel("survival probability")
    return _save(fig, path)


def forest_plot(tests: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Hazard ratios with 95 % CIs: groups against the reference (Cox) and the treatment
    within each group (interaction test). None when no test has hazard ratios."""
    rows = []
    for t in tests:
        for hr in t.get("hazard_ratios", []):
            rows.append((f"{hr['term']} vs group {t['reference_group']}", hr))
        for hr in t.get("treatment_effect_by_group", []):
            rows.append((f"{hr['term']} in group {hr['group']}", hr))
    if not rows:
        return None
    fig, ax = _figure(figsize=(6.5, 0.45 * len(rows) + 1.2))
    for i, (_, hr) in enumerate(rows):
        ax.plot([hr["ci_low"], hr["ci_high"]], [i, i], color="black")
        ax.plot(hr["hazard_ratio"], i, "s", color="tab:blue")
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel("hazard ratio (95 % CI), > 1 = worse")
    return _save(fig, path)
