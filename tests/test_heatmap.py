"""Attention overlays, tile GeoJSON, top-tile mosaics and atomic PNG writes, with exact pixels."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from wsi.errors import InvalidParameterError
from wsi.viz.heatmap import (
    COLORBAR_PANEL_PX,
    attention_overlay,
    normalize_scores,
    save_png,
    tiles_geojson,
    top_tiles_mosaic,
)
from wsi.viz.qc import CAPTION_PX

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
INFERNO = matplotlib.colormaps["inferno"]

# downsample 2, tiles of 20 level-0 px -> 10 x 10 thumbnail px, none overlapping
COORDS = np.array([[0, 0], [40, 0], [80, 0], [120, 0], [0, 100]], dtype=np.int64)
SCORES = np.array([0.3, 5.0, -1.0, np.nan, 2.0])


def _thumbnail() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=(100, 300, 3), dtype=np.uint8)


def _blend(thumbnail: np.ndarray, value: float, alpha: float, cmap=INFERNO) -> np.ndarray:
    colour = np.asarray(cmap(value, bytes=True)[:3], dtype=np.float64)
    return np.rint((1 - alpha) * thumbnail.astype(np.float64) + alpha * colour).astype(np.uint8)


def _tile(pixels: np.ndarray, x: int, y: int) -> np.ndarray:
    """Thumbnail pixels of the tile whose level-0 top-left is (x, y)."""
    return pixels[y // 2 : y // 2 + 10, x // 2 : x // 2 + 10]


def test_tiles_get_their_rank_colour_and_the_rest_stays_untouched() -> None:
    thumbnail = _thumbnail()
    picture = np.asarray(attention_overlay(thumbnail, 2.0, COORDS, 20, SCORES, alpha=0.5))
    # finite scores 0.3, 5.0, -1.0, 2.0 rank to 1/3, 1, 0, 2/3
    for (x, y), value in zip(COORDS[[0, 1, 2, 4]].tolist(), [1 / 3, 1.0, 0.0, 2 / 3], strict=True):
        assert np.array_equal(_tile(picture, x, y), _blend(_tile(thumbnail, x, y), value, 0.5))
    top = _tile(picture, 40, 0)
    assert np.array_equal(top, _blend(_tile(thumbnail, 40, 0), 1.0, 0.5))  # colormap's top
    covered = np.zeros((100, 300), dtype=bool)
    for x, y in COORDS[[0, 1, 2, 4]].tolist():
        covered[y // 2 : y // 2 + 10, x // 2 : x // 2 + 10] = True
    assert np.array_equal(picture[:100, :300][~covered], thumbnail[~covered])
    assert np.array_equal(_tile(picture, 120, 0), _tile(thumbnail, 120, 0))  # NaN: not drawn


def test_minmax_colours_and_alpha_one_give_pure_colormap() -> None:
    thumbnail = _thumbnail()
    picture = np.asarray(
        attention_overlay(thumbnail, 2.0, COORDS, 20, SCORES, alpha=1.0, normalize="minmax")
    )
    for (x, y), score in zip(COORDS.tolist(), SCORES.tolist(), strict=True):
        if np.isnan(score):
            continue
        colour = np.asarray(INFERNO((score + 1.0) / 6.0, bytes=True)[:3])
        assert (_tile(picture, x, y) == colour).all()


def test_alpha_zero_leaves_the_thumbnail() -> None:
    thumbnail = _thumbnail()
    picture = np.asarray(attention_overlay(thumbnail, 2.0, COORDS, 20, SCORES, alpha=0.0))
    assert np.array_equal(picture[:100, :300], thumbnail)


def test_overlapping_tiles_average_their_normalised_scores() -> None:
    thumbnail = np.full((40, 60, 3), 100, dtype=np.uint8)
    coords = np.array([[0, 0], [10, 0]], dtype=np.int64)  # 10-px tiles overlapping by 5 px
    picture = np.asarray(
        attention_overlay(
            thumbnail, 2.0, coords, 20, np.array([0.0, 1.0]), normalize="minmax", alpha=1.0
        )
    )
    assert (picture[2, 2] == INFERNO(0.0, bytes=True)[:3]).all()
    assert (picture[2, 7] == INFERNO(0.5, bytes=True)[:3]).all()
    assert (picture[2, 12] == INFERNO(1.0, bytes=True)[:3]).all()
    assert (picture[2, 16] == 100).all()


def test_colour_bar_is_the_colormap_gradient_right_of_the_thumbnail() -> None:
    picture = attention_overlay(_thumbnail(), 2.0, COORDS, 20, SCORES, cmap="viridis")
    assert picture.size[0] >= 300 + COLORBAR_PANEL_PX
    panel = np.asarray(picture)[: picture.height - CAPTION_PX, 300 : 300 + COLORBAR_PANEL_PX]
    coloured = (panel != 255).any(axis=2) & ~(panel == panel[..., :1]).all(axis=2)
    column = int(np.argmax(coloured.sum(axis=0)))
    rows = np.flatnonzero(coloured[:, column])
    assert len(rows) >= 100 and np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))
    expected = matplotlib.colormaps["viridis"](np.linspace(1.0, 0.0, len(rows)), bytes=True)
    assert np.array_equal(panel[rows, column], expected[:, :3])


def test_rank_normalisation_spreads_scores_evenly() -> None:
    scores = np.array([10.0, -3.0, 0.5, np.nan, 10.0, 1e9, np.inf])
    normalized = normalize_scores(scores, "rank")
    assert np.allclose(normalized[[1, 2, 0, 4, 5]], [0.0, 0.25, 0.625, 0.625, 1.0])
    assert np.isnan(normalized[[3, 6]]).all()
    assert np.array_equal(normalize_scores(np.array([4.0, 4.0]), "rank"), [0.5, 0.5])
    assert np.array_equal(normalize_scores(np.array([7.0]), "minmax"), [0.5])
    assert np.allclose(normalize_scores(np.array([1.0, 3.0, 2.0]), "minmax"), [0.0, 1.0, 0.5])


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 60), elements=st.floats(-1e6, 1e6)))
def test_rank_normalisation_is_monotonic(scores: np.ndarray) -> None:
    normalized = normalize_scores(scores, "rank")
    assert ((normalized >= 0) & (normalized <= 1)).all()
    order = np.argsort(scores, kind="stable")
    assert (np.diff(normalized[order]) >= 0).all()
    for i, j in [(0, len(scores) - 1), (len(scores) // 2, 0)]:
        if scores[i] < scores[j]:
            assert normalized[i] < normalized[j]
        elif scores[i] == scores[j]:
            assert normalized[i] == normalized[j]


def test_nothing_scored_keeps_the_thumbnail() -> None:
    thumbnail = _thumbnail()
    all_nan = attention_overlay(thumbnail, 2.0, COORDS, 20, np.full(5, np.nan))
    empty = attention_overlay(thumbnail, 2.0, np.zeros((0, 2), np.int64), 20, np.zeros(0))
    for picture in (all_nan, empty):
        assert np.array_equal(np.asarray(picture)[:100, :300], thumbnail)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": np.zeros(4)}, "4 scores for 5 tiles"),
        ({"cmap": "no-such-map"}, "unknown colormap"),
        ({"normalize": "zscore"}, "rank' or 'minmax"),
        ({"alpha": 1.5}, "alpha"),
    ],
)
def test_overlay_bad_inputs_say_what_to_do(kwargs: dict, message: str) -> None:
    arguments = {"scores": SCORES} | kwargs
    scores = arguments.pop("scores")
    with pytest.raises(InvalidParameterError, match=message):
        attention_overlay(_thumbnail(), 2.0, COORDS, 20, scores, **arguments)


def test_geojson_has_one_closed_square_detection_per_tile() -> None:
    coords = np.array([[0, 0], [448, 896], [1344, 0]], dtype=np.int64)
    measurements = {
        "attention_tumour": np.array([0.1, 0.7, 0.2], dtype=np.float32),
        "til_score": np.array([3, 1, np.nan]),
        "tile_index": np.arange(3, dtype=np.int64),
    }
    collection = tiles_geojson(coords, 448, measurements, classification="tile")
    text = json.dumps(collection)  # no numpy types anywhere
    assert "NaN" not in text
    features = json.loads(text)["features"]
    assert collection["type"] == "FeatureCollection" and len(features) == 3
    for i, feature in enumerate(features):
        x, y = coords[i].tolist()
        ring = feature["geometry"]["coordinates"][0]
        assert feature["geometry"]["type"] == "Polygon"
        assert ring == [[x, y], [x + 448, y], [x + 448, y + 448], [x, y + 448], [x, y]]
        properties = feature["properties"]
        assert properties["objectType"] == "detection"
        assert properties["classification"] == {"name": "tile"}
        assert properties["measurements"]["attention_tumour"] == pytest.approx(
            float(measurements["attention_tumour"][i])
        )
        assert properties["measurements"]["tile_index"] == i
    assert features[0]["properties"]["measurements"]["til_score"] == 3.0
    assert "til_score" not in features[2]["properties"]["measurements"]  # NaN left out


def test_geojson_of_no_tiles_is_an_empty_collection() -> None:
    collection = tiles_geojson(np.zeros((0, 2), np.int64), 224, {"attention": np.zeros(0)})
    assert collection == {"type": "FeatureCollection", "features": []}


def test_geojson_rejects_wrong_length_and_text_measurements() -> None:
    coords = np.zeros((2, 2), np.int64)
    with pytest.raises(InvalidParameterError, match="1 values for 2 tiles"):
        tiles_geojson(coords, 224, {"attention": np.zeros(1)})
    with pytest.raises(InvalidParameterError, match="numeric"):
        tiles_geojson(coords, 224, {"label": np.array(["tumour", "stroma"])})


def _solid_patches(count: int, size: int) -> np.ndarray:
    patches = np.zeros((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        patches[i] = (20 * i + 10, 255 - 20 * i, 77)
    return patches


def test_mosaic_orders_tiles_by_score_row_by_row() -> None:
    patches = _solid_patches(10, 64)
    scores = np.array([0.2, 0.9, np.nan, 0.5, -3.0, 0.95, 0.1, 0.0, 0.6, 0.3])
    mosaic = np.asarray(top_tiles_mosaic(patches, scores, columns=5, title="slide-1"))
    # cells 4 px apart, each a 64-px tile over an 18-px caption: 5 columns x 2 rows
    assert mosaic.shape[:2] == (2 * (64 + 18 + 4) + 4 + CAPTION_PX, 5 * (64 + 4) + 4)
    expected = [5, 1, 8, 3, 9, 0, 6, 7, 4, 2]  # highest first, NaN last
    for position, index in enumerate(expected):
        left = 4 + (position % 5) * 68
        top = 4 + (position // 5) * 86
        assert (mosaic[top : top + 64, left : left + 64] == patches[index][0, 0]).all(), position


def test_mosaic_resizes_patches_to_the_first_ones_size_and_fills_short_rows() -> None:
    patches = [np.full((32, 48, 3), 50, np.uint8), np.full((64, 96, 3), 200, np.uint8)]
    mosaic = np.asarray(top_tiles_mosaic(patches, np.array([0.1, 0.8]), columns=8))
    assert mosaic.shape[0] == 32 + 18 + 4 + 4 + CAPTION_PX
    assert mosaic.shape[1] >= 2 * (48 + 4) + 4  # 2 columns, not 8
    assert (mosaic[4 : 4 + 32, 4 : 4 + 48] == 200).all()
    assert (mosaic[4 : 4 + 32, 56 : 56 + 48] == 50).all()


def test_mosaic_checks_its_inputs() -> None:
    patches = _solid_patches(3, 8)
    with pytest.raises(InvalidParameterError, match="2 scores for 3 patches"):
        top_tiles_mosaic(patches, np.zeros(2))
    with pytest.raises(InvalidParameterError, match="captions"):
        top_tiles_mosaic(patches, np.zeros(3), captions=["a"])
    with pytest.raises(InvalidParameterError, match="columns"):
        top_tiles_mosaic(patches, np.zeros(3), columns=0)
    assert top_tiles_mosaic([], np.zeros(0)).size[1] > 0


def test_mosaic_of_real_crc_tiles_puts_the_top_tumour_tile_first() -> None:
    folder = DATA / "crc_val_he_7k_32"
    if not folder.is_dir():
        pytest.skip(f"real test data not found under {DATA}")
    paths = sorted(folder.glob("*.png"))[:8]
    patches = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    scores = np.linspace(0.0, 1.0, len(patches))[::-1].copy()
    scores[0], scores[5] = scores[5], scores[0]
    mosaic = np.asarray(
        top_tiles_mosaic(patches, scores, columns=4, captions=[p.stem for p in paths])
    )
    assert mosaic.shape[:2] == (2 * (224 + 18 + 4) + 4 + CAPTION_PX, 4 * (224 + 4) + 4)
    assert np.array_equal(mosaic[4 : 4 + 224, 4 : 4 + 224], patches[5])
    assert np.array_equal(mosaic[4 : 4 + 224, 232 : 232 + 224], patches[1])


def test_save_png_writes_atomically_and_cleans_up(tmp_path: Path) -> None:
    picture = attention_overlay(_thumbnail(), 2.0, COORDS, 20, SCORES)
    target = save_png(picture, tmp_path / "out" / "heatmap.png")
    assert target == tmp_path / "out" / "heatmap.png"
    assert np.array_equal(np.asarray(Image.open(target)), np.asarray(picture))
    save_png(np.zeros((5, 7, 3), np.uint8), target)  # replaces the previous file
    assert Image.open(target).size == (7, 5)
    (tmp_path / "occupied.png").mkdir()
    with pytest.raises(OSError):
        save_png(picture, tmp_path / "occupied.png")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["heatmap.png", "occupied.png", "out"]


def test_100k_tiles_overlay_stays_under_the_size_limit_with_exact_colours() -> None:
    # 400 x 250 tiles of 80 level-0 px at downsample 20: 4-px tiles over 1600 x 1000 px
    xs, ys = np.meshgrid(np.arange(400) * 80, np.arange(250) * 80)
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)
    scores = np.arange(len(coords), dtype=np.float64)  # the last tile (bottom right) is the top
    thumbnail = np.full((1100, 1700, 3), 230, dtype=np.uint8)
    picture = attention_overlay(thumbnail, 20.0, coords, 80, scores, alpha=1.0)
    assert picture.size == (1700 + COLORBAR_PANEL_PX, 1100 + CAPTION_PX)
    pixels = np.asarray(picture)
    assert (pixels[996:1000, 1596:1600] == INFERNO(1.0, bytes=True)[:3]).all()
    assert (pixels[0:4, 0:4] == INFERNO(0.0, bytes=True)[:3]).all()
    assert (pixels[1000:1100, :1700] == 230).all()
    assert (pixels[:1000, 1600:1700] == 230).all()
