"""The options vocabulary of tiling runs: :class:`TileOptions` (scale, size, which tiles are
kept) holding :class:`TissueOptions` (how tissue is found), with their defaults and checks.

Batch runs, the ``wsi tile``/``wsi embed`` flags (generated from these fields: ``help``,
optional ``flag`` and ``type`` in each field's metadata) and provenance all use these
dataclasses, so a default is written once. Light on purpose: ``wsi --help`` imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from numbers import Integral
from typing import Any

from wsi.errors import InvalidParameterError

DEFAULT_MASK_MPP = 8.0
"""µm per mask pixel aimed at when the slide's mpp is known; also the scale assumed for
converting µm sizes to mask pixels when it is not."""

DEFAULT_MIN_TISSUE_AREA_UM2 = 20_000.0
"""Tissue fragments smaller than this (µm², ~0.02 mm², ~141 µm square) are dropped."""

DEFAULT_MIN_HOLE_AREA_UM2 = 20_000.0
"""Holes inside tissue smaller than this (µm²) are filled; larger ones stay out of the mask."""

DEFAULT_CLOSE_RADIUS_UM = 16.0
"""Gaps in tissue narrower than about twice this (µm) are closed."""

DEFAULT_OPEN_RADIUS_UM = 8.0
"""Specks and strands thinner than about twice this (µm) are opened away."""

DEFAULT_MPP_TOLERANCE = 0.02
"""Relative difference between a pyramid level's µm/px and the tile mpp within which tiles
are that level's pixels, read 1:1 (no resampling)."""

DEFAULT_MAX_MASK_SIDE = 4096
"""Longest side (mask pixels) of a tissue mask."""


def positive_finite(value: float, name: str) -> float:
    """``value`` as a float, or :class:`InvalidParameterError` unless finite and > 0."""
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise InvalidParameterError(f"{name} must be a positive finite number, got {value!r}")
    return number


def non_negative(value: float, name: str) -> float:
    """``value`` as a float, or :class:`InvalidParameterError` unless finite and >= 0."""
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise InvalidParameterError(f"{name} must be >= 0, got {value!r}")
    return number


def check_tiling_params(
    mpp: float, size: int, overlap: int, min_tissue: float, mpp_tolerance: float = 0.0
) -> None:
    """Raise :class:`InvalidParameterError` for out-of-range tiling parameters."""
    if not (isinstance(mpp, int | float) and math.isfinite(mpp) and 0 < mpp <= 100):
        raise InvalidParameterError(
            f"tile mpp must be a µm/px value in (0, 100], got {mpp!r} (0.5 ≈ 20x, 0.25 ≈ 40x)"
        )
    if not (isinstance(size, Integral) and size >= 1):
        raise InvalidParameterError(f"tile size must be a positive number of pixels, got {size!r}")
    if not (isinstance(overlap, Integral) and 0 <= overlap < size):
        raise InvalidParameterError(
            f"overlap must be in [0, size) = [0, {size}) pixels, got {overlap!r}"
        )
    if not (0.0 <= min_tissue <= 1.0):
        raise InvalidParameterError(f"min_tissue must be a fraction in [0, 1], got {min_tissue!r}")
    if not (isinstance(mpp_tolerance, int | float) and 0.0 <= mpp_tolerance < 1.0):
        raise InvalidParameterError(
            f"mpp_tolerance must be a relative difference in [0, 1), got {mpp_tolerance!r} "
            "(0.02 = within 2 %; 0 = always resample)"
        )


