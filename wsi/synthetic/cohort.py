"""A synthetic cohort of H&E-like whole-slide images with known labels, for demos and tests.

Each slide is drawn analytically from its :class:`SlideSpec`: a blobby tissue outline with
a few holes (and, on some slides, a pen stroke) on bright glass; inside it, normal fibrous
stroma and a tumour whose *architecture* depends on the slide's tumour type; on top, small
dark lymphocytes whose density and patch extent grow with the slide's immune score.
Colours follow Beer-Lambert mixing of haematoxylin (purple nuclei) and eosin (pink
stroma) with a per-slide stain jitter, so a global colour says nothing about the labels.

Everything is a pure function of level-0 position and the slide's seed: smooth fields are
value noise on hashed lattices (stored per slide every 16 px), cells and glands are
jittered hashed lattices, so any window renders the same at any time and in any order.
Coarse levels sample the same functions at pixel centres, with nuclei smaller than a pixel
spread over their cell and mixed by light rather than stain, so they look like a blurred
level 0 (mean colour within a few grey levels). Level 0 is 0.5 µm/px (about 20x).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from wsi.errors import InvalidParameterError
from wsi.synthetic.slides import GLASS, Painter, PenMark, write_slide

TUMOUR_TYPES: tuple[str, ...] = ("glandular", "solid", "sarcomatoid")
"""Tumour architectures: round lumens ringed by nuclei in stroma; dense sheets of large
pleomorphic nuclei; elongated spindle nuclei in wavy fascicles."""

SLIDE_MPP = 0.5
"""µm per level-0 pixel of every synthetic slide."""

DEFAULT_SIZE_PX = (5120, 3840)
"""Typical level-0 slide size (px); ``cohort_specs`` varies each side by up to ±256 px."""

LABEL_COLUMNS = ("slide_id", "patient_id", "tumour_type", "immune_score")
"""Columns of ``labels.csv``; an empty ``immune_score`` means unknown."""

LYMPHOCYTE_RADIUS_PX = (5.5, 7.5)
"""Radius range of lymphocyte nuclei in level-0 px (≈ 5.5-7.5 µm diameter at 0.5 µm/px)."""

_HAEMATOXYLIN_RGB = np.array([70.0, 40.0, 120.0])
_EOSIN_RGB = np.array([230.0, 150.0, 190.0])
_SMEAR_STEP = 6.0
_NOISE_TABLE_PX = 256
_TISSUE_FRACTION = (0.38, 0.50)
_TUMOUR_FRACTION = (0.55, 0.75)
_TISSUE_OCTAVES = ((1400.0, 1.0), (700.0, 0.5), (350.0, 0.25), (175.0, 0.12))
_RASTER_PX = 16.0
_RASTER_MARGIN_PX = 512.0
_SPARSE = 0.3


@dataclass(frozen=True)
class SlideSpec:
    """Everything that decides one synthetic slide.

    ``immune_score`` in [0, 1] is the true infiltration the slide is drawn with;
    ``immune_known=False`` leaves it out of ``labels.csv`` (an unknown label). ``width`` and
    ``height`` are level-0 pixels at :data:`SLIDE_MPP`; ``pen`` adds an ink stroke;
    ``flavour`` is the file format (``"svs"`` or ``"tiff"``).
    """

    slide_id: str
    patient_id: str
    tumour_type: str
    immune_score: float
    width: int
    height: int
    seed: int
    pen: bool = False
    flavour: Literal["svs", "tiff"] = "tiff"
    immune_known: bool = True

    def __post_init__(self) -> None:
        if self.tumour_type not in TUMOUR_TYPES:
            raise InvalidParameterError(
                f"{self.slide_id}: unknown tumour_type {self.tumour_type!r}; "
                f"choose one of {', '.join(TUMOUR_TYPES)}"
            )
        if not 0.0 <= self.immune_score <= 1.0:
            raise InvalidParameterError(
                f"{self.slide_id}: immune_score must be in [0, 1], got {self.immune_score}"
            )
        if self.width < 1024 or self.height < 1024:
            raise InvalidParameterError(
                f"{self.slide_id}: slides must be at least 1024 x 1024 px, "
                f"got {self.width} x {self.height}"
            )
        if self.flavour not in ("svs", "tiff"):
            raise InvalidParameterError(
                f"{self.slide_id}: flavour must be 'svs' or 'tiff', got {self.flavour!r}"
            )

    @property
    def file_name(self) -> str:
        """``{slide_id}.svs`` or ``{slide_id}.tiff``."""
        return f"{self.slide_id}.{self.flavour}"


# --- hashing and noise -------------------------------------------------------------------

_F = np.float32


def _mix(h: np.ndarray) -> np.ndarray:
    """A 32-bit integer finaliser (xor-shift-multiply), elementwise on uint32 arrays."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def _u32(values: np.ndarray | int) -> np.ndarray:
    """Integers as uint32 arrays, wrapping modulo 2**32 (negative ones included)."""
    return np.atleast_1d(np.asarray(values, dtype=np.int64)).astype(np.uint32)


def _key(seed: int, salt: int) -> np.ndarray:
    """A 32-bit key (shape (1,)) for one use (``salt``) of one slide's ``seed``."""
    return _mix(_u32(seed) ^ _mix(_u32(salt) + np.uint32(0x9E3779B9)))


def _lattice_uniforms(key: np.ndarray, ix: np.ndarray, iy: np.ndarray, n: int) -> np.ndarray:
    """``n`` independent uniforms in [0, 1) per lattice point: float32 (n, len(iy), len(ix))."""
    hy = _mix(_u32(iy) ^ key)
    h = _mix(hy[:, None] + _u32(ix)[None, :] * np.uint32(0x9E3779B9))
    salts = np.arange(1, n + 1, dtype=np.uint32)[:, None, None] * np.uint32(0x85EBCA6B)
    return (_mix(h[None] ^ salts) >> np.uint32(8)).astype(_F) * _F(2.0**-24)


