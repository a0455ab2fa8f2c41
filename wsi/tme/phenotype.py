"""Immune phenotype (inflamed / excluded / desert) on a µm grid, and tumour–lymphocyte
co-localisation (Morisita–Horn).

Chen & Mellman (Nature 2017;541:321-330) describe three phenotypes: *inflamed* (immune
cells in the tumour parenchyma), *immune-excluded* (immune cells held in the stroma around
it) and *immune-desert* (few immune cells anywhere). Park et al. (J Clin Oncol
2022;40:1916-1928) made them measurable on H&E: each 1 mm² grid cell that holds tumour is
*inflamed* when its intratumoral lymphocyte density is ≥ 130 /mm², else *excluded* when its
stromal density is ≥ 260 /mm², else *desert*; the slide is inflamed when at least a third
of its tumour cells are, else excluded or desert, whichever has more cells. Those are the
defaults of :class:`PhenotypeThresholds`; :meth:`PhenotypeThresholds.from_cohort` sets the
two densities from a cohort's quantiles instead (where lymphocyte counts from another
detector, or another tumour type, make absolute thresholds meaningless).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

PHENOTYPES = ("inflamed", "excluded", "desert")
"""The calls, per grid cell and per slide."""


@dataclass(frozen=True)
class PhenotypeThresholds:
    """Thresholds of the grid-cell and slide calls (see the module docstring).

    inflamed_per_mm2: least intratumoral lymphocyte density of an inflamed cell (/mm²;
        130 after Park et al. 2022).
    excluded_per_mm2: least stromal density of an excluded cell (/mm²; 260, ibid.).
    inflamed_share: least share of inflamed tumour cells for an inflamed slide (1/3, ibid.).
    cell_um: side of a grid cell (µm; 1000: 1 mm² cells, ibid.).
    min_cell_tumour_mm2: least tumour area for a cell to be called (mm²; 0.05 = 5 % of a
        1 mm² cell, so a corner clipped by the tumour does not vote).
    source: where the two densities come from (stored in provenance).
    """

    inflamed_per_mm2: float = 130.0
    excluded_per_mm2: float = 260.0
    inflamed_share: float = 1 / 3
    cell_um: float = 1000.0
    min_cell_tumour_mm2: float = 0.05
    source: str = "Park et al., J Clin Oncol 2022;40:1916-1928"

    def as_dict(self) -> dict[str, Any]:
        """The thresholds as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_cohort(
        cls,
        cells: Sequence[pd.DataFrame] | pd.DataFrame,
        *,
        quantile: float = 0.5,
        base: PhenotypeThresholds | None = None,
    ) -> PhenotypeThresholds:
        """Thresholds at the ``quantile`` of a cohort's tumour grid cells: the intratumoral
        density of the called cells for ``inflamed_per_mm2``, their stromal density (cells
        with stroma) for ``excluded_per_mm2``; the rest from ``base``.

        ``cells``: :func:`grid_cells` tables of the cohort's slides (or one concatenated).
        """
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must be between 0 and 1, got {quantile!r}")
        table = (
            cells if isinstance(cells, pd.DataFrame) else pd.concat(list(cells), ignore_index=True)
        )
        called = table[table["call"].isin(PHENOTYPES)] if len(table) else table
        if called.empty:
            raise ValueError(
                "no tumour grid cell in the cohort: cohort-quantile thresholds "
                "need slides with tumour; use the literature defaults"
            )
        stromal = called["stromal_per_mm2"].dropna()
        base = base or cls()
        return replace(
            base,
            inflamed_per_mm2=float(called["intratumoral_per_mm2"].quantile(quantile)),
            excluded_per_mm2=float(stromal.quantile(quantile))
            if len(stromal)
            else base.excluded_per_mm2,
            source=f"cohort quantile {quantile:g} of {len(called)} tumour grid cells",
        )


