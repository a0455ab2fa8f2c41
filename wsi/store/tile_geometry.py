"""A stored tile's geometry from its coords dataset's attributes (ours, CLAM's, TRIDENT's).

One reading for every consumer (heatmaps, subgroup mosaics, exports), so a tile is drawn and
re-read at the same place and size everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def first_number(value: Any) -> float | None:
    """One finite positive number from an HDF5 attribute (scalar or ``[x, y]``), else None."""
    try:
        number = float(np.ravel(value)[0])
    except (TypeError, ValueError, IndexError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def tile_size_level0(attrs: dict[str, Any], mpp_level0: float | None) -> float:
    """A tile's exact side in level-0 px: ``tile_size_um`` / ``mpp_level0`` when both are
    known, else ``patch_size_level0``, else ``patch_size`` × the level's downsample (CLAM
    files)."""
    size_um = first_number(attrs.get("tile_size_um"))
    if size_um and mpp_level0:
        return size_um / mpp_level0
    stored = first_number(attrs.get("patch_size_level0"))
    if stored:
        return stored
    return float(first_number(attrs.get("patch_size")) or 224) * float(
        first_number(attrs.get("downsample")) or 1
    )


def tile_size_px(attrs: dict[str, Any]) -> int:
    """A tile's side in pixels as it was encoded (``target_patch_size``, else ``patch_size``,
    else 224)."""
    return int(
        first_number(attrs.get("target_patch_size")) or first_number(attrs.get("patch_size")) or 224
    )


def tile_level(attrs: dict[str, Any], level_count: int) -> int:
    """The pyramid level a tile was read from, clipped to the slide's levels."""
    return min(int(first_number(attrs.get("patch_level")) or 0), level_count - 1)