def _interpolation(coords: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Smoothstep weights (len(coords), n) of each coordinate on lattice nodes (n,) ``scale``
    px apart: two non-zeros per row."""
    g = coords / _F(scale)
    cell = np.floor(g)
    f = g - cell
    s = f * f * (_F(3.0) - _F(2.0) * f)
    index = cell.astype(np.int64)
    first = int(index.min())
    weights = np.zeros((coords.size, int(index.max()) - first + 2), _F)
    rows = np.arange(coords.size)
    weights[rows, index - first] = _F(1.0) - s
    weights[rows, index - first + 1] = s
    return weights, np.arange(first, first + weights.shape[1])


def _fbm(
    xs: np.ndarray,
    ys: np.ndarray,
    octaves: Sequence[tuple[float, float]],
    seed: int,
    salt: int,
    step: float,
) -> np.ndarray:
    """Sum of value-noise octaves ``(scale px, weight)`` on the grid ``ys`` x ``xs``; each
    octave is smooth noise in [-1, 1] with features ``scale`` px wide, and octaves finer
    than 2 samples drop out (their mean is 0).

    Lattice values are hashed and interpolated separably: every octave's rows are stacked
    into one (H, K) x (K, W) product, done by ``einsum`` (no BLAS threads, which thrash
    on small products when slides are written from several threads).
    """
    rows, cols = [], []
    for i, (scale, weight) in enumerate(octaves):
        if scale < 2 * step:
            continue
        wx, nodes_x = _interpolation(xs, scale)
        wy, nodes_y = _interpolation(ys, scale)
        lattice = _F(2.0) * _lattice_uniforms(_key(seed, salt + i), nodes_x, nodes_y, 1)[0] - 1
        rows.append(np.einsum("hn,nk->hk", wy, _F(weight) * lattice))
        cols.append(wx.T)
    if not rows:
        return np.zeros((ys.size, xs.size), _F)
    return np.einsum("hk,kw->hw", np.concatenate(rows, axis=1), np.concatenate(cols, axis=0))


def _turns(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """``atan2(dy, dx)`` in turns [0, 1), to ~0.25° (a polynomial, faster than numpy's)."""
    ax, ay = np.abs(dx), np.abs(dy)
    z = np.minimum(ax, ay) / (np.maximum(ax, ay) + _F(1e-6))
    a = z * (_F(0.125) + _F(0.04345) * (_F(1.0) - z))
    a += (ay > ax) * (_F(0.25) - _F(2.0) * a)
    a += (dx < 0) * (_F(0.5) - _F(2.0) * a)
    return a - (dy < 0) * (_F(2.0) * a - _F(1.0))


@dataclass(frozen=True)
class _Field:
    """A smooth field: value-noise octaves ``(scale px, weight)`` hashed with ``salt``."""

    octaves: tuple[tuple[float, float], ...]
    salt: int


class _Raster:
    """A slide's smooth fields, stored every :data:`_RASTER_PX` px and read bilinearly.

    Storing them once per slide makes a window's fields a few gathers instead of several
    octaves of hashed noise each. Bilinear interpolation never leaves the range of its
    four nodes, so the nodes under a window bound the field exactly (see :meth:`bounds`).
    Coordinates past the stored margin read the edge nodes.
    """

    def __init__(self, seed: int, width: int, height: int, fields: dict[str, _Field]) -> None:
        self.origin = -_RASTER_MARGIN_PX
        nx = math.ceil((width + 2 * _RASTER_MARGIN_PX) / _RASTER_PX) + 2
        ny = math.ceil((height + 2 * _RASTER_MARGIN_PX) / _RASTER_PX) + 2
        self.nodes_x = (self.origin + _RASTER_PX * np.arange(nx)).astype(_F)
        self.nodes_y = (self.origin + _RASTER_PX * np.arange(ny)).astype(_F)
        self.values = {
            name: _fbm(self.nodes_x, self.nodes_y, field.octaves, seed, field.salt, 0.0)
            for name, field in fields.items()
        }

    def _axis(self, coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        g = (coords - _F(self.origin)) * _F(1.0 / _RASTER_PX)
        index = np.clip(np.floor(g).astype(np.int64), 0, n - 2)
        return index, np.clip(g - index, _F(0.0), _F(1.0)).astype(_F)

    def read(self, names: Sequence[str], xs: np.ndarray, ys: np.ndarray) -> list[np.ndarray]:
        """The fields ``names`` on the grid ``ys`` x ``xs`` (any coordinates): (H, W) each."""
        ix, fx = self._axis(xs, self.nodes_x.size)
        iy, fy = self._axis(ys, self.nodes_y.size)
        c0, r0 = int(ix.min()), int(iy.min())
        ix, iy = ix - c0, iy - r0
        c1, r1 = c0 + int(ix.max()) + 2, r0 + int(iy.max()) + 2
        out = []
        for name in names:
            nodes = self.values[name][r0:r1, c0:c1]
            top = nodes[iy]
            rows = top + fy[:, None] * (nodes[iy + 1] - top)
            left = rows[:, ix]
            out.append(left + fx[None, :] * (rows[:, ix + 1] - left))
        return out

    def bounds(self, name: str, xs: np.ndarray, ys: np.ndarray) -> tuple[float, float]:
        """Exact (min, max) that field ``name`` can take on the box spanned by ``xs``, ``ys``."""
        ix, _ = self._axis(np.array([xs.min(), xs.max()], _F), self.nodes_x.size)
        iy, _ = self._axis(np.array([ys.min(), ys.max()], _F), self.nodes_y.size)
        nodes = self.values[name][iy[0] : iy[1] + 2, ix[0] : ix[1] + 2]
        return float(nodes.min()), float(nodes.max())


@dataclass(frozen=True)
class _Cells:
    """The cells of a square lattice (``cell`` px, shifted by ``offset`` px) under a grid."""

    ix: np.ndarray
    iy: np.ndarray
    per_x: np.ndarray
    per_y: np.ndarray
    cell: float
    offset: float

    @classmethod
    def under(cls, xs: np.ndarray, ys: np.ndarray, cell: float, offset: float) -> _Cells:
        """The cells that the (increasing) sample coordinates ``xs`` x ``ys`` fall in."""
        ix = np.floor((xs - _F(offset)) / _F(cell)).astype(np.int64)
        iy = np.floor((ys - _F(offset)) / _F(cell)).astype(np.int64)
        return cls(
            np.arange(ix[0], ix[-1] + 1),
            np.arange(iy[0], iy[-1] + 1),
            np.bincount(ix - ix[0]),
            np.bincount(iy - iy[0]),
            cell,
            offset,
        )

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 centres of the cells: x (len(ix),), y (len(iy),), float32."""
        cx = (self.ix + 0.5) * self.cell + self.offset
        cy = (self.iy + 0.5) * self.cell + self.offset
        return cx.astype(_F), cy.astype(_F)

    def uniforms(self, seed: int, salt: int, n: int) -> np.ndarray:
        """``n`` uniforms per cell, (n, len(iy), len(ix))."""
        return _lattice_uniforms(_key(seed, salt), self.ix, self.iy, n)

    def spread(self, per_cell: np.ndarray) -> np.ndarray:
        """Per-cell values (..., len(iy), len(ix)) repeated onto the sample grid (..., H, W)."""
        per_cell = np.asarray(per_cell, _F)
        return np.repeat(np.repeat(per_cell, self.per_y, axis=-2), self.per_x, axis=-1)


@dataclass(frozen=True)
class _Blobs:
    """Elliptical objects, at most one per cell, sampled on a grid (all float32 (H, W))."""

    coverage: np.ndarray  # in [0, 1], with a soft ~1-px edge
    radius2: np.ndarray  # normalised squared radius: 0 at the centre, 1 on the edge
    tone: np.ndarray  # the object's per-cell tone


def _blobs(
    xs: np.ndarray,
    ys: np.ndarray,
    cells: _Cells,
    shape: np.ndarray,
    present: np.ndarray,
    tone: np.ndarray,
    smear: bool = False,
) -> _Blobs:
    """Ellipses, one per present cell; ``shape`` is (5, ny, nx): centre offset from the cell
    centre x, y (px), semi-axes a, b (px) and rotation (turns). Objects must fit their cell.

    ``smear=True`` (samples coarser than the objects) spreads each object's area evenly over
    its cell instead, so that coarse levels show the mean colour rather than aliasing.
    """
    jitter_x, jitter_y, a, b, turns = shape
    if smear:
        area = present * (np.pi * a * b / cells.cell**2)
        coverage, tone = cells.spread(np.stack([area, tone]))
        return _Blobs(coverage, np.ones_like(coverage), tone)
    cx, cy = cells.centres()
    angle = 2 * np.pi * turns
    cos, sin = np.cos(angle), np.sin(angle)
    inv_a2, inv_b2 = 1.0 / (a * a), 1.0 / (b * b)
    per_cell = np.stack(
        [
            cx[None, :] + jitter_x,
            cy[:, None] + jitter_y,
            # Quadratic form of the rotated ellipse: q = qa dx² + qb dx dy + qc dy².
            cos * cos * inv_a2 + sin * sin * inv_b2,
            2.0 * cos * sin * (inv_a2 - inv_b2),
            sin * sin * inv_a2 + cos * cos * inv_b2,
            present * np.minimum(a, b) / 2.0,
            tone,
        ]
    ).astype(_F)
    if present.mean() < _SPARSE and min(cells.per_x.min(), cells.per_y.min()) > 0:
        return _sparse_blobs(xs, ys, cells, per_cell, present)
    centre_x, centre_y, qa, qb, qc, sharpness, tone = cells.spread(per_cell)
    dx = xs[None, :] - centre_x
    dy = ys[:, None] - centre_y
    q = qa * dx * dx
    q += qb * dx * dy
    q += qc * dy * dy
    coverage = np.clip((_F(1.0) - q) * sharpness, _F(0.0), _F(1.0))
    return _Blobs(coverage, q, tone)


def _sparse_blobs(
    xs: np.ndarray, ys: np.ndarray, cells: _Cells, per_cell: np.ndarray, present: np.ndarray
) -> _Blobs:
    """:func:`_blobs` computed on the present cells' sample blocks only (few objects).

    Blocks are padded to the largest cell by repeating their last sample, which writes
    the same value twice; cells never overlap, so the writes do not conflict.
    """
    rows, cols = np.nonzero(present)
    centre_x, centre_y, qa, qb, qc, sharpness, tone = per_cell[:, rows, cols][..., None, None]

    def blocks(per: np.ndarray, which: np.ndarray) -> np.ndarray:
        last = np.cumsum(per) - 1
        first = last - per + 1
        return np.minimum(first[which, None] + np.arange(per.max()), last[which, None])

    row_index = blocks(cells.per_y, rows)[:, :, None]  # (n, by, 1)
    col_index = blocks(cells.per_x, cols)[:, None, :]  # (n, 1, bx)
    dx = xs[col_index] - centre_x
    dy = ys[row_index] - centre_y
    q = qa * dx * dx + qb * dx * dy + qc * dy * dy
    shape = (ys.size, xs.size)
    coverage = np.zeros(shape, _F)
    radius2 = np.full(shape, _F(4.0))
    tones = np.zeros(shape, _F)
    coverage[row_index, col_index] = np.clip((_F(1.0) - q) * sharpness, _F(0.0), _F(1.0))
    radius2[row_index, col_index] = q
    tones[row_index, col_index] = tone
    return _Blobs(coverage, radius2, tones)


def _union(layers: Sequence[_Blobs]) -> _Blobs:
    """Overlay blob layers. Coverages combine like independent events (exact for sharp
    objects, right on average for smeared ones); tone and radius come from the layers in
    proportion to their share of the combined coverage."""
    coverage, radius2, tone = layers[0].coverage, layers[0].radius2, layers[0].tone
    for layer in layers[1:]:
        c = layer.coverage
        coverage = coverage + c - coverage * c
        share = c / np.maximum(coverage, _F(1e-6))
        tone = tone + share * (layer.tone - tone)
        radius2 = radius2 + share * (layer.radius2 - radius2)
    return _Blobs(coverage, radius2, tone)


def _over(
    haem: np.ndarray,
    eosin: np.ndarray,
    coverage: np.ndarray,
    haem_on: np.ndarray | float,
    eosin_on: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray]:
    """Stain amounts ``(haem_on, eosin_on)`` painted over ``(haem, eosin)`` with ``coverage``."""
    return haem + coverage * (haem_on - haem), eosin + coverage * (eosin_on - eosin)


# --- the painter -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stain:
    """Per-slide optical densities per unit of stain, and the glass colour."""

    haematoxylin: np.ndarray  # (3,) OD
    eosin: np.ndarray  # (3,) OD
    glass: np.ndarray  # (3,) RGB


def _stain_for(rng: np.random.Generator) -> _Stain:
    """Stain jitter: overall strength ±15-20%, hue ±10% per channel, glass tint ±3 levels."""
    glass = np.asarray(GLASS, np.float64) + rng.uniform(-3, 3, 3)
    od_h = -np.log(_HAEMATOXYLIN_RGB / 255.0) * rng.uniform(0.85, 1.15) * rng.uniform(0.9, 1.1, 3)
    od_e = -np.log(_EOSIN_RGB / 255.0) * rng.uniform(0.8, 1.2) * rng.uniform(0.88, 1.12, 3)
    return _Stain(od_h.astype(_F), od_e.astype(_F), glass.astype(_F))


@dataclass(frozen=True)
class _Hole:
    """An elliptical hole in tissue, level-0 px."""

    x: float
    y: float
    rx: float
    ry: float


@dataclass(frozen=True)
class _Bands:
    """Wavy parallel bands (fibres): phase = (x cos + y sin + warp_px * warp) / spacing,
    ``warp`` being the raster field ``field``."""

    turns: float  # direction of the band normal, in turns
    spacing: float  # px between bands
    warp_px: float
    field: str


_FIELDS = {
    "tissue": _Field(_TISSUE_OCTAVES, 100),
    "tumour": _Field(((900.0, 1.0), (450.0, 0.5), (225.0, 0.25)), 200),
    "immune": _Field(((500.0, 1.0), (250.0, 0.5), (125.0, 0.25)), 300),
    "shade": _Field(((1500.0, 1.0),), 400),
    "collagen": _Field(((320.0, 1.0), (160.0, 0.35)), 500),
    "contrast": _Field(((120.0, 1.0),), 520),
}
_TYPE_FIELDS = {
    "glandular": {},
    "solid": {"septa": _Field(((260.0, 1.0), (130.0, 0.4)), 710)},
    "sarcomatoid": {
        "domain": _Field(((300.0, 1.0), (150.0, 0.4)), 820),
        "fascicle_a": _Field(((260.0, 1.0), (130.0, 0.35)), 800),
        "fascicle_b": _Field(((260.0, 1.0), (130.0, 0.35)), 810),
    },
}


class _SlidePainter:
    """Renders one :class:`SlideSpec`; see :data:`wsi.synthetic.slides.Painter` for the contract."""

    def __init__(self, spec: SlideSpec) -> None:
        self.spec = spec
        self.seed = spec.seed
        rng = np.random.default_rng([spec.seed, 7])
        self.stain = _stain_for(rng)
        self.grain = rng.standard_normal((_NOISE_TABLE_PX, _NOISE_TABLE_PX)).astype(_F)
        turns = rng.uniform()
        swing = rng.uniform(0.15, 0.25) * rng.choice([-1, 1])
        self.collagen = _Bands(turns, 20.0, 110.0, "collagen")
        self.fascicles = (
            _Bands(turns + 0.5, 10.0, 70.0, "fascicle_a"),
            _Bands(turns + 0.5 + swing, 10.0, 70.0, "fascicle_b"),
        )
        fields = {**_FIELDS, **_TYPE_FIELDS[spec.tumour_type]}
        self.raster = _Raster(spec.seed, spec.width, spec.height, fields)
        # The tissue field falls off away from the slide's centre: tissue forms one or a
        # few blobs with irregular edges, rarely touching the slide's border.
        u = (self.raster.nodes_x - spec.width / 2) / (0.5 * spec.width)
        v = (self.raster.nodes_y - spec.height / 2) / (0.5 * spec.height)
        self.raster.values["tissue"] -= (0.9 * (u[None, :] ** 2 + v[:, None] ** 2)).astype(_F)
        # Thresholds from the nodes inside the slide: area fractions are what they say.
        cols = (self.raster.nodes_x >= 0) & (self.raster.nodes_x < spec.width)
        rows = (self.raster.nodes_y >= 0) & (self.raster.nodes_y < spec.height)
        inner = {name: values[np.ix_(rows, cols)] for name, values in self.raster.values.items()}
        tissue = inner["tissue"]
        self.tissue_threshold = float(np.quantile(tissue, 1 - rng.uniform(*_TISSUE_FRACTION)))
        inside = tissue > self.tissue_threshold
        tumour = inner["tumour"][inside]
        self.tumour_threshold = float(np.quantile(tumour, 1 - rng.uniform(*_TUMOUR_FRACTION)))
        # Infiltrates: patches covering up to half the tissue at score 1, none at 0.
        immune = inner["immune"][inside]
        self.patch_threshold = float(np.quantile(immune, 1 - 0.5 * spec.immune_score))
        self.holes = self._place_holes(
            rng, self.raster.nodes_x[cols], self.raster.nodes_y[rows], tissue
        )

    def _place_holes(
        self, rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, field: np.ndarray
    ) -> tuple[_Hole, ...]:
        """2-4 holes centred well inside tissue, 60-220 px radius (the larger ones survive
        tissue detection's hole filling)."""
        deep = np.argwhere(field > self.tissue_threshold + 0.25)
        if deep.size == 0:
            return ()
        picks = rng.choice(len(deep), size=min(len(deep), int(rng.integers(2, 5))), replace=False)
        holes = []
        for row, col in deep[picks]:
            radius = rng.uniform(60, 220)
            rx, ry = radius * rng.uniform(0.8, 1.3), radius / rng.uniform(1, 1.6)
            holes.append(_Hole(float(xs[col]), float(ys[row]), rx, ry))
        return tuple(holes)

    def _above(self, name: str, threshold: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """``field > threshold`` on the grid (bool), skipping the field where its bounds
        under the window already decide."""
        low, high = self.raster.bounds(name, xs, ys)
        if low > threshold:
            return np.ones((ys.size, xs.size), bool)
        if high <= threshold:
            return np.zeros((ys.size, xs.size), bool)
        return self.raster.read([name], xs, ys)[0] > threshold

    def _tissue(self, xs: np.ndarray, ys: np.ndarray, step: float) -> np.ndarray:
        """Tissue (bool) on the grid: the thresholded field less the holes."""
        tissue = self._above("tissue", self.tissue_threshold, xs, ys)
        for hole in self.holes:
            reach = 1.5 * max(hole.rx, hole.ry)
            cols = np.abs(xs - hole.x) < reach
            rows = np.abs(ys - hole.y) < reach
            if not (cols.any() and rows.any()):
                continue
            hx, hy = xs[cols], ys[rows]
            q = ((hx[None, :] - hole.x) / hole.rx) ** 2 + ((hy[:, None] - hole.y) / hole.ry) ** 2
            ragged = 1.0 + 0.35 * _fbm(hx, hy, ((60.0, 1.0), (30.0, 0.5)), self.seed, 450, step)
            tissue[np.ix_(rows, cols)] &= q > ragged
        return tissue

    def _bands(
        self, xs: np.ndarray, ys: np.ndarray, step: float, bands: _Bands, power: int = 1
    ) -> np.ndarray:
        """Wavy bands ``((1 + sin) / 2) ** power`` in [0, 1] on the grid; their mean where
        the bands are finer than the samples (so coarse levels keep the mean colour)."""
        if bands.spacing < 3 * step:
            phase = np.linspace(0, 2 * np.pi, 64, endpoint=False)
            mean = np.mean(((1 + np.sin(phase)) / 2) ** power)
            return np.full((ys.size, xs.size), mean, _F)
        angle = 2 * np.pi * bands.turns
        k = 2 * np.pi / bands.spacing
        (warp,) = self.raster.read([bands.field], xs, ys)
        phase = _F(bands.warp_px * k) * warp
        phase += (xs * _F(np.cos(angle) * k))[None, :]
        phase += (ys * _F(np.sin(angle) * k))[:, None]
        return (_F(0.5) + _F(0.5) * np.sin(phase)) ** power

    def _band_turns(self, cx: np.ndarray, cy: np.ndarray, bands: _Bands) -> np.ndarray:
        """Direction (turns) along the bands at the points ``cy`` x ``cx``."""
        one = _F(1.0)
        (warp,) = self.raster.read(
            [bands.field],
            np.concatenate([cx - one, cx, cx + one]),
            np.concatenate([cy - one, cy, cy + one]),
        )
        nx, ny = cx.size, cy.size
        mid_rows, mid_cols = warp[ny : 2 * ny], warp[:, nx : 2 * nx]
        gx = (mid_rows[:, 2 * nx :] - mid_rows[:, :nx]) / 2
        gy = (mid_cols[2 * ny :] - mid_cols[:ny]) / 2
        angle = 2 * np.pi * bands.turns
        normal_x = np.cos(angle) + bands.warp_px * gx
        normal_y = np.sin(angle) + bands.warp_px * gy
        return np.arctan2(normal_y, normal_x) / (2 * np.pi) + 0.25

    def _over(
        self,
        haem: np.ndarray,
        eosin: np.ndarray,
        coverage: np.ndarray,
        haem_on: np.ndarray | float,
        eosin_on: np.ndarray | float,
        step: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`_over` for objects. On coarse samples (``step`` px >= ``_SMEAR_STEP``)
        the coverage is corrected so that the mix transmits the mean light of its parts
        (for the channel-mean optical density), as an averaged image does, rather than the
        darker light of the mean stain."""
        if step >= _SMEAR_STEP:
            delta = (haem_on - haem) * self.stain.haematoxylin.mean()
            delta += (eosin_on - eosin) * self.stain.eosin.mean()
            delta = np.where(np.abs(delta) < 1e-4, _F(1e-4), delta)
            coverage = -np.log1p(coverage * np.expm1(-delta)) / delta
        return _over(haem, eosin, coverage, haem_on, eosin_on)

    def _spindles(
        self,
        xs: np.ndarray,
        ys: np.ndarray,
        step: float,
        cell: float,
        density: float,
        bands: _Bands,
        salt: int,
        offsets: Sequence[float] = (0.0,),
    ) -> _Blobs:
        """Elongated nuclei (semi-axes 0.33-0.43 cell x 2.4-4 px) aligned with ``bands``,
        one lattice per offset."""
        layers = []
        for k, offset in enumerate(offsets):
            cells = _Cells.under(xs, ys, cell, offset)
            u = cells.uniforms(self.seed, salt + k, 6)
            cx, cy = cells.centres()
            major = cell * (0.33 + 0.1 * u[1])
            room = cell / 2 - major
            shape = np.stack(
                [
                    (2 * u[3] - 1) * room,
                    (2 * u[4] - 1) * room,
                    major,
                    2.4 + 1.6 * u[2],
                    self._band_turns(cx, cy, bands) + 0.04 * (u[0] - 0.5),
                ]
            )
            present = u[5] < density
            layers.append(_blobs(xs, ys, cells, shape, present, u[1], smear=step >= _SMEAR_STEP))
        return _union(layers)

    # Tissue compartments, as amounts of haematoxylin and eosin per sample.

    def _stroma(self, xs: np.ndarray, ys: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
        """Pink collagen in wavy fibres (visible in patches) with sparse fibroblast nuclei."""
        clefts = self._bands(xs, ys, step, self.collagen, power=3)
        (contrast,) = self.raster.read(["contrast"], xs, ys)
        contrast = np.clip(contrast + _F(0.3), 0.0, 0.7)
        eosin = _F(0.9) * (_F(1.0) - contrast * clefts)
        haem = np.full_like(eosin, 0.06)
        nuclei = self._spindles(xs, ys, step, 48.0, 0.3, self.collagen, 530)
        tone = _F(0.85) + _F(0.2) * nuclei.tone
        return self._over(haem, eosin, nuclei.coverage, tone, _F(0.25), step)

    def _glands(
        self, xs: np.ndarray, ys: np.ndarray, step: float, haem: np.ndarray, eosin: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Irregular round-oval lumens lined by epithelium with a ring of nuclei, in stroma."""
        cell, band, spacing = 112.0, 13.0, 9.0
        cells = _Cells.under(xs, ys, cell, 0.0)
        u = cells.uniforms(self.seed, 600, 8)
        ra = 14.0 + 12.0 * u[0]
        rb = ra * (0.6 + 0.4 * u[1])
        room = cell / 2 - ra - band - 4
        shape = np.stack([(2 * u[2] - 1) * room, (2 * u[3] - 1) * room, ra, rb, u[4]])
        present = u[5] < 0.85
        radius = np.sqrt(ra * rb)
        lobes = np.floor(2 + 4 * u[7])
        count = np.floor(2 * np.pi * (radius + 7.0) / spacing)
        cx, cy = cells.centres()
        per_cell = np.stack(
            [cx[None, :] + shape[0], cy[:, None] + shape[1], present, radius, lobes, count, u[6]]
        )
        centre_x, centre_y, inside, radius, lobes, count, phase = cells.spread(per_cell)
        glands = _blobs(xs, ys, cells, shape, present, u[6])
        turns = _turns(ys[:, None] - centre_y, xs[None, :] - centre_x)
        ragged = _F(0.05) * np.sin(_F(2 * np.pi) * (turns * lobes + phase))
        depth = (np.sqrt(glands.radius2) + ragged - _F(1.0)) * radius  # px out of the lumen
        inside = inside > 0
        lumen = inside & (depth < 0)
        epithelium = inside & (depth >= 0) & (depth < band)
        # Nuclei evenly spaced round the ring, 7 px out from the lumen, elongated radially.
        ring = turns * count + phase
        along = (ring - np.floor(ring) - _F(0.5)) * _F(spacing / 3.4)
        across = (depth - _F(7.0)) * _F(1 / 5.0)
        sharpness = _F(2.5 / max(1.0, step))
        nuclei = epithelium * np.clip((_F(1.0) - along * along - across * across) * sharpness, 0, 1)
        haem = np.where(epithelium, _F(0.22), np.where(lumen, _F(0.02), haem))
        eosin = np.where(epithelium, _F(0.55), np.where(lumen, _F(0.07), eosin))
        return self._over(haem, eosin, nuclei, _F(0.95), _F(0.3), step)

    def _solid_sheet(
        self, xs: np.ndarray, ys: np.ndarray, step: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Dense sheets of large pleomorphic nuclei with nucleoli, thin stromal septa."""
        cell = 30.0
        layers = []
        for k, offset in enumerate((0.0, cell / 2)):
            cells = _Cells.under(xs, ys, cell, offset)
            u = cells.uniforms(self.seed, 700 + k, 7)
            major = 6.5 + 4.5 * u[0]
            room = cell / 2 - major
            minor = major / (1 + 0.45 * u[1])
            shape = np.stack([(2 * u[2] - 1) * room, (2 * u[3] - 1) * room, major, minor, u[4]])
            present = u[5] < 0.75
            layers.append(_blobs(xs, ys, cells, shape, present, u[6], smear=step >= _SMEAR_STEP))
        nuclei = _union(layers)
        haem = np.full(nuclei.coverage.shape, 0.24, _F)
        eosin = np.full_like(haem, 0.42)
        tone = _F(0.7) + _F(0.45) * nuclei.tone
        haem, eosin = self._over(haem, eosin, nuclei.coverage, tone, _F(0.3), step)
        nucleolus = nuclei.coverage * (nuclei.radius2 < 0.05) * (nuclei.tone > 0.6)
        haem += _F(0.5) * nucleolus
        septa = np.abs(self.raster.read(["septa"], xs, ys)[0]) < 0.025
        return _over(haem, eosin, septa.astype(_F), _F(0.08), _F(0.8))

    def _fascicles(
        self, xs: np.ndarray, ys: np.ndarray, step: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Crowded spindle nuclei in wavy fascicles crossing at an angle (two domains)."""
        (domain,) = self.raster.read(["domain"], xs, ys)
        second = np.clip(domain * _F(8.0) + _F(0.5), 0, 1)
        first_bands, second_bands = self.fascicles
        streaks = self._bands(xs, ys, step, first_bands)
        streaks += second * (self._bands(xs, ys, step, second_bands) - streaks)
        eosin = _F(0.62) + _F(0.18) * streaks
        haem = np.full_like(eosin, 0.16)
        one = self._spindles(xs, ys, step, 28.0, 0.9, first_bands, 830, (0.0, 14.0))
        two = self._spindles(xs, ys, step, 28.0, 0.9, second_bands, 840, (0.0, 14.0))
        coverage = one.coverage + second * (two.coverage - one.coverage)
        tone = one.tone + second * (two.tone - one.tone)
        return self._over(haem, eosin, coverage, _F(0.85) + _F(0.35) * tone, _F(0.3), step)

    def _tumour(
        self, xs: np.ndarray, ys: np.ndarray, step: float, stroma: tuple[np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        kind = self.spec.tumour_type
        if kind == "glandular":
            return self._glands(xs, ys, step, *stroma)
        if kind == "solid":
            return self._solid_sheet(xs, ys, step)
        return self._fascicles(xs, ys, step)

    def _lymphocytes(self, xs: np.ndarray, ys: np.ndarray, step: float) -> _Blobs | None:
        """Small round dark nuclei at the slide's immune density, or None where there are none.

        Presence per 22-px cell (two offset lattices): ``0.01 + score * (0.2 + 0.7 *
        patch)``, ``patch`` = 1 inside infiltrates (half the tissue at score 1), else 0.
        """
        score = self.spec.immune_score
        lo, hi = LYMPHOCYTE_RADIUS_PX
        layers = []
        for k, offset in enumerate((0.0, 11.0)):
            cells = _Cells.under(xs, ys, 22.0, offset)
            cx, cy = cells.centres()
            (field,) = self.raster.read(["immune"], cx, cy)
            patch = np.clip((field - self.patch_threshold) * 16 + 0.5, 0, 1)
            u = cells.uniforms(self.seed, 900 + k, 6)
            present = u[4] < 0.01 + score * (0.2 + 0.7 * patch)
            if not present.any():
                continue
            radius = lo + (hi - lo) * u[0]
            room = 11.0 - radius
            minor = radius / (1 + 0.15 * u[1])
            shape = np.stack([(2 * u[2] - 1) * room, (2 * u[3] - 1) * room, radius, minor, u[5]])
            smear = step >= _SMEAR_STEP
            layers.append(_blobs(xs, ys, cells, shape, present, u[5], smear=smear))
        return _union(layers) if layers else None

    def render(self, xs: np.ndarray, ys: np.ndarray, step: float) -> np.ndarray:
        """RGB float32 (len(ys), len(xs), 3) sampled at level-0 points ``xs`` x ``ys``
        (float32, increasing), ``step`` px apart."""
        tissue = self._tissue(xs, ys, step)
        rgb = np.empty((ys.size, xs.size, 3), _F)
        glass_noise = _F(1.2 / step) * self._grain(xs + 97, ys + 31)
        if not tissue.any():
            for c in range(3):
                rgb[..., c] = self.stain.glass[c] + glass_noise
            return rgb
        tumour = tissue & self._above("tumour", self.tumour_threshold, xs, ys)
        any_tumour = tumour.any()
        stroma = None
        if (tissue & ~tumour).any() or (any_tumour and self.spec.tumour_type == "glandular"):
            stroma = self._stroma(xs, ys, step)
        if any_tumour:
            in_tumour = self._tumour(xs, ys, step, stroma)
            stroma = in_tumour if stroma is None else _over(*stroma, tumour, *in_tumour)
        haem, eosin = stroma
        lymphocytes = self._lymphocytes(xs, ys, step)
        if lymphocytes is not None:
            cover = lymphocytes.coverage * (eosin > 0.1)  # none in gland lumens
            tone = _F(1.55) + _F(0.3) * lymphocytes.tone
            haem, eosin = self._over(haem, eosin, cover, tone, _F(0.2), step)
        (shade,) = self.raster.read(["shade"], xs, ys)
        shade = _F(1.0) + _F(0.12) * shade
        scale = tissue * shade * (_F(1.0) + _F(0.1 / step) * self._grain(xs, ys))
        haem *= scale
        eosin *= scale
        for c in range(3):
            od = haem * self.stain.haematoxylin[c] + eosin * self.stain.eosin[c]
            rgb[..., c] = self.stain.glass[c] * np.exp(-od) + glass_noise
        return rgb

    def _grain(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Unit white noise per level-0 pixel, from a periodic seeded table."""
        cols = np.floor(xs).astype(np.int64) % _NOISE_TABLE_PX
        rows = np.floor(ys).astype(np.int64) % _NOISE_TABLE_PX
        return self.grain[rows][:, cols]

    def __call__(self, x0: int, y0: int, width: int, height: int, downsample: int) -> np.ndarray:
        xs = (x0 + (np.arange(width) + 0.5) * downsample).astype(_F)
        ys = (y0 + (np.arange(height) + 0.5) * downsample).astype(_F)
        rgb = self.render(xs, ys, float(downsample))
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# --- public API --------------------------------------------------------------------------


def painter_for(spec: SlideSpec) -> Painter:
    """The :data:`wsi.synthetic.slides.Painter` that renders ``spec`` (level-0 window, downsample)."""
    return _SlidePainter(spec)


def pen_marks_for(spec: SlideSpec) -> tuple[PenMark, ...]:
    """The ink strokes of ``spec``: none unless ``spec.pen``; else a two-segment stroke
    (green or blue, 30-45 px wide) in the upper-left part of the slide, over glass and
    usually over some tissue."""
    if not spec.pen:
        return ()
    rng = np.random.default_rng([spec.seed, 11])
    w, h = spec.width, spec.height
    color = ((40, 120, 60), (40, 70, 160))[int(rng.integers(2))]
    width = int(rng.integers(30, 46))
    x0, y0 = int(w * rng.uniform(0.1, 0.3)), int(h * rng.uniform(0.08, 0.2))
    x1, y1 = x0 + int(w * rng.uniform(0.15, 0.3)), y0 + int(h * rng.uniform(0.05, 0.15))
    x2, y2 = x1 + int(w * rng.uniform(0.05, 0.15)), y1 + int(h * rng.uniform(0.1, 0.25))
    return (PenMark(x0, y0, x1, y1, width, color), PenMark(x1, y1, x2, y2, width, color))


def cohort_specs(
    n_slides: int = 24,
    seed: int = 0,
    *,
    size_px: tuple[int, int] | None = None,
    paired_fraction: float = 0.25,
) -> list[SlideSpec]:
    """Specs of a balanced synthetic cohort of ``n_slides`` slides.

    Tumour types are balanced (round-robin over :data:`TUMOUR_TYPES`). Within each type,
    patients' immune scores are spread evenly over [0, 1], so scores are independent of
    type. About ``paired_fraction`` of the patients have two slides (same tumour type,
    immune scores within ±0.05). One slide in 24 (at least one when ``n_slides >= 6``) has
    its immune score left unknown in the labels. A third of each type's slides carry a pen
    mark; formats alternate between SVS and generic TIFF. ``size_px`` fixes ``(width,
    height)`` in level-0 px for every slide; by default sizes vary around
    :data:`DEFAULT_SIZE_PX` (about 100-250 tissue tiles of 224 px at 0.5 µm/px each).
    Deterministic given ``seed``.
    """
    if n_slides < 1:
        raise InvalidParameterError(f"n_slides must be >= 1, got {n_slides}")
    if not 0.0 <= paired_fraction <= 1.0:
        raise InvalidParameterError(f"paired_fraction must be in [0, 1], got {paired_fraction}")
    rng = np.random.default_rng([seed, 1])
    types = [TUMOUR_TYPES[i % len(TUMOUR_TYPES)] for i in range(n_slides)]
    # Pair slides of the same type into patients, then spread the patients' scores evenly
    # over [0, 1] within each type; a patient's second slide is within ±0.05 of its first.
    patient_of = list(range(n_slides))
    pairs = round(paired_fraction * n_slides / (1 + paired_fraction))
    scores = np.zeros(n_slides)
    pens: set[int] = set()
    for k, kind in enumerate(TUMOUR_TYPES):
        members = [i for i, t in enumerate(types) if t == kind]
        share = pairs // len(TUMOUR_TYPES) + (k < pairs % len(TUMOUR_TYPES))
        n_pairs = min(len(members) // 2, share)
        for first, second in zip(members[:n_pairs], members[n_pairs : 2 * n_pairs], strict=True):
            patient_of[second] = first
        pens.update(rng.choice(members, size=round(len(members) / 3), replace=False).tolist())
        patients = [i for i in members if patient_of[i] == i]
        spread = (np.arange(len(patients)) + rng.uniform(0.1, 0.9, len(patients))) / len(patients)
        scores[patients] = rng.permutation(spread)
        for i in members:
            if patient_of[i] != i:
                scores[i] = np.clip(scores[patient_of[i]] + rng.uniform(-0.05, 0.05), 0.0, 1.0)
    patient_ids = {p: f"patient_{n:03d}" for n, p in enumerate(dict.fromkeys(patient_of))}
    n_unknown = max(1, n_slides // 24) if n_slides >= 6 else 0
    unknown = set(rng.choice(n_slides, size=n_unknown, replace=False).tolist())
    slide_seeds = np.random.SeedSequence([seed, 2]).generate_state(n_slides)
    specs = []
    for i in range(n_slides):
        if size_px is None:
            width = DEFAULT_SIZE_PX[0] + 256 * int(rng.integers(-1, 2))
            height = DEFAULT_SIZE_PX[1] + 256 * int(rng.integers(-1, 2))
        else:
            width, height = (int(v) for v in size_px)
        specs.append(
            SlideSpec(
                slide_id=f"synth_{i:03d}",
                patient_id=patient_ids[patient_of[i]],
                tumour_type=types[i],
                immune_score=round(float(scores[i]), 3),
                width=width,
                height=height,
                seed=int(slide_seeds[i]),
                pen=i in pens,
                flavour="svs" if i % 2 == 0 else "tiff",
                immune_known=i not in unknown,
            )
        )
    return specs


def write_spec(spec: SlideSpec, out_dir: str | Path) -> Path:
    """Write one synthetic slide as ``out_dir/{spec.file_name}`` (pyramid 1, 4, 16)."""
    path = Path(out_dir) / spec.file_name
    return write_slide(
        path,
        width=spec.width,
        height=spec.height,
        mpp=SLIDE_MPP,
        painter=painter_for(spec),
        pen_marks=pen_marks_for(spec),
        flavour=spec.flavour,
        objective_power=20.0 if spec.flavour == "svs" else None,
        downsamples=(1, 4, 16),
        seed=spec.seed,
    )


def write_labels(specs: Sequence[SlideSpec], path: str | Path) -> Path:
    """Write the labels table (:data:`LABEL_COLUMNS`), unknown immune scores left empty."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LABEL_COLUMNS)
        for spec in specs:
            score = f"{spec.immune_score:.3f}" if spec.immune_known else ""
            writer.writerow([spec.slide_id, spec.patient_id, spec.tumour_type, score])
    return path


def write_cohort(
    out_dir: str | Path,
    n_slides: int = 24,
    seed: int = 0,
    *,
    size_px: tuple[int, int] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> tuple[list[Path], Path]:
    """Write a synthetic cohort: ``out_dir/slides/*.svs|*.tiff`` and ``out_dir/labels.csv``.

    Deterministic given ``seed``: the same arguments write the same bytes. ``workers``
    slides are written in parallel processes. Returns the slide paths (in ``slide_id``
    order) and the labels path. See :func:`cohort_specs` for what the cohort holds.
    """
    if workers < 1:
        raise InvalidParameterError(f"workers must be >= 1, got {workers}")
    specs = cohort_specs(n_slides, seed, size_px=size_px)
    slides_dir = Path(out_dir) / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(specs), desc="synthetic slides", unit="slide", disable=not progress)
    with bar:
        if workers == 1:
            paths = []
            for spec in specs:
                paths.append(write_spec(spec, slides_dir))
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                futures = [pool.submit(write_spec, spec, slides_dir) for spec in specs]
                paths = []
                for future in futures:
                    paths.append(future.result())
                    bar.update()
    return paths, write_labels(specs, Path(out_dir) / "labels.csv")
