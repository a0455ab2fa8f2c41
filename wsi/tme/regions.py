"""Where each tile lies relative to the tumour: tumour region, peritumoral stroma, margin.

A slide's tiles sit on a regular lattice (stride = tile side, in µm). The *tumour region* is
the tumour tiles plus every tile they enclose (``scipy.ndimage.binary_fill_holes`` on the
lattice; the outside is 4-connected, so a ring closed only at a corner still encloses), so a
lymphocyte-rich tile inside a tumour nest counts as intratumoral. Distances are measured on
the lattice in µm from a tile's centre to the region's edge (the Euclidean distance between
tile centres, ``scipy.ndimage.distance_transform_edt``, less half a tile): a tile that
touches the region is half a tile away, whatever the tiling's µm per pixel. A tile counts
in a band (stroma within 500 µm, the margin) by the share of its area that lies in the band
(measured on a lattice of 4 × 4 sub-squares per tile), so a band's area does not grow with
the tile size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

COMPARTMENT_COLUMNS = (
    "ix",
    "iy",
    "in_tumour_region",
    "distance_um",
    "stromal",
    "margin",
    "stromal_weight",
    "margin_weight",
)
"""Columns :func:`locate_tiles` adds to a tile table."""


@dataclass(frozen=True)
class RegionParams:
    """Distances (µm) that define the compartments around the tumour region.

    stroma_distance_um: a stromal tile is at most this far outside the region's edge
        (500 µm by default: the peritumoral stroma of TIL scoring; Salgado et al., Ann
        Oncol 2015;26:259-271, score stromal TILs "within the borders of the invasive
        tumour" and the 500 µm band is the usual image-analysis reading of it).
    margin_um: the invasive margin is the band of this half-width on both sides of the
        region's edge (Galon et al., Science 2006;313:1960-1964: a 1 mm band centred on it).
    stromal_roles: roles whose tissue near the region is "stroma" for lymphocyte densities
        (lymphocyte-rich tiles classified ``immune`` count: an excluded tumour's
        lymphocytes are there).
    """

    stroma_distance_um: float = 500.0
    margin_um: float = 500.0
    stromal_roles: tuple[str, ...] = ("stroma", "immune")


def lattice_indices(
    x_um: np.ndarray, y_um: np.ndarray, stride_um: float
) -> tuple[np.ndarray, np.ndarray]:
    """Integer lattice column and row of tiles whose top-left corners are ``x_um, y_um``,
    counted from the top-left tile (µm positions are rounded to the nearest stride)."""
    if not stride_um > 0:
        raise ValueError(f"stride_um must be positive, got {stride_um!r}")
    ix = np.rint(np.asarray(x_um, float) / stride_um).astype(np.int64)
    iy = np.rint(np.asarray(y_um, float) / stride_um).astype(np.int64)
    if ix.size:
        ix, iy = ix - ix.min(), iy - iy.min()
    return ix, iy


def _raster(ix: np.ndarray, iy: np.ndarray, values: np.ndarray, pad: int = 1) -> np.ndarray:
    """A bool raster (rows = iy, columns = ix) with a ``pad``-wide False border."""
    shape = (int(iy.max()) + 1 + 2 * pad, int(ix.max()) + 1 + 2 * pad) if ix.size else (1, 1)
    raster = np.zeros(shape, bool)
    raster[iy + pad, ix + pad] = values
    return raster


def tumour_region(ix: np.ndarray, iy: np.ndarray, is_tumour: np.ndarray) -> np.ndarray:
    """bool per tile: a tumour tile, or a tile the tumour tiles enclose."""
    from scipy import ndimage

    if not np.any(is_tumour):
        return np.zeros(len(ix), bool)
    filled = ndimage.binary_fill_holes(_raster(ix, iy, np.asarray(is_tumour, bool)))
    return filled[iy + 1, ix + 1]


def distance_to_edge_um(
    ix: np.ndarray, iy: np.ndarray, inside: np.ndarray, stride_um: float
) -> np.ndarray:
    """Signed distance (µm) from each tile's centre to the edge of the ``inside`` tiles:
    positive outside, negative inside, ±half a tile next to the edge; +inf everywhere when
    nothing is inside."""
    from scipy import ndimage

    inside = np.asarray(inside, bool)
    if not inside.any():
        return np.full(len(ix), np.inf)
    raster = _raster(ix, iy, inside)
    outside_d = ndimage.distance_transform_edt(~raster, sampling=stride_um)[iy + 1, ix + 1]
    inside_d = ndimage.distance_transform_edt(raster, sampling=stride_um)[iy + 1, ix + 1]
    half = stride_um / 2
    return np.where(inside, -(inside_d - half), outside_d - half)


SUBDIVISIONS = 4
"""Sub-squares per tile side on which band shares are measured."""

_MAX_SUBCELLS = 64_000_000
"""Above this many sub-squares the lattice is subdivided less (memory stays bounded)."""


def band_weights(
    ix: np.ndarray,
    iy: np.ndarray,
    inside: np.ndarray,
    stride_um: float,
    bands: dict[str, tuple[float, float]],
) -> dict[str, np.ndarray]:
    """For each named band ``(low_um, high_um)`` of signed distance to the edge of the
    ``inside`` tiles (positive outside), the share (0..1) of each tile's area in it.

    The share is measured on :data:`SUBDIVISIONS` ² sub-squares per tile: each
    sub-square's signed distance (its centre to the nearest sub-square across the edge,
    less half a sub-square) decides whether it is in the band. All zeros when nothing is
    inside.
    """
    from scipy import ndimage

    inside = np.asarray(inside, bool)
    if not inside.any():
        return {name: np.zeros(len(ix)) for name in bands}
    raster = _raster(ix, iy, inside)
    k = SUBDIVISIONS
    while k > 1 and raster.size * k * k > _MAX_SUBCELLS:
        k //= 2
    fine = np.kron(raster, np.ones((k, k), bool))
    if k > 1:  # round the staircase's corners, which would push a band out by ~half a tile
        fine = ndimage.gaussian_filter(fine.astype(np.float32), sigma=k / 2) > 0.5
    step = stride_um / k
    signed = np.where(
        fine,
        -ndimage.distance_transform_edt(fine, sampling=step),
        ndimage.distance_transform_edt(~fine, sampling=step),
    )
    signed -= np.sign(signed) * step / 2
    blocks = signed.reshape(raster.shape[0], k, raster.shape[1], k)
    out = {}
    for name, (low, high) in bands.items():
        share = ((blocks >= low) & (blocks <= high)).mean(axis=(1, 3))
        out[name] = share[iy + 1, ix + 1]
    return out


def locate_tiles(
    tiles: pd.DataFrame, *, stride_um: float, params: RegionParams | None = None
) -> pd.DataFrame:
    """``tiles`` with :data:`COMPARTMENT_COLUMNS` added.

    ``tiles`` needs ``x_um``, ``y_um`` (top-left, µm) and ``role``. Adds the lattice
    position, ``in_tumour_region``, ``distance_um`` (signed, see
    :func:`distance_to_edge_um`), ``stromal_weight`` (the share of a stromal-role tile
    outside the region that lies within ``stroma_distance_um`` of its edge, see
    :func:`band_weights`), ``margin_weight`` (the share of a non-background tile within
    ``margin_um`` of the edge, either side; see :func:`band_weights`) and ``stromal`` /
    ``margin`` (weight > 0).
    """
    params = params or RegionParams()
    ix, iy = lattice_indices(tiles["x_um"].to_numpy(), tiles["y_um"].to_numpy(), stride_um)
    role = tiles["role"].astype(str).to_numpy()
    region = tumour_region(ix, iy, role == "tumour")
    distance = distance_to_edge_um(ix, iy, region, stride_um)
    stromal = ~region & np.isin(role, params.stromal_roles)
    shares = band_weights(
        ix,
        iy,
        region,
        stride_um,
        {
            "stromal": (0.0, params.stroma_distance_um),
            "margin": (-params.margin_um, params.margin_um),
        },
    )
    stromal_w = np.where(stromal, shares["stromal"], 0.0)
    margin_w = np.where(role != "background", shares["margin"], 0.0)
    return tiles.assign(
        ix=ix,
        iy=iy,
        in_tumour_region=region,
        distance_um=distance,
        stromal=stromal_w > 0,
        margin=margin_w > 0,
        stromal_weight=stromal_w,
        margin_weight=margin_w,
    )