def morisita_horn(a: np.ndarray, b: np.ndarray) -> float:
    """Morisita–Horn overlap of two abundance vectors over the same places (0: never
    together, 1: same distribution); NaN when either is empty.

    ``2 Σ pᵢqᵢ / (Σ pᵢ² + Σ qᵢ²)`` with ``p = a / Σa``, ``q = b / Σb`` (Horn, Am Nat
    1966;100:419-424), as used for tumour–lymphocyte co-localisation by Maley et al.
    (Sci Rep 2015;5:10417).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.sum() <= 0 or b.sum() <= 0:
        return math.nan
    p, q = a / a.sum(), b / b.sum()
    return float(2 * (p * q).sum() / ((p * p).sum() + (q * q).sum()))


def _density(count: pd.Series, area_mm2: pd.Series) -> pd.Series:
    return (count / area_mm2.where(area_mm2 > 0)).astype(float)


def grid_cells(tiles: pd.DataFrame, thresholds: PhenotypeThresholds | None = None) -> pd.DataFrame:
    """One row per grid cell holding tissue, with its densities and call.

    ``tiles``: :func:`wsi.tme.regions.locate_tiles`'s table plus ``cx_um``, ``cy_um``
    (tile centres), ``area_mm2`` (tissue area counted for densities), ``tumour_mm2`` and
    ``n_lymphocytes``. Columns: ``gx``, ``gy`` (cell column/row: the cell covers
    ``[gx, gx + 1) × cell_um`` in µm), ``tumour_mm2``, ``lymphocytes``,
    ``intratumoral_per_mm2``, ``stromal_per_mm2`` (NaN without such tissue in the cell) and
    ``call`` (a phenotype, or "" for a cell without enough tumour).
    """
    t = thresholds or PhenotypeThresholds()
    gx = np.floor(tiles["cx_um"].to_numpy() / t.cell_um).astype(np.int64)
    gy = np.floor(tiles["cy_um"].to_numpy() / t.cell_um).astype(np.int64)
    region, stromal = tiles["in_tumour_region"], tiles["stromal_weight"]
    lymph, area = tiles["n_lymphocytes"], tiles["area_mm2"]
    parts = pd.DataFrame(
        {
            "gx": gx,
            "gy": gy,
            "tumour_mm2": tiles["tumour_mm2"],
            "lymphocytes": lymph,
            "in_lymph": lymph.where(region, 0),
            "in_area": area.where(region, 0),
            "st_lymph": lymph * stromal,
            "st_area": area * stromal,
        }
    )
    cells = parts.groupby(["gx", "gy"], as_index=False).sum()
    cells["intratumoral_per_mm2"] = _density(cells["in_lymph"], cells["in_area"])
    cells["stromal_per_mm2"] = _density(cells["st_lymph"], cells["st_area"])
    cells["call"] = _calls(cells, t)
    return cells.drop(columns=["in_lymph", "in_area", "st_lymph", "st_area"])


def _calls(cells: pd.DataFrame, t: PhenotypeThresholds) -> np.ndarray:
    tumour = cells["tumour_mm2"].to_numpy() >= t.min_cell_tumour_mm2
    inflamed = cells["intratumoral_per_mm2"].fillna(0).to_numpy() >= t.inflamed_per_mm2
    excluded = cells["stromal_per_mm2"].fillna(0).to_numpy() >= t.excluded_per_mm2
    call = np.where(inflamed, "inflamed", np.where(excluded, "excluded", "desert"))
    return np.where(tumour, call, "")


def slide_phenotype(
    cells: pd.DataFrame, thresholds: PhenotypeThresholds | None = None
) -> dict[str, Any]:
    """The slide's call from its grid cells: ``phenotype_<call>_fraction`` for each call (the
    share of called tumour cells), ``phenotype_cells`` and ``immune_phenotype`` (""
    without any tumour cell). Inflamed when its share reaches ``inflamed_share``; else
    excluded or desert, whichever has more cells (a tie is desert: no evidence of immune
    cells held at the border)."""
    t = thresholds or PhenotypeThresholds()
    called = cells["call"][cells["call"] != ""] if len(cells) else pd.Series([], dtype=str)
    n = len(called)
    share = {p: (float((called == p).sum()) / n if n else math.nan) for p in PHENOTYPES}
    if not n:
        call = ""
    elif share["inflamed"] >= t.inflamed_share:
        call = "inflamed"
    else:
        call = "excluded" if share["excluded"] > share["desert"] else "desert"
    row = {f"phenotype_{p}_fraction": share[p] for p in PHENOTYPES}
    return {**row, "phenotype_cells": n, "immune_phenotype": call}
