"""Tile images for annotation tools and other pipelines: PNG/JPEG files plus an index CSV.

``OUT/{slide_id}/{slide_id}_{tile_id}.{png|jpg}`` holds tile ``tile_id`` (its row in the
slide's coords or feature file, or in a grid made now) at its tiling's µm/px, which is also
written into the image's resolution (DPI = 25,400 / µm per px). ``OUT/index.csv``: one row per
image: ``slide_id, tile_id, x, y`` (top-left, level-0 px), ``mpp`` (µm/px of the image),
``size_px``, ``role`` (from a TME folder, else empty), ``path`` (relative to OUT).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from models.atomic import write_atomic
from wsi.errors import FeatureFileError, InvalidParameterError, WsiError
from wsi.export.sources import PathLike, read_slide_tiles
from wsi.export.tme_tables import read_tile_table
from wsi.options import TileOptions

FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}
_EXIF_X_RESOLUTION, _EXIF_Y_RESOLUTION, _EXIF_RESOLUTION_UNIT = 282, 283, 296
INDEX_COLUMNS = ["slide_id", "tile_id", "x", "y", "mpp", "size_px", "role", "path"]


@dataclass
class TileExport:
    """What :func:`export_tiles` wrote: the index (one row per image) and the slides that
    failed (``{slide_id: message}``)."""

    index: pd.DataFrame
    failed: dict[str, str] = field(default_factory=dict)
    index_path: Path | None = None

    def __repr__(self) -> str:
        return (
            f"<TileExport {len(self.index)} images from {self.index['slide_id'].nunique()} "
            f"slides, {len(self.failed)} failed>"
        )


@dataclass
class _Plan:
    """One slide's tiles to cut: level-0 top-left coords, side, output px, level, µm/px."""

    coords: np.ndarray
    size_level0: float
    size_px: int
    level: int
    mpp: float


def export_tiles(
    slides: Sequence[PathLike],
    out: PathLike,
    *,
    fmt: str = "png",
    max_tiles: int | None = None,
    role: str | None = None,
    quality: int = 90,
    coords: PathLike | None = None,
    tme: PathLike | None = None,
    tiling: TileOptions | None = None,
    seed: int = 0,
    progress: bool = False,
) -> TileExport:
    """Write each slide's tiles as images under ``out`` and ``out/index.csv``.

    ``slides``: files, folders or globs. Tiles come from ``coords`` (a ``patches/`` or
    ``features/<encoder>`` folder with ``{slide_id}.h5``; a slide without one fails), or
    without ``coords`` from a grid made now with ``tiling`` (default :class:`~wsi.TileOptions`). ``role`` keeps
    the tiles a TME folder (``tme``) gives that role; ``max_tiles`` picks at most that many
    per slide (a seeded random choice, kept in tile order). ``quality``: JPEG quality 1-95.
    A slide that fails is recorded in ``failed`` and the others go on.
    """
    from tqdm.auto import tqdm

    from wsi.io.slide import slide_id_of
    from wsi.pipeline.batch import find_slides

    fmt = _check(fmt, quality, role, tme, max_tiles)
    out = Path(out)
    rows: list[pd.DataFrame] = []
    failed: dict[str, str] = {}
    for path in tqdm(find_slides(slides), desc="tiles", unit="slide", disable=not progress):
        sid = slide_id_of(path)
        try:
            rows.append(
                _export_slide(
                    path,
                    sid,
                    out,
                    fmt=fmt,
                    max_tiles=max_tiles,
                    role=role,
                    quality=quality,
                    coords=coords,
                    tme=tme,
                    tiling=tiling or TileOptions(),
                    seed=seed,
                )
            )
        except (WsiError, OSError, ValueError) as exc:
            failed[sid] = f"{path}: {exc}"
    index = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=INDEX_COLUMNS)
    index_path = write_atomic(out / "index.csv", lambda tmp: index.to_csv(tmp, index=False))
    return TileExport(index=index, failed=failed, index_path=index_path)


def _check(
    fmt: str, quality: int, role: str | None, tme: PathLike | None, max_tiles: int | None
) -> str:
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise InvalidParameterError(f"format must be png or jpg, got {fmt!r}")
    if not 1 <= quality <= 95:
        raise InvalidParameterError(f"JPEG quality must be 1..95, got {quality}")
    if role and tme is None:
        raise InvalidParameterError(
            f"--role {role} needs tile roles: pass --tme DIR (a `wsi tme profile` folder)"
        )
    if max_tiles is not None and max_tiles < 1:
        raise InvalidParameterError(f"--max must be at least 1, got {max_tiles}")
    return "jpg" if fmt == "jpeg" else fmt


