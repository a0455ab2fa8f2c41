"""Per slide one QuPath GeoJSON: tiles as detections, nuclei as points.

``OUT/{slide_id}.geojson`` is a FeatureCollection in level-0 pixels (QuPath's image
coordinates; drag it onto the open slide). Each tile is a ``detection`` square whose
``classification`` (name + RGB colour) is its TME role, or a column of a per-tile labels
table (e.g. scanpy's ``leiden`` clusters from :func:`wsi.export.from_anndata`); its
``measurements`` are the TME numbers (``prob_*``, counts and ``*_per_mm2`` densities) and,
with a checkpoint, ``attention_<task>``. Nuclei (``DIR/nuclei/{slide_id}.csv`` in the TME
folder) are point detections classified ``lymphocyte`` or ``nucleus``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from models.atomic import write_text_atomic
from wsi.errors import InvalidParameterError
from wsi.export.sources import PathLike, SlideTiles, feature_paths, read_slide_tiles
from wsi.export.tme_tables import (
    numeric_columns,
    palette,
    read_nuclei,
    read_tile_table,
    with_densities,
)
from wsi.viz.geojson import point_detections, tile_detections

NUCLEUS_COLOURS = {"lymphocyte": (30, 60, 220), "nucleus": (120, 40, 140)}


def export_qupath(
    features: PathLike | Sequence[PathLike],
    out: PathLike,
    *,
    tme: PathLike | None = None,
    checkpoint: PathLike | None = None,
    tile_labels: PathLike | pd.DataFrame | None = None,
    class_column: str | None = None,
    progress: bool = False,
) -> list[Path]:
    """Write ``out/{slide_id}.geojson`` for every feature file; returns their paths.

    ``tme``: a ``wsi tme profile`` folder (roles, probabilities, counts per tile, nuclei).
    ``checkpoint``: a ``wsi train`` model, for attention per task. ``tile_labels`` with
    ``class_column``: a per-tile table (``slide_id, tile_id`` …, e.g. written from
    :func:`wsi.export.from_anndata`) whose column classifies the tiles instead of the role.
    """
    from tqdm.auto import tqdm

    labels = _tile_labels(tile_labels, class_column)
    slides = [read_slide_tiles(p) for p in feature_paths(features).values()]
    attention: dict[str, dict[str, np.ndarray]] = {}
    if checkpoint is not None:
        from wsi.export.attention import attention_and_predictions

        attention, _ = attention_and_predictions(checkpoint, slides)
    written = []
    for s in tqdm(slides, desc="qupath", unit="slide", disable=not progress):
        collection = slide_geojson(
            s,
            tme=tme,
            attention=attention.get(s.slide_id, {}),
            labels=labels,
            class_column=class_column,
        )
        written.append(
            write_text_atomic(Path(out) / f"{s.slide_id}.geojson", json.dumps(collection))
        )
    return written


def slide_geojson(
    s: SlideTiles,
    *,
    tme: PathLike | None = None,
    attention: dict[str, np.ndarray] | None = None,
    labels: pd.DataFrame | None = None,
    class_column: str | None = None,
) -> dict:
    """One slide's FeatureCollection: a detection per tile (in feature-file order), then
    the nuclei points when the TME folder has them."""
    from wsi.export.adata import tile_labels_for

    table = read_tile_table(tme, s.slide_id, s.coords) if tme is not None else None
    measurements = pd.DataFrame(index=np.arange(len(s)))
    classes = None
    if table is not None:
        area = None if s.mpp_level0 is None else (s.tile_size_level0 * s.mpp_level0 / 1000) ** 2
        table = with_densities(table, area)
        measurements = table[numeric_columns(table)].copy()
        if "role" in table.columns:
            classes = table["role"].tolist()
    for name, values in (attention or {}).items():
        measurements[name] = values
    if labels is not None and class_column:
        column = tile_labels_for(labels, s.slide_id, len(s))[class_column]
        classes = [("" if pd.isna(v) else _name(v)) for v in column]
    names = None if classes is None else [c or None for c in classes]
    collection = tile_detections(
        s.coords,
        s.tile_size_level0,
        classifications=names,
        colours=palette([c for c in names or [] if c]),
        measurements=measurements,
    )
    nuclei = read_nuclei(tme, s.slide_id) if tme is not None else None
    if nuclei is not None and len(nuclei):
        kind = (
            np.where(nuclei["lymphocyte"].astype(bool), "lymphocyte", "nucleus")
            if "lymphocyte" in nuclei.columns
            else np.full(len(nuclei), "nucleus")
        )
        collection["features"] += point_detections(
            nuclei[["x", "y"]].to_numpy().tolist(),
            classifications=kind.tolist(),
            colours=NUCLEUS_COLOURS,
        )
    return collection


def _name(value: object) -> str:
    """A class name: whole numbers without ".0" (cluster ids read back as floats)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _tile_labels(
    tile_labels: PathLike | pd.DataFrame | None, class_column: str | None
) -> pd.DataFrame | None:
    if tile_labels is None:
        if class_column:
            raise InvalidParameterError("--class-column needs --tile-labels CSV")
        return None
    table = (
        tile_labels
        if isinstance(tile_labels, pd.DataFrame)
        else pd.read_csv(tile_labels, dtype={"slide_id": str})
    )
    needed = ["slide_id", "tile_id"] + ([class_column] if class_column else [])
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise InvalidParameterError(
            f"tile labels lack {missing}; columns: {list(table.columns)} (write them with "
            "wsi.export.from_anndata(adata, [COLUMN]).to_csv(PATH, index=False))"
        )
    return table
