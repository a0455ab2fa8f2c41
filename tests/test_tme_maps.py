"""TME maps over a thumbnail and the QuPath GeoJSON of tiles (generic: names, colours,
measurements)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from wsi.viz.geojson import tile_detections
from wsi.viz.tme_maps import LEGEND_PANEL_PX, category_map, density_map


def test_tile_detections_classes_colours_measurements():
    table = pd.DataFrame({"prob_TUM": [0.9, 0.2], "n_lymphocytes": [3, math.nan]})
    out = tile_detections(
        [[0, 0], [224, 0]],
        224,
        classifications=["tumour", None],
        colours={"tumour": (200, 30, 45)},
        measurements=table,
    )
    json.dumps(out)  # plain Python types only
    first, second = (f["properties"] for f in out["features"])
    assert first["objectType"] == "detection"
    assert first["classification"] == {"name": "tumour", "color": [200, 30, 45]}
    assert first["measurements"] == {"prob_TUM": 0.9, "n_lymphocytes": 3.0}
    assert "classification" not in second and second["measurements"] == {"prob_TUM": 0.2}
    ring = out["features"][1]["geometry"]["coordinates"][0]
    assert ring == [[224, 0], [448, 0], [448, 224], [224, 224], [224, 0]]
    with pytest.raises(ValueError, match="n_lymphocytes has 2 values for 3 tiles"):
        tile_detections([[0, 0], [1, 1], [2, 2]], 1.0, measurements={"n_lymphocytes": [1, 2]})


def test_category_map_fills_tiles_in_their_colour():
    thumb = np.full((100, 200, 3), 255, np.uint8)
    # tiles of 500 level-0 px at downsample 10: 50 × 50 thumbnail px
    picture = np.asarray(
        category_map(
            thumb,
            10.0,
            np.array([[0, 0], [1000, 0]]),
            500.0,
            ["tumour", "unknown"],
            {"tumour": (200, 0, 0)},
            alpha=0.5,
        )
    )
    assert picture.shape[1] == 200 + LEGEND_PANEL_PX
    assert tuple(picture[10, 10]) == (228, 128, 128)  # round(0.5 * 255 + 0.5 * colour)
    assert tuple(picture[10, 110]) == (255, 255, 255)  # a category without a colour: as it was
    assert tuple(picture[80, 10]) == (255, 255, 255)  # outside the tiles


def test_density_map_colours_by_value():
    thumb = np.full((40, 40, 3), 255, np.uint8)
    picture = np.asarray(
        density_map(thumb, 1.0, np.array([[0, 0], [20, 0]]), 20.0, np.array([100.0, 2000.0]))
    )
    assert not np.array_equal(picture[5, 5], picture[5, 25])
    assert tuple(picture[30, 5]) == (255, 255, 255)
