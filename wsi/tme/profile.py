"""A slide's tumour micro-environment profile from its per-tile table (pure, no pixels).

    tiles = pd.DataFrame({"x_um": ..., "y_um": ..., "role": ..., "n_lymphocytes": ...,
                          "n_nuclei": ..., "tissue_fraction": ...})
    profile = slide_profile(tiles, tile_um=112.0)       # 224 px at 0.5 µm/px
    profile.row["lymphocytes_per_mm2_intratumoral"], profile.row["immune_phenotype"]

Every distance is in µm and every area in mm², so two tilings of one slide (0.5 and
1.0 µm/px) give the same densities up to where tile edges fall. Definitions:

- tissue area of a tile = tile side² × ``tissue_fraction``; ``fraction_<role>`` = the
  role's tissue area over the slide's (fractions sum to 1);
- ``tumour_stroma_ratio`` = stroma ÷ (tumour + stroma) area: the stroma percentage of
  Mesker et al. (Cell Oncol 2007;29:387-398; stroma-high > 0.5, van Pelt et al., Virchows
  Arch 2018;473:405-412);
- densities count lymphocyte-like nuclei over tissue area, background tiles left out: over
  the slide, in the tumour region (:mod:`wsi.tme.regions`: tumour tiles + what they enclose),
  in the peritumoral stroma and in the invasive-margin band;
- ``morisita_horn``: co-localisation of tumour area and lymphocytes on a µm grid;
- the immune phenotype from 1 mm² grid cells (:mod:`wsi.tme.phenotype`);
- ``evaluable``: at least ``min_tumour_area_mm2`` of tumour; a slide without tumour has
  NaN tumour-relative densities and no phenotype, and does not raise.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from wsi.tme.phenotype import PhenotypeThresholds, grid_cells, morisita_horn, slide_phenotype
from wsi.tme.regions import RegionParams, locate_tiles
from wsi.tme.roles import ROLES

PROFILE_ROLES = ROLES
"""The roles a profile has a ``fraction_<role>`` column for: :data:`wsi.tme.roles.ROLES`."""

REQUIRED_COLUMNS = ("x_um", "y_um", "role", "n_lymphocytes")
"""Columns a tile table must have; ``n_nuclei``, ``tissue_fraction`` (default 1) and
``confidence`` (the classifier's top probability) are optional."""


@dataclass(frozen=True)
class ProfileParams:
    """Everything a profile depends on besides the tiles (stored in its provenance).

    regions: distances of the stromal and margin compartments (:class:`RegionParams`).
    thresholds: the immune-phenotype grid and thresholds (:class:`PhenotypeThresholds`).
    colocalisation_um: grid cell side for the Morisita–Horn index (µm; 1 mm like the
        phenotype grid, so each cell holds several tiles at either tiling).
    min_tumour_area_mm2: least tumour area of an evaluable slide (mm²; half a phenotype
        grid cell's worth, below which a call rests on one or two cells).
    """

    regions: RegionParams = field(default_factory=RegionParams)
    thresholds: PhenotypeThresholds = field(default_factory=PhenotypeThresholds)
    colocalisation_um: float = 1000.0
    min_tumour_area_mm2: float = 0.5

    def as_dict(self) -> dict[str, Any]:
        """The parameters as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, repr=False)
class TmeProfile:
    """One slide's profile: ``row`` (the ``tme.csv`` columns), ``tiles`` (the tile table
    with compartments, centres and areas), ``cells`` (phenotype grid cells) and ``params``."""

    row: dict[str, Any]
    tiles: pd.DataFrame
    cells: pd.DataFrame
    params: ProfileParams

    def __repr__(self) -> str:
        r = self.row
        return (
            f"TmeProfile({r.get('slide_id') or '?'}: {len(self.tiles)} tiles, tumour "
            f"{r['tumour_area_mm2']:.2f} mm², {r['immune_phenotype'] or 'no phenotype'}, "
            f"evaluable={r['evaluable']})"
        )

    def to_json(self) -> str:
        """The row and the parameters as JSON (NaN written as null)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float | np.floating) and not math.isfinite(value):
                return None
            return value.item() if isinstance(value, np.generic) else value

        body = {
            "profile": {k: clean(v) for k, v in self.row.items()},
            "params": self.params.as_dict(),
        }
        return json.dumps(body, indent=2)


def _checked(tiles: pd.DataFrame, tile_um: float) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in tiles.columns]
    if missing:
        raise ValueError(f"tile table lacks columns {missing}; it needs {list(REQUIRED_COLUMNS)}")
    if not tile_um > 0:
        raise ValueError(f"tile_um must be the tile side in µm (> 0), got {tile_um!r}")
    unknown = sorted(set(tiles["role"].astype(str)) - set(PROFILE_ROLES))
    if unknown:
        raise ValueError(
            f"roles {unknown} are not among {list(PROFILE_ROLES)}: map each class to a role first"
        )
    return tiles.reset_index(drop=True)


