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


def feature_collection(features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the given features."""
    return {"type": "FeatureCollection", "features": list(features)}