@dataclass(frozen=True)
class TissueOptions:
    """How tissue is found on a slide's thumbnail (:func:`detect_tissue`); part of
    :class:`TileOptions`, so batch runs (``embed_archive``, ``wsi tile``/``wsi embed``
    flags) take the same options. Distances in µm, areas in µm²."""

    remove_pen: bool = field(
        default=True,
        metadata={
            "help": "remove green, blue and black pen ink (--no-remove-pen for stains that are "
            "green or blue by design, e.g. trichrome, or slides with very dark folds)"
        },
    )
    threshold: float | None = field(
        default=None,
        metadata={
            "flag": "--tissue-threshold",
            "type": float,
            "help": "HSV saturation threshold in [0, 1] (default: Otsu, clamped to 0.05-0.15)",
        },
    )
    mask_mpp: float = field(
        default=DEFAULT_MASK_MPP,
        metadata={"help": "µm per tissue-mask pixel (default %(default)s)"},
    )
    max_side: int = field(
        default=DEFAULT_MAX_MASK_SIDE,
        metadata={
            "flag": "--max-mask-side",
            "help": "longest side of the tissue mask in pixels (default %(default)s)",
        },
    )
    min_tissue_area_um2: float = field(
        default=DEFAULT_MIN_TISSUE_AREA_UM2,
        metadata={"help": "drop tissue fragments smaller than this (µm², default %(default)s)"},
    )
    min_hole_area_um2: float = field(
        default=DEFAULT_MIN_HOLE_AREA_UM2,
        metadata={"help": "fill holes in tissue smaller than this (µm², default %(default)s)"},
    )
    close_radius_um: float = field(
        default=DEFAULT_CLOSE_RADIUS_UM,
        metadata={"help": "closing radius in µm (default %(default)s)"},
    )
    open_radius_um: float = field(
        default=DEFAULT_OPEN_RADIUS_UM,
        metadata={"help": "opening radius in µm (default %(default)s)"},
    )

    def check(self) -> None:
        """Raise :class:`InvalidParameterError` for values out of range."""
        positive_finite(self.mask_mpp, "mask_mpp")
        if int(self.max_side) < 1:
            raise InvalidParameterError(f"max_side must be >= 1 pixel, got {self.max_side}")
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise InvalidParameterError(f"threshold must be in [0, 1], got {self.threshold}")
        for name in (
            "min_tissue_area_um2",
            "min_hole_area_um2",
            "close_radius_um",
            "open_radius_um",
        ):
            non_negative(getattr(self, name), name)

    def with_changes(self, **changes: Any) -> TissueOptions:
        """A copy with some fields changed; unknown names are an error that lists the fields."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InvalidParameterError(
                f"unknown tissue option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return replace(self, **changes)


@dataclass(frozen=True)
class TileOptions:
    """How slides are tiled in batch runs (``embed_archive``, ``wsi tile``, ``wsi embed``):
    the tile scale and size, which tiles are kept, and the tissue detection behind them."""

    mpp: float = field(
        default=0.5, metadata={"help": "tile scale in µm/px (default %(default)s ≈ 20x)"}
    )
    size: int = field(default=224, metadata={"help": "tile side in pixels (default %(default)s)"})
    overlap: int = field(
        default=0, metadata={"help": "pixels shared by neighbouring tiles (default %(default)s)"}
    )
    min_tissue: float = field(
        default=0.5,
        metadata={"help": "drop tiles with a smaller tissue fraction (default %(default)s)"},
    )
    slide_mpp: float | None = field(
        default=None,
        metadata={
            "type": float,
            "help": "level-0 µm/px of every slide, overriding missing or wrong metadata",
        },
    )
    mpp_tolerance: float = field(
        default=DEFAULT_MPP_TOLERANCE,
        metadata={
            "help": "read a pyramid level's own pixels, unresampled, when its µm/px is within this "
            "relative difference of --mpp (default %(default)s: a 0.499 µm/px scan at 0.5; "
            "0 = always resample to exactly --mpp)"
        },
    )
    tissue: TissueOptions = field(default_factory=TissueOptions)

    def check(self) -> None:
        """Raise :class:`InvalidParameterError` for values out of range."""
        check_tiling_params(self.mpp, self.size, self.overlap, self.min_tissue, self.mpp_tolerance)
        self.tissue.check()
        if self.slide_mpp is not None:
            from wsi.io.mpp import check_mpp

            check_mpp(self.slide_mpp, what="--slide-mpp", name="options", fix="e.g. 0.25")
