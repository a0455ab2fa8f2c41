"""The TME tables an export reads from a ``wsi tme profile --out DIR`` folder.

The contract (small on purpose, so any tool can write it):

- ``DIR/tme.csv``: one row per slide, keyed by ``slide_id``; every other column is carried
  into slide-level exports as it is.
- per slide, a per-tile table, the first of :data:`TILE_TABLE_NAMES` under ``DIR``
  (``wsi tme profile`` writes ``DIR/tme/{slide_id}.tiles.csv``; ``.csv.gz`` too): one row per
  tile with ``x, y`` (top-left in level-0 px, as the feature file's ``coords``: rows are
  matched on them) or, without ``x, y``, exactly one row per tile in the feature file's
  order. Columns used: ``role`` (str), ``class`` (str), ``prob_<name>`` (0-1), and counts
  (``n_<what>``, ``lymphocytes``, ``nuclei``, ``*_count``); other numeric columns are
  carried as measurements too.
- nuclei, when computed: ``DIR/nuclei/{slide_id}.csv`` with ``x, y`` (level-0 px) and an
  optional ``lymphocyte`` (bool) column.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from wsi.errors import InvalidParameterError

TILE_TABLE_NAMES = (
    "tme/{sid}.tiles.csv",
    "{sid}.tiles.csv",
    "{sid}.csv",
    "tiles/{sid}.csv",
    "{sid}/tiles.csv",
    "{sid}_tiles.csv",
)
"""Where a slide's per-tile TME table is looked for under the TME folder, in this order."""

TEXT_COLUMNS = ("role", "class")
"""Per-tile TME columns that hold names, not numbers."""


def _is_count(name: str) -> bool:
    return (
        name.startswith("n_")
        or name.endswith("_count")
        or name.startswith("lymphocytes")
        or name.startswith("nuclei")
    )


def tile_table_path(tme_dir: str | os.PathLike[str], slide_id: str) -> Path | None:
    """The per-tile TME table of ``slide_id`` under ``tme_dir``, or None."""
    for pattern in TILE_TABLE_NAMES:
        for suffix in ("", ".gz"):
            path = Path(tme_dir) / (pattern.format(sid=slide_id) + suffix)
            if path.is_file():
                return path
    return None


def read_tile_table(
    tme_dir: str | os.PathLike[str], slide_id: str, coords: np.ndarray
) -> pd.DataFrame | None:
    """A slide's per-tile TME table with one row per ``coords`` row, in their order, or None
    when the slide has none. Tiles the table lacks get NaN (and role "")."""
    path = tile_table_path(tme_dir, slide_id)
    if path is None:
        return None
    table = pd.read_csv(path)
    return align_to_coords(table, coords, source=str(path))


def align_to_coords(table: pd.DataFrame, coords: np.ndarray, *, source: str) -> pd.DataFrame:
    """``table``'s rows reordered to ``coords`` (matched on ``x, y``, or by position when the
    table has no ``x, y`` and one row per tile); ``x, y`` themselves are dropped."""
    xy = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if {"x", "y"} <= set(table.columns):
        keyed = table.assign(
            x=table["x"].round().astype(np.int64), y=table["y"].round().astype(np.int64)
        )
        keyed = keyed.drop_duplicates(["x", "y"]).set_index(["x", "y"])
        index = pd.MultiIndex.from_arrays([xy[:, 0], xy[:, 1]], names=["x", "y"])
        out = keyed.reindex(index).reset_index(drop=True)
    elif len(table) == len(xy):
        out = table.reset_index(drop=True)
    else:
        raise InvalidParameterError(
            f"{source}: {len(table)} rows without x, y columns for {len(xy)} tiles; add x, y "
            "(level-0 top-left, as the feature file's coords) or one row per tile in its order"
        )
    for column in TEXT_COLUMNS:
        if column in out.columns:
            out[column] = out[column].fillna("").astype(str)
    return out


def numeric_columns(table: pd.DataFrame) -> list[str]:
    """The per-tile columns that are measurements: probabilities, counts and other numbers."""
    return [
        c
        for c in table.columns
        if c not in TEXT_COLUMNS and pd.api.types.is_numeric_dtype(table[c])
    ]


def with_densities(table: pd.DataFrame, tile_area_mm2: float | None) -> pd.DataFrame:
    """``table`` plus ``<count>_per_mm2`` for each count column (count ÷ tile area in mm²)."""
    if not tile_area_mm2:
        return table
    extra = {
        f"{c}_per_mm2": table[c] / tile_area_mm2
        for c in numeric_columns(table)
        if _is_count(c) and not c.endswith("_per_mm2") and f"{c}_per_mm2" not in table
    }
    return table.assign(**extra) if extra else table


def read_slide_table(tme_dir: str | os.PathLike[str]) -> pd.DataFrame | None:
    """``tme_dir/tme.csv`` (one row per slide, ``slide_id`` column), or None when absent."""
    path = Path(tme_dir) / "tme.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype={"slide_id": str})
    if "slide_id" not in table.columns:
        raise InvalidParameterError(f"{path}: no slide_id column; columns: {list(table.columns)}")
    return table


def read_nuclei(tme_dir: str | os.PathLike[str], slide_id: str) -> pd.DataFrame | None:
    """``tme_dir/nuclei/{slide_id}.csv`` (x, y in level-0 px, optional lymphocyte), or None."""
    path = Path(tme_dir) / "nuclei" / f"{slide_id}.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    if not {"x", "y"} <= set(table.columns):
        raise InvalidParameterError(
            f"{path}: needs x, y columns (level-0 px); has {list(table.columns)}"
        )
    return table


def role_colours() -> dict[str, tuple[int, int, int]]:
    """RGB per TME role: ``wsi.tme.roles.ROLE_COLOURS`` when that module exists, else {}."""
    try:
        from wsi.tme.roles import ROLE_COLOURS  # type: ignore[import-not-found]
    except ImportError:
        return {}
    return {str(k): tuple(int(v) for v in rgb) for k, rgb in ROLE_COLOURS.items()}


def palette(names: list[str]) -> dict[str, tuple[int, int, int]]:
    """A colour per name: the role colours where known, else matplotlib's tab20 in order."""
    from matplotlib import colormaps

    known = role_colours()
    cmap = colormaps["tab20"]
    out = {}
    for i, name in enumerate(sorted(set(names) - {""})):
        if name in known:
            out[name] = known[name]
        else:
            r, g, b, _ = cmap(i % 20)
            out[name] = (round(r * 255), round(g * 255), round(b * 255))
    return out
