"""Feature files → AnnData (``.h5ad``) for scanpy and squidpy, and cluster labels back.

Tile level (one row per tile): ``X`` = features (float32); ``obs``: ``slide_id`` and
``library_id`` (categorical, equal), ``tile_id`` (the row in the slide's feature file),
``x``, ``y`` (top-left, level-0 px, as the file's ``coords``), ``x_um``, ``y_um`` (tile
centre in µm from the slide's top-left corner), TME columns (``role``, ``prob_*``, counts
and ``*_per_mm2``) when a TME folder is given, ``attention_<task>`` with a checkpoint, and
the labels' columns (the slide's value on each of its tiles). ``obsm['spatial']``: tile
centres in level-0 px (the "full resolution" pixels of scanpy/squidpy); ``obsm['spatial_um']``:
the same in µm. ``uns['spatial'][slide_id]``: ``images['lowres']`` and ``images['hires']``
(RGB uint8 thumbnails, 600 and 1200 px long sides by default) and ``scalefactors``
(``tissue_lowres_scalef`` and ``tissue_hires_scalef`` = thumbnail px per level-0 px,
``spot_diameter_fullres`` = a tile's side in level-0 px), as scanpy's Visium reader lays
them out, so ``sc.pl.spatial(adata[adata.obs.library_id == sid], library_id=sid,
color=...)`` draws each tile over its tissue. ``uns['wsi']``: provenance.

Slide level (one row per slide): ``X`` = mean-pooled features; ``obs``: ``n_tiles``,
the labels' columns, ``tme.csv``'s columns and the checkpoint's predictions.

Back: :func:`from_anndata` turns obs columns made in scanpy (e.g. ``leiden``) into a per-tile
table keyed by ``slide_id`` + ``tile_id`` (with ``x, y``), which ``wsi export qupath
--tile-labels`` and :func:`wsi.export.tile_labels_for` read.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from models.atomic import write_atomic
from wsi.export.sources import PathLike, SlideTiles, check_level, feature_paths, read_slide_tiles
from wsi.export.tme_tables import read_slide_table, read_tile_table, with_densities

if TYPE_CHECKING:
    import anndata

THUMBNAIL_LONG_SIDE_PX = 600
"""Long side of the ``lowres`` thumbnail in ``uns['spatial']`` (as Space Ranger's lowres)."""
HIRES_LONG_SIDE_PX = 1200
"""Long side of the ``hires`` thumbnail (Space Ranger's: 2000; smaller to keep cohorts light)."""

KEY_COLUMNS = ("slide_id", "tile_id", "x", "y")
"""The per-tile key of tables going back from AnnData into this library's files."""


def to_anndata(
    features: PathLike | Sequence[PathLike],
    *,
    tme: PathLike | None = None,
    labels: PathLike | pd.DataFrame | None = None,
    checkpoint: PathLike | None = None,
    level: str = "tile",
    slides: Sequence[PathLike] | None = None,
    thumbnail_px: int = THUMBNAIL_LONG_SIDE_PX,
    hires_px: int = HIRES_LONG_SIDE_PX,
    progress: bool = False,
) -> anndata.AnnData:
    """An AnnData of one encoder's feature files (see the module docstring for the layout).

    ``features``: a ``features/<encoder>`` folder (or several, or files). ``tme``: a
    ``wsi tme profile`` folder (:mod:`wsi.export.tme_tables`). ``labels``: a labels CSV or
    DataFrame with ``slide_id``. ``checkpoint``: a ``wsi train`` model, for attention per
    tile and predictions per slide. ``slides``: slide files, folders or globs for the
    thumbnails (default: the slide path in each file's provenance; a slide not found gets
    no image, with a warning); ``thumbnail_px`` / ``hires_px``: long sides of the ``lowres``
    and ``hires`` images (``hires_px=0``: no ``hires``). ``level``: ``"tile"`` or ``"slide"``.

    Raises :class:`~wsi.errors.FeatureFileError` naming the encoders when the files come
    from more than one.
    """
    check_level(level)
    paths = feature_paths(features)
    loaded = [read_slide_tiles(p) for p in _bar(paths.values(), progress, "read")]
    label_table = _labels(labels)
    maps, predictions = ({}, None)
    if checkpoint is not None:
        from wsi.export.attention import attention_and_predictions

        maps, predictions = attention_and_predictions(checkpoint, loaded)
    provenance = _provenance(loaded, paths, tme=tme, checkpoint=checkpoint, level=level)
    if level == "slide":
        return _slide_level(loaded, label_table, tme, predictions, provenance)
    return _tile_level(
        loaded,
        label_table,
        tme,
        maps,
        provenance,
        _slide_files(slides),
        (thumbnail_px, hires_px),
        progress,
    )


def write_anndata(adata: anndata.AnnData, path: PathLike) -> Path:
    """Write ``adata`` to ``path`` (``.h5ad``, gzip-compressed X) atomically."""
    return write_atomic(path, lambda tmp: adata.write_h5ad(tmp, compression="gzip"))


def export_anndata(features: PathLike | Sequence[PathLike], out: PathLike, **kwargs: Any) -> Path:
    """:func:`to_anndata` (same keyword arguments) written to ``out`` (``.h5ad``)."""
    return write_anndata(to_anndata(features, **kwargs), out)


def from_anndata(
    adata: anndata.AnnData | PathLike, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """A tile-level AnnData's obs as a per-tile table for this library: ``slide_id``,
    ``tile_id``, ``x``, ``y`` (top-left, level-0 px) and ``columns`` (default: every obs
    column not written by :func:`to_anndata`, e.g. scanpy's ``leiden``), one row per tile.
    Write it with ``to_csv(..., index=False)``; :func:`tile_labels_for` reads it back."""
    import anndata as ad

    if not isinstance(adata, ad.AnnData):
        adata = ad.read_h5ad(adata)
    obs = adata.obs
    missing = [c for c in KEY_COLUMNS if c not in obs.columns]
    if missing:
        raise KeyError(
            f"obs lacks {missing}: not a tile-level AnnData of wsi.export.to_anndata "
            "(export with level='tile')"
        )
    ours = set(adata.uns.get("wsi", {}).get("obs_columns", []))
    if columns is None:
        columns = [c for c in obs.columns if c not in ours and c not in KEY_COLUMNS]
    absent = [c for c in columns if c not in obs.columns]
    if absent:
        raise KeyError(f"obs has no column(s) {absent}; obs columns: {list(obs.columns)}")
    table = obs[list(KEY_COLUMNS) + [c for c in columns if c not in KEY_COLUMNS]].copy()
    table["slide_id"] = table["slide_id"].astype(str)
    for column in table.columns:
        if isinstance(table[column].dtype, pd.CategoricalDtype):
            table[column] = table[column].astype(str)
    return table.reset_index(drop=True)


def tile_labels_for(table: pd.DataFrame, slide_id: str, n_tiles: int) -> pd.DataFrame:
    """The rows of a per-tile table (:func:`from_anndata`) for one slide, one per tile
    ``0 .. n_tiles - 1`` in feature-file order (tiles it lacks: NaN)."""
    rows = table[table["slide_id"].astype(str) == slide_id]
    rows = rows.drop_duplicates("tile_id").set_index("tile_id")
    return rows.reindex(np.arange(n_tiles)).reset_index(drop=True)


# ----------------------------------------------------------------------------- tile level


def _tile_level(
    loaded: list[SlideTiles],
    label_table: pd.DataFrame | None,
    tme: PathLike | None,
    maps: dict[str, dict[str, np.ndarray]],
    provenance: dict[str, Any],
    slide_files: dict[str, Path],
    thumbnail_px: tuple[int, int],
    progress: bool,
) -> anndata.AnnData:
    import anndata as ad

    with_tiles = [s for s in loaded if len(s)]
    frames = [_tile_obs(s, tme, maps.get(s.slide_id, {})) for s in with_tiles]
    if not frames:
        raise ValueError("no tiles in any feature file: nothing to export at tile level")
    obs = _categorical_text(_with_labels(pd.concat(frames, ignore_index=True), label_table))
    for column in ("slide_id", "library_id"):
        obs[column] = pd.Categorical(obs[column].astype(str))
    obs.index = [f"{sid}-{tid}" for sid, tid in zip(obs["slide_id"], obs["tile_id"], strict=True)]
    X = np.concatenate([s.features for s in with_tiles]).astype(np.float32, copy=False)
    adata = ad.AnnData(X=X, obs=obs, var=_var(X.shape[1]))
    adata.obsm["spatial"] = np.concatenate([s.centres_px for s in with_tiles])
    adata.obsm["spatial_um"] = np.concatenate([s.centres_um for s in with_tiles])
    adata.uns["spatial"] = {
        s.slide_id: _spatial_entry(s, slide_files.get(s.slide_id), thumbnail_px)
        for s in _bar(with_tiles, progress, "thumbnails")
    }
    adata.uns["wsi"] = {**provenance, "obs_columns": list(obs.columns)}
    return adata


def _tile_obs(
    s: SlideTiles, tme: PathLike | None, attention: dict[str, np.ndarray]
) -> pd.DataFrame:
    centres_um = s.centres_um
    obs = pd.DataFrame(
        {
            "slide_id": s.slide_id,
            "library_id": s.slide_id,
            "tile_id": np.arange(len(s), dtype=np.int64),
            "x": s.coords[:, 0],
            "y": s.coords[:, 1],
            "x_um": centres_um[:, 0],
            "y_um": centres_um[:, 1],
        }
    )
    if tme is not None:
        table = read_tile_table(tme, s.slide_id, s.coords)
        if table is not None:
            table = with_densities(table, _tile_area_mm2(s))
            clash = [c for c in table.columns if c in obs.columns]
            obs = pd.concat([obs, table.drop(columns=clash)], axis=1)
    for name, values in attention.items():
        obs[name] = values
    return obs


def _tile_area_mm2(s: SlideTiles) -> float | None:
    return None if s.mpp_level0 is None else (s.tile_size_level0 * s.mpp_level0 / 1000) ** 2


def _spatial_entry(
    s: SlideTiles, slide_file: Path | None, long_sides: tuple[int, int]
) -> dict[str, Any]:
    """``uns['spatial'][slide_id]``: thumbnails and scale factors (scanpy's Visium layout)."""
    entry: dict[str, Any] = {
        "images": {},
        "scalefactors": {"spot_diameter_fullres": float(s.tile_size_level0)},
        "metadata": {
            "source": "wsi",
            "mpp_level0": float(s.mpp_level0 or np.nan),
            "tile_mpp": float(s.tile_mpp or np.nan),
        },
    }
    path = slide_file or s.slide_path
    if path is None or not Path(path).is_file():
        warnings.warn(
            f"{s.slide_id}: slide file not found ({path}); no thumbnail in "
            "uns['spatial'] (pass slides=... / --slides)",
            UserWarning,
            stacklevel=3,
        )
        return entry
    from wsi.io.slide import open_slide

    with open_slide(path) as slide:
        for key, long_side in zip(("lowres", "hires"), long_sides, strict=True):
            if long_side > 0:
                # output px (i, j) covers level-0 px [j·ds, (j+1)·ds): scale factor = 1 / ds
                downsample = max(max(slide.dimensions) / long_side, 1.0)
                entry["images"][key] = slide.read_thumbnail(downsample)
                entry["scalefactors"][f"tissue_{key}_scalef"] = 1.0 / downsample
    entry["metadata"]["slide_path"] = str(path)
    return entry


# ---------------------------------------------------------------------------- slide level


def _slide_level(
    loaded: list[SlideTiles],
    label_table: pd.DataFrame | None,
    tme: PathLike | None,
    predictions: pd.DataFrame | None,
    provenance: dict[str, Any],
) -> anndata.AnnData:
    import anndata as ad

    with_tiles = [s for s in loaded if len(s)]
    if len(with_tiles) < len(loaded):
        empty = [s.slide_id for s in loaded if not len(s)]
        warnings.warn(
            f"left out {len(empty)} slide(s) without tiles: {empty[:5]}", UserWarning, stacklevel=3
        )
    if not with_tiles:
        raise ValueError("no tiles in any feature file: nothing to export")
    X = np.stack([s.features.mean(axis=0) for s in with_tiles]).astype(np.float32)
    obs = pd.DataFrame(
        {
            "slide_id": [s.slide_id for s in with_tiles],
            "n_tiles": [len(s) for s in with_tiles],
            "mpp_level0": [float(s.mpp_level0 or np.nan) for s in with_tiles],
            "tile_mpp": [float(s.tile_mpp or np.nan) for s in with_tiles],
        }
    )
    obs = _with_labels(obs, label_table)
    extra = [read_slide_table(tme) if tme is not None else None, predictions]
    for table in extra:
        if table is not None and len(table):
            obs = obs.merge(
                table.astype({"slide_id": str}), on="slide_id", how="left", suffixes=("", "_tme")
            )
    obs.index = obs["slide_id"].astype(str).tolist()
    obs = _categorical_text(obs)
    adata = ad.AnnData(X=X, obs=obs, var=_var(X.shape[1]))
    adata.uns["wsi"] = {**provenance, "obs_columns": list(obs.columns)}
    return adata


# ----------------------------------------------------------------------------- shared


def _labels(labels: PathLike | pd.DataFrame | None) -> pd.DataFrame | None:
    if labels is None:
        return None
    if isinstance(labels, pd.DataFrame):
        return labels.astype({"slide_id": str})
    from wsi.cohort import read_labels

    return read_labels(labels)


def _with_labels(obs: pd.DataFrame, label_table: pd.DataFrame | None) -> pd.DataFrame:
    """``obs`` with the labels' columns joined on slide_id (a clashing name gets ``_label``)."""
    if label_table is None:
        return obs
    merged = obs.merge(label_table, on="slide_id", how="left", suffixes=("", "_label"))
    return _categorical_text(merged)


def _categorical_text(obs: pd.DataFrame) -> pd.DataFrame:
    """Text columns as categoricals with "" for missing (h5ad stores those cleanly)."""
    for column in obs.columns:
        if obs[column].dtype == object:
            obs[column] = pd.Categorical(obs[column].fillna("").astype(str))
    return obs


def _var(width: int) -> pd.DataFrame:
    return pd.DataFrame(index=[f"feature_{i}" for i in range(width)])


def _slide_files(slides: Sequence[PathLike] | None) -> dict[str, Path]:
    if not slides:
        return {}
    from wsi.io.slide import slide_id_of
    from wsi.pipeline.batch import find_slides

    return {slide_id_of(p): p for p in find_slides(slides)}


def _provenance(
    loaded: list[SlideTiles],
    paths: dict[str, Path],
    *,
    tme: PathLike | None,
    checkpoint: PathLike | None,
    level: str,
) -> dict[str, Any]:
    from models.version import library_version

    encoder = next((s.encoder for s in loaded if s.encoder), "")
    return {
        "library": "wsi",
        "version": library_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "level": level,
        "encoder": encoder,
        "feature_dim": int(
            next((s.features.shape[1] for s in loaded if s.features is not None), 0)
        ),
        "feature_files": {sid: str(p.resolve()) for sid, p in paths.items()},
        "tme": "" if tme is None else str(Path(tme).resolve()),
        "checkpoint": "" if checkpoint is None else str(Path(checkpoint).resolve()),
        "spatial_units": "obsm['spatial']: tile centres in level-0 px; obsm['spatial_um']: in µm",
        "slide_provenance": {
            s.slide_id: json.dumps(s.provenance, sort_keys=True, default=str) for s in loaded
        },
    }


def _bar(items: Any, progress: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="slide", disable=not progress, leave=False)