def _with_areas(tiles: pd.DataFrame, tile_um: float) -> pd.DataFrame:
    """Centres (µm) and areas (mm²): ``tissue_mm2`` of every tile, ``area_mm2`` counted
    for densities (background tiles: 0), ``tumour_mm2`` of tumour tiles."""
    fraction = tiles.get("tissue_fraction", 1.0)
    tissue = (tile_um / 1000.0) ** 2 * pd.Series(fraction, index=tiles.index, dtype=float)
    role = tiles["role"].astype(str)
    return tiles.assign(
        cx_um=tiles["x_um"] + tile_um / 2,
        cy_um=tiles["y_um"] + tile_um / 2,
        tissue_mm2=tissue,
        area_mm2=tissue.where(role != "background", 0.0),
        tumour_mm2=tissue.where(role == "tumour", 0.0),
    )


def _density(tiles: pd.DataFrame, weight: pd.Series | None = None) -> tuple[float, float]:
    """(lymphocytes per mm², area mm²) over the non-background tiles, each counted by
    ``weight`` (a bool selection, or the share of the tile in a band)."""
    w = 1.0 if weight is None else weight.astype(float)
    area = float((tiles["area_mm2"] * w).sum())
    count = float((tiles["n_lymphocytes"] * w).sum())
    return (count / area if area > 0 else math.nan), area


def _composition(tiles: pd.DataFrame) -> dict[str, Any]:
    by_role = tiles.groupby(tiles["role"].astype(str))["tissue_mm2"].sum()
    total = float(by_role.sum())
    row: dict[str, Any] = {"n_tiles": len(tiles), "tissue_area_mm2": total}
    for role in PROFILE_ROLES:
        row[f"fraction_{role}"] = float(by_role.get(role, 0.0)) / total if total > 0 else math.nan
    tumour, stroma = float(by_role.get("tumour", 0.0)), float(by_role.get("stroma", 0.0))
    row["tumour_area_mm2"] = tumour
    row["stroma_area_mm2"] = stroma
    row["tumour_stroma_ratio"] = stroma / (tumour + stroma) if tumour + stroma > 0 else math.nan
    return row


def _densities(tiles: pd.DataFrame) -> dict[str, Any]:
    overall, _ = _density(tiles)
    intra, region_mm2 = _density(tiles, tiles["in_tumour_region"])
    stromal, stromal_mm2 = _density(tiles, tiles["stromal_weight"])
    margin, margin_mm2 = _density(tiles, tiles["margin_weight"])
    nuclei = float(tiles["n_nuclei"].sum()) if "n_nuclei" in tiles else math.nan
    area = float(tiles["area_mm2"].sum())
    return {
        "lymphocytes_per_mm2": overall,
        "lymphocytes_per_mm2_intratumoral": intra,
        "lymphocytes_per_mm2_stromal": stromal,
        "lymphocytes_per_mm2_margin": margin,
        "nuclei_per_mm2": nuclei / area if area > 0 else math.nan,
        "tumour_region_mm2": region_mm2,
        "stromal_area_mm2": stromal_mm2,
        "margin_area_mm2": margin_mm2,
    }


def colocalisation(tiles: pd.DataFrame, cell_um: float) -> float:
    """Morisita–Horn index of tumour area and lymphocyte counts over ``cell_um`` grid cells
    (tiles assigned by their centre); NaN without tumour or without lymphocytes."""
    gx = np.floor(tiles["cx_um"].to_numpy() / cell_um)
    gy = np.floor(tiles["cy_um"].to_numpy() / cell_um)
    per_cell = (
        tiles.assign(gx=gx, gy=gy).groupby(["gx", "gy"])[["tumour_mm2", "n_lymphocytes"]].sum()
    )
    return morisita_horn(per_cell["tumour_mm2"].to_numpy(), per_cell["n_lymphocytes"].to_numpy())


def slide_profile(
    tiles: pd.DataFrame,
    *,
    tile_um: float,
    stride_um: float | None = None,
    params: ProfileParams | None = None,
    slide_id: str = "",
) -> TmeProfile:
    """The profile of one slide from its tile table (see the module docstring).

    ``tiles``: one row per tile with :data:`REQUIRED_COLUMNS` (``x_um``, ``y_um``: top-left
    corner in µm; ``role``: one of :data:`PROFILE_ROLES`; ``n_lymphocytes``: lymphocyte-like
    nuclei in the tile), optionally ``n_nuclei``, ``tissue_fraction`` and ``confidence``.
    ``tile_um``: tile side in µm; ``stride_um``: lattice step (default: the tile side).
    """
    params = params or ProfileParams()
    tiles = _with_areas(_checked(tiles, tile_um), tile_um)
    tiles = locate_tiles(tiles, stride_um=stride_um or tile_um, params=params.regions)
    cells = grid_cells(tiles, params.thresholds)
    row: dict[str, Any] = {"slide_id": slide_id, **_composition(tiles), **_densities(tiles)}
    row["morisita_horn"] = colocalisation(tiles, params.colocalisation_um)
    row.update(slide_phenotype(cells, params.thresholds))
    row["evaluable"] = bool(row["tumour_area_mm2"] >= params.min_tumour_area_mm2)
    row["mean_confidence"] = (
        float(tiles["confidence"].mean()) if "confidence" in tiles and len(tiles) else math.nan
    )
    return TmeProfile(row, tiles, cells, params)
