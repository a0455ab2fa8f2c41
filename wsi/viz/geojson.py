"""GeoJSON objects in level-0 pixel coordinates, in the flavour QuPath imports.

QuPath reads a FeatureCollection whose features carry ``properties.objectType``
(``"annotation"`` for regions such as tissue, ``"detection"`` for tiles),
an optional ``classification`` and numeric ``measurements`` it shows in its tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from wsi.errors import InvalidParameterError

Ring = Sequence[Sequence[float]]


def polygon_feature(
    rings: Sequence[Ring],
    *,
    object_type: str = "annotation",
    name: str | None = None,
    classification: str | None = None,
    color: tuple[int, int, int] | None = None,
    measurements: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """One polygon feature: ``rings[0]`` is the exterior, the others are holes.

    Coordinates are ``(x, y)`` level-0 pixels; each ring is closed here if it is not.
    """
    closed = []
    for ring in rings:
        pts = [[float(x), float(y)] for x, y in ring]
        if pts and pts[0] != pts[-1]:
            pts.append(pts[0])
        closed.append(pts)
    properties: dict[str, Any] = {"objectType": object_type}
    if name is not None:
        properties["name"] = name
    if classification is not None:
        cls: dict[str, Any] = {"name": classification}
        if color is not None:
            cls["color"] = list(color)
        properties["classification"] = cls
    if measurements:
        properties["measurements"] = {k: float(v) for k, v in measurements.items()}
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": closed},
        "properties": properties,
    }


def feature_collection(features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the given features."""
    return {"type": "FeatureCollection", "features": list(features)}


def _clean_measurements(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a row (JSON has no NaN; QuPath shows a missing value as empty)."""
    out = {}
    for key, value in row.items():
        number = float(value)
        if math.isfinite(number):
            out[str(key)] = number
    return out


def tile_detections(
    coords: np.ndarray,
    tile_size_level0: float,
    *,
    classes: Sequence[str | None] | None = None,
    colours: Mapping[str, tuple[int, int, int]] | None = None,
    measurements: pd.DataFrame | Mapping[str, Sequence[float]] | None = None,
) -> list[dict[str, Any]]:
    """One QuPath ``detection`` square per tile, in level-0 pixels.

    ``coords``: (N, 2) ``[x, y]`` top-left level-0 px; ``tile_size_level0``: the square's side
    in level-0 px. ``classes``: N classification names (None or "" leaves a tile
    unclassified), coloured by ``colours[name]`` (RGB 0-255) when given. ``measurements``:
    N rows of numbers (a DataFrame or name → N values); NaN and infinite values are left out
    of their tile. The features hold only Python types (``json.dumps`` works).
    """
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if not (math.isfinite(tile_size_level0) and tile_size_level0 > 0):
        raise InvalidParameterError(
            f"tile_size_level0 must be > 0 level-0 px, got {tile_size_level0}"
        )
    table = pd.DataFrame(measurements if measurements is not None else {}, dtype=np.float64)
    if len(table.columns) and len(table) != len(xy):
        raise InvalidParameterError(
            f"{len(table)} measurement rows for {len(xy)} tiles; pass one row per coords row"
        )
    if classes is not None and len(classes) != len(xy):
        raise InvalidParameterError(
            f"{len(classes)} classes for {len(xy)} tiles; pass one per tile"
        )
    rows = table.to_dict("records") if len(table.columns) else [{}] * len(xy)
    colours = colours or {}
    size = float(tile_size_level0)
    features = []
    for i, (x, y) in enumerate(xy.tolist()):
        name = classes[i] if classes is not None else None
        features.append(
            polygon_feature(
                [[(x, y), (x + size, y), (x + size, y + size), (x, y + size)]],
                object_type="detection",
                classification=name or None,
                color=colours.get(name) if name else None,
                measurements=_clean_measurements(rows[i]),
            )
        )
    return features


def point_detections(
    xy: np.ndarray,
    *,
    classes: Sequence[str | None] | None = None,
    colours: Mapping[str, tuple[int, int, int]] | None = None,
) -> list[dict[str, Any]]:
    """One QuPath ``detection`` point per row of ``xy`` (level-0 px), e.g. nuclei centres,
    classified by ``classes`` (e.g. "lymphocyte") with ``colours`` (RGB 0-255)."""
    points = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    colours = colours or {}
    features = []
    for i, (x, y) in enumerate(points.tolist()):
        properties: dict[str, Any] = {"objectType": "detection"}
        name = classes[i] if classes is not None else None
        if name:
            cls: dict[str, Any] = {"name": name}
            if name in colours:
                cls["color"] = list(colours[name])
            properties["classification"] = cls
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [x, y]},
                "properties": properties,
            }
        )
    return features
