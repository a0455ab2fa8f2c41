"""Tile grids at an exact physical scale over a slide's tissue.

A tile of ``size`` px at ``mpp`` µm/px covers ``size * mpp`` µm on every scanner: its
level-0 extent is ``size * mpp / slide.mpp`` pixels (a float), reads are planned at the
coarsest level still at or finer than ``mpp``, and the sub-pixel box is resampled to
``size`` px. When a pyramid level's µm/px is within ``mpp_tolerance`` (relative) of ``mpp``,
tiles are instead ``size`` px of that level read 1:1, the scanner's own pixels (a *native*
grid: level-0 extent ``size * level downsample``, ``achieved_mpp`` that level's µm/px).
Coordinates are level-0 top-left ``[x, y]`` (int64), as CLAM and TRIDENT use.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsi.errors import SlideTooSmallError
from wsi.io.slide import Slide
from wsi.options import TileOptions, check_tiling_params
from wsi.tissue import TissueMask, detect_tissue


@dataclass
class TileGrid:
    """Square tiles over one slide. Iterating yields RGB uint8 (size, size, 3) patches.

    Attributes:
        slide: the slide the tiles come from.
        coords: int64 (N, 2) ``[x, y]`` top-left in level-0 pixels.
        tissue_fraction: float32 (N,) fraction of each tile covered by the tissue mask.
        size: tile side in output pixels.
        mpp: the requested µm per output pixel (achieved exactly up to float noise, unless
            ``native``: see :attr:`achieved_mpp`).
        overlap: pixels (at ``mpp``) shared by neighbouring tiles.
        level: pyramid level the pixels are read from.
        min_tissue: tiles with a smaller tissue fraction were dropped.
        mask: the tissue mask used, if any.
        native: tiles are ``level``'s pixels read 1:1 (its µm/px was within
            ``mpp_tolerance`` of ``mpp``); otherwise the exact box is resampled.
        mpp_tolerance: the relative tolerance the grid was planned with.
    """

    slide: Slide
    coords: np.ndarray
    tissue_fraction: np.ndarray
    size: int
    mpp: float
    overlap: int
    level: int
    min_tissue: float
    mask: TissueMask | None = field(default=None, repr=False)
    native: bool = False
    mpp_tolerance: float = 0.0

    @property
    def tile_size_um(self) -> float:
        """Side of a tile in µm."""
        return self.size * self.achieved_mpp if self.native else self.size * self.mpp

    @property
    def size_level0(self) -> float:
        """Side of a tile in level-0 pixels (exact, not rounded)."""
        if self.native:
            return self.size * self.level_downsample
        return self.size * self.mpp / self.slide.mpp

    @property
    def stride_level0(self) -> float:
        """Distance between neighbouring tiles in level-0 pixels."""
        if self.native:
            return (self.size - self.overlap) * self.level_downsample
        return (self.size - self.overlap) * self.mpp / self.slide.mpp

    @property
    def level_downsample(self) -> float:
        """Downsample of the read level relative to level 0."""
        return self.slide.level_downsamples[self.level]

    @property
    def patch_size_level(self) -> int:
        """Tile side in pixels of the read level, rounded (CLAM's ``patch_size``)."""
        return round(self.size_level0 / self.level_downsample)

    @property
    def achieved_mpp(self) -> float:
        """µm per output pixel actually produced: ``mpp`` (the box is exact), or the read
        level's µm/px for a ``native`` grid."""
        if self.native:
            return self.slide.level_mpp(self.level)
        return self.size_level0 * self.slide.mpp / self.size

    def __repr__(self) -> str:
        how = "native" if self.native else "resampled"
        return (
            f"TileGrid({len(self)} tiles of {self.size} px at {self.achieved_mpp:g} µm/px "
            f"({self.tile_size_um:g} µm), level {self.level} {how}, "
            f"slide {self.slide.name!r})"
        )

    def _repr_png_(self) -> bytes:
        """A ~768-px thumbnail with the tissue outline and the tile grid (notebooks)."""
        from wsi.viz.qc import png_bytes, qc_image

        downsample = max(max(self.slide.dimensions) / 768, 1.0)
        return png_bytes(
            qc_image(
                self.slide.read_thumbnail(downsample),
                downsample,
                tissue_mask=None if self.mask is None else self.mask.array,
                mask_downsample=None if self.mask is None else self.mask.downsample,
                coords=self.coords,
                tile_size_level0=self.size_level0,
            )
        )

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def read(self, i: int) -> np.ndarray:
        """Tile ``i`` as RGB uint8 (size, size, 3)."""
        x, y = self.coords[i]
        return self.slide.read_patch(float(x), float(y), self.size_level0, self.size, self.level)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.read(i)

    def attrs(self) -> dict[str, Any]:
        """HDF5 attributes of the ``coords`` dataset (CLAM and TRIDENT names, plus µm)."""
        level_w, level_h = self.slide.level_dimensions[self.level]
        w0, h0 = self.slide.dimensions
        return {
            "patch_size": self.patch_size_level,
            "patch_level": self.level,
            "downsample": [self.level_downsample, self.level_downsample],
            "level_dim": [level_w, level_h],
            "level0_width": w0,
            "level0_height": h0,
            "patch_size_level0": round(self.size_level0),
            "target_patch_size": self.size,
            "tile_size_um": self.tile_size_um,
            "target_mpp": self.mpp,
            "mpp_level0": self.slide.mpp,
            "mpp_source": self.slide.mpp_source or "",
            "achieved_mpp": self.achieved_mpp,
            "overlap": self.overlap,
            "min_tissue": self.min_tissue,
            "name": self.slide.slide_id,
        }

    def params(self) -> dict[str, Any]:
        """The tiling parameters that decide the grid (for provenance and skip-done)."""
        return {
            "mpp": self.mpp,
            "size": self.size,
            "overlap": self.overlap,
            "min_tissue": self.min_tissue,
            "mpp_tolerance": self.mpp_tolerance,
            "native": self.native,
            "mpp_level0": self.slide.mpp,
            "mpp_source": self.slide.mpp_source,
        }


def grid_positions(length: float, extent: float, stride: float) -> np.ndarray:
    """Top-left level-0 positions (int64) of tiles of ``extent`` every ``stride`` that fit in
    ``length`` pixels."""
    if length < extent:
        return np.zeros(0, np.int64)
    n = math.floor((length - extent) / stride + 1e-9) + 1
    return np.round(np.arange(n) * stride).astype(np.int64)


def native_level(slide: Slide, mpp: float, tolerance: float) -> int | None:
    """The pyramid level whose µm/px is nearest ``mpp``, when it is within ``tolerance``
    (relative: ``|level mpp / mpp - 1| <= tolerance``); None otherwise or for tolerance 0."""
    if not tolerance > 0:
        return None
    off = [abs(slide.level_mpp(level) / mpp - 1) for level in range(slide.level_count)]
    level = min(range(len(off)), key=off.__getitem__)  # ties: the finer level
    return level if off[level] <= tolerance else None


def tile(
    slide: Slide,
    mpp: float = TileOptions.mpp,
    size: int = TileOptions.size,
    overlap: int = TileOptions.overlap,
    min_tissue: float = TileOptions.min_tissue,
    mask: TissueMask | None = None,
    mpp_tolerance: float = TileOptions.mpp_tolerance,
) -> TileGrid:
    """A grid of ``size``-px tiles at ``mpp`` µm/px over the slide's tissue.

    Args:
        slide: an open slide with a known mpp (pass ``mpp=`` to :func:`wsi.open_slide`).
        mpp: target µm per pixel of the tiles (0.5 ≈ 20x).
        size: tile side in pixels at ``mpp``.
        overlap: pixels at ``mpp`` shared by neighbouring tiles.
        min_tissue: tiles whose tissue fraction is below this are dropped (0 keeps all).
        mask: a tissue mask; detected with :func:`wsi.detect_tissue` defaults when None.
        mpp_tolerance: when a pyramid level's µm/px is within this relative difference of
            ``mpp`` (0.02: a 0.499 µm/px scan at 0.5), tiles are ``size`` px of that level
            read 1:1, the scanner's pixels, at that level's µm/px; 0 always resamples to
            exactly ``mpp``.

    Raises:
        InvalidParameterError: mpp, size, overlap, min_tissue or mpp_tolerance out of range.
        MissingMppError: the slide's scale is unknown.
        SlideTooSmallError: the slide is smaller than one tile.
    """
    check_tiling_params(mpp, size, overlap, min_tissue, mpp_tolerance)
    slide_mpp = slide.mpp
    native = native_level(slide, mpp, mpp_tolerance)
    if native is None:
        level = slide.best_level_for_mpp(mpp)
        size_level0 = size * mpp / slide_mpp
        stride = (size - overlap) * mpp / slide_mpp
    else:
        level = native
        size_level0 = size * slide.level_downsamples[level]
        stride = (size - overlap) * slide.level_downsamples[level]
    w0, h0 = slide.dimensions
    xs = grid_positions(w0, size_level0, stride)
    ys = grid_positions(h0, size_level0, stride)
    if xs.size == 0 or ys.size == 0:
        raise SlideTooSmallError(
            f"{slide.name}: the slide is {w0}x{h0} px = {w0 * slide_mpp:.0f}x{h0 * slide_mpp:.0f} µm, "
            f"smaller than one {size}-px tile at {mpp:g} µm/px ({size * mpp:.0f} µm); "
            "use a smaller --size or --mpp",
            slide.path,
        )
    gx, gy = np.meshgrid(xs, ys)
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.int64)
    if mask is None:
        mask = detect_tissue(slide)
    fraction = mask.fraction_in_boxes(coords, size_level0).astype(np.float32)
    keep = fraction >= min_tissue if min_tissue > 0 else np.ones(len(coords), bool)
    return TileGrid(
        slide=slide,
        coords=np.ascontiguousarray(coords[keep]),
        tissue_fraction=fraction[keep],
        size=int(size),
        mpp=float(mpp),
        overlap=int(overlap),
        level=level,
        min_tissue=float(min_tissue),
        mask=mask,
        native=native is not None,
        mpp_tolerance=float(mpp_tolerance),
    )
