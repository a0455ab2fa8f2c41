"""GeoJSON objects in level-0 pixel coordinates, in the flavour QuPath imports.

QuPath reads a FeatureCollection whose features carry ``properties.objectType``
(``"annotation"`` for regions such as tissue, ``"detection"`` for tiles),
an optional ``classification`` and numeric ``measurements`` it shows in its tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


def point_detections(
    xy: Sequence[Sequence[float]],
    *,
    classifications: Sequence[str | None] | None = None,
    colours: Mapping[str, tuple[int, int, int]] | None = None,
) -> list[dict[str, Any]]:
    """One QuPath ``detection`` point per ``(x, y)`` level-0 pixel position (e.g. nuclei
    centres), classified by ``classifications`` (None: unclassified) drawn in ``colours``."""
    colours = colours or {}
    names = list(classifications) if classifications is not None else [None] * len(xy)
    features = []
    for (x, y), name in zip(xy, names, strict=True):
        properties: dict[str, Any] = {"objectType": "detection"}
        if name is not None:
            cls: dict[str, Any] = {"name": name}
            if name in colours:
                cls["color"] = list(colours[name])
            properties["classification"] = cls
        geometry = {"type": "Point", "coordinates": [float(x), float(y)]}
        features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    return features


def feature_collection(features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the given features."""
    return {"type": "FeatureCollection", "features": list(features)}


def tile_detections(
    coords: Sequence[Sequence[float]],
    tile_size_level0: float,
    *,
    classifications: Sequence[str | None] | None = None,
    colours: Mapping[str, tuple[int, int, int]] | None = None,
    measurements: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """A FeatureCollection of one QuPath ``detection`` square per tile (level-0 pixels).

    ``coords``: (N, 2) tile top-left ``[x, y]``; ``classifications``: N class names (None:
    unclassified), each drawn in ``colours[name]`` when given; ``measurements``: name → N
    numbers (a pandas DataFrame works), shown in QuPath's measurement tables; NaN and
    infinite values are left out of that tile (JSON has no NaN).
    """
    import math

    size = float(tile_size_level0)
    if not math.isfinite(size) or size <= 0:
        raise ValueError(f"tile_size_level0 must be > 0 level-0 pixels, got {tile_size_level0}")
    xy = [(float(x), float(y)) for x, y in coords]
    names = list(classifications) if classifications is not None else [None] * len(xy)
    table = measurements if measurements is not None else {}
    columns = {str(k): [float(v) for v in values] for k, values in table.items()}
    for name, values in [("classifications", names), *columns.items()]:
        if len(values) != len(xy):
            raise ValueError(
                f"{name} has {len(values)} values for {len(xy)} tiles; pass one per tile"
            )
    colours = colours or {}
    features = []
    for i, (x, y) in enumerate(xy):
        values = {k: v[i] for k, v in columns.items() if math.isfinite(v[i])}
        square = [(x, y), (x + size, y), (x + size, y + size), (x, y + size)]
        cls = names[i]
        features.append(
            polygon_feature(
                [square],
                object_type="detection",
                classification=cls,
                color=colours.get(cls) if cls is not None else None,
                measurements=values,
            )
        )
    return feature_collection(features)