def _export_slide(
    path: Path,
    sid: str,
    out: Path,
    *,
    fmt: str,
    max_tiles: int | None,
    role: str | None,
    quality: int,
    coords: PathLike | None,
    tme: PathLike | None,
    tiling: TileOptions,
    seed: int,
) -> pd.DataFrame:
    from wsi.io.slide import open_slide

    with open_slide(path, mpp=tiling.slide_mpp) as slide:
        plan = _plan(slide, sid, coords, tiling)
        roles = _roles(tme, sid, plan.coords)
        picked = np.flatnonzero(roles == role) if role else np.arange(len(plan.coords))
        if max_tiles is not None and len(picked) > max_tiles:
            rng = np.random.default_rng(seed)
            picked = np.sort(rng.choice(picked, size=max_tiles, replace=False))
        folder = out / sid
        folder.mkdir(parents=True, exist_ok=True)
        dpi = 25400.0 / plan.mpp
        names = []
        for i in picked:
            x, y = plan.coords[i]
            rgb = slide.read_patch(float(x), float(y), plan.size_level0, plan.size_px, plan.level)
            name = f"{sid}_{int(i)}.{fmt}"
            _save(Image.fromarray(rgb), folder / name, fmt, dpi, quality)
            names.append(f"{sid}/{name}")
    return pd.DataFrame(
        {
            "slide_id": sid,
            "tile_id": picked.astype(np.int64),
            "x": plan.coords[picked, 0],
            "y": plan.coords[picked, 1],
            "mpp": plan.mpp,
            "size_px": plan.size_px,
            "role": roles[picked],
            "path": names,
        },
        columns=INDEX_COLUMNS,
    )


def _plan(slide: Any, sid: str, coords: PathLike | None, tiling: TileOptions) -> _Plan:
    """The slide's tiles from ``coords/{sid}.h5`` (an error when absent), or without
    ``coords`` a grid made now."""
    if coords is not None:
        stored = Path(coords) / f"{sid}.h5"
        if not stored.is_file():
            raise FeatureFileError(
                f"no {stored.name} in {coords}: tile the slide first (`wsi tile`/`wsi embed`) "
                "or leave out --coords to tile it now"
            )
        tiles = read_slide_tiles(stored, features=False)
        level = min(int(tiles.attrs.get("patch_level", 0)), slide.level_count - 1)
        mpp = tiles.tile_mpp or tiles.tile_size_level0 * slide.mpp / tiles.tile_size_px
        return _Plan(tiles.coords, tiles.tile_size_level0, tiles.tile_size_px, level, mpp)
    from wsi.tiling import tile
    from wsi.tissue import detect_tissue

    grid = tile(
        slide,
        tiling.mpp,
        tiling.size,
        tiling.overlap,
        tiling.min_tissue,
        detect_tissue(slide, tiling.tissue),
        mpp_tolerance=tiling.mpp_tolerance,
    )
    return _Plan(grid.coords, grid.size_level0, grid.size, grid.level, grid.achieved_mpp)


def _roles(tme: PathLike | None, sid: str, coords: np.ndarray) -> np.ndarray:
    """Role per tile (str array; "" where unknown)."""
    table = read_tile_table(tme, sid, coords) if tme is not None else None
    if table is None or "role" not in table.columns:
        return np.full(len(coords), "", dtype=object)
    return table["role"].to_numpy(dtype=object)


def _save(image: Image.Image, path: Path, fmt: str, dpi: float, quality: int) -> None:
    """Save with the µm/px as the image's resolution, atomically. JPEG's JFIF density is
    16-bit (at most 65,535 dpi, 0.39 µm/px), so JPEGs carry it as EXIF pixels per cm."""
    kwargs: dict[str, Any] = {"dpi": (dpi, dpi)}
    if fmt == "jpg":
        exif = Image.Exif()
        exif[_EXIF_RESOLUTION_UNIT] = 3  # centimetres
        exif[_EXIF_X_RESOLUTION] = exif[_EXIF_Y_RESOLUTION] = dpi / 2.54
        kwargs = {"exif": exif, "quality": quality}
    write_atomic(path, lambda tmp: image.save(tmp, format=FORMATS[fmt], **kwargs))


def tile_image_mpp(path: str | os.PathLike[str]) -> float:
    """µm per pixel recorded in a tile image's resolution (DPI), as :func:`export_tiles`
    writes it."""
    with Image.open(path) as image:
        dpi = image.info.get("dpi")
    if not dpi:
        raise InvalidParameterError(f"{path}: no resolution (DPI) recorded in the image")
    return 25400.0 / float(dpi[0])
