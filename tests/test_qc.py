"""QC picture: tissue outline on the mask edge, tile grid at the scaled positions, sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from wsi.errors import InvalidParameterError
from wsi.viz.qc import (
    CAPTION_PX,
    MAX_SIDE_PX,
    TILE_GRID_RGB,
    TISSUE_OUTLINE_RGB,
    as_rgb,
    fit_thumbnail,
    qc_image,
    tile_boxes,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GREY = 200


def _is(picture: Image.Image, rgb: tuple[int, int, int]) -> np.ndarray:
    return (np.asarray(picture) == np.array(rgb, dtype=np.uint8)).all(axis=2)


def _tissue_with_hole() -> np.ndarray:
    mask = np.zeros((120, 400), dtype=bool)
    mask[30:90, 40:120] = True
    mask[50:60, 70:80] = False
    return mask


def _expected_outline() -> np.ndarray:
    """Drawn by hand: 1 px inside and 1 px outside the tissue rectangle and its hole."""
    expected = np.zeros((120, 400), dtype=bool)
    expected[[30, 89], 40:120] = True  # inner, rectangle
    expected[30:90, [40, 119]] = True
    expected[[29, 90], 40:120] = True  # outer, rectangle
    expected[30:90, [39, 120]] = True
    expected[[50, 59], 70:80] = True  # glass side of the hole
    expected[50:60, [70, 79]] = True
    expected[[49, 60], 70:80] = True  # tissue side of the hole
    expected[50:60, [69, 80]] = True
    return expected


def _grey(height: int = 120, width: int = 400) -> np.ndarray:
    return np.full((height, width, 3), GREY, dtype=np.uint8)


def test_outline_lies_exactly_on_the_mask_edges() -> None:
    picture = qc_image(
        _grey(),
        4.0,
        tissue_mask=_tissue_with_hole(),
        mask_downsample=4.0,
        coords=np.zeros((0, 2), np.int64),
        tile_size_level0=64,
    )
    green = _is(picture, TISSUE_OUTLINE_RGB)[:120, :400]
    assert green.sum() == 276 + 280 + 36 + 40
    assert np.array_equal(green, _expected_outline())
    pixels = np.asarray(picture)
    assert (pixels[75, 100] == GREY).all()  # deep in tissue
    assert (pixels[5, 5] == GREY).all()  # glass
    assert (pixels[55, 75] == GREY).all()  # middle of the hole


def test_coarser_mask_is_scaled_onto_the_thumbnail() -> None:
    coarse = _tissue_with_hole()[::2, ::2]  # same tissue at 8 level-0 px per mask px
    picture = qc_image(
        _grey(),
        4.0,
        tissue_mask=coarse,
        mask_downsample=8.0,
        coords=np.zeros((0, 2), np.int64),
        tile_size_level0=64,
    )
    green = _is(picture, TISSUE_OUTLINE_RGB)[:120, :400]
    assert np.array_equal(green, _expected_outline())


def test_mask_downsample_none_means_same_region_as_thumbnail() -> None:
    kwargs = {"coords": np.zeros((0, 2), np.int64), "tile_size_level0": 64}
    explicit = qc_image(
        _grey(), 4.0, tissue_mask=_tissue_with_hole()[::2, ::2], mask_downsample=8.0, **kwargs
    )
    inferred = qc_image(
        _grey(), 4.0, tissue_mask=_tissue_with_hole()[::2, ::2], mask_downsample=None, **kwargs
    )
    assert np.array_equal(np.asarray(explicit), np.asarray(inferred))


def test_one_tile_is_drawn_at_its_scaled_corners() -> None:
    # level-0 (160, 80), side 64, downsample 4 -> thumbnail x 40..56, y 20..36 (edges inclusive)
    picture = qc_image(
        _grey(),
        4.0,
        tissue_mask=None,
        mask_downsample=None,
        coords=np.array([[160, 80]], np.int64),
        tile_size_level0=64,
    )
    blue = _is(picture, TILE_GRID_RGB)
    for x, y in [(40, 20), (56, 20), (40, 36), (56, 36), (48, 20), (40, 28)]:
        assert blue[y, x], (x, y)
    for x, y in [(48, 28), (39, 20), (57, 36), (56, 37), (40, 19)]:
        assert not blue[y, x], (x, y)
    assert blue.sum() == 4 * 16


def test_adjacent_tiles_share_their_edge() -> None:
    picture = qc_image(
        _grey(),
        4.0,
        tissue_mask=None,
        mask_downsample=None,
        coords=np.array([[160, 80], [224, 80]], np.int64),
        tile_size_level0=64,
    )
    blue = _is(picture, TILE_GRID_RGB)
    assert blue.sum() == 2 * 33 + 3 * 15  # rows 20, 36 over x 40..72; columns 40, 56, 72
    assert blue[28, 56] and not blue[28, 55] and not blue[28, 57]


def test_grid_matches_pil_rectangles_pixel_for_pixel() -> None:
    rng = np.random.default_rng(7)
    coords = rng.integers(-200, 1700, size=(300, 2))
    picture = qc_image(
        _grey(),
        4.0,
        tissue_mask=None,
        mask_downsample=None,
        coords=coords,
        tile_size_level0=37,
    )
    reference = Image.new("L", (400, 120), 0)
    draw = ImageDraw.Draw(reference)
    for x0, y0, x1, y1 in tile_boxes(coords, 37, 4.0, 4.0).tolist():
        draw.rectangle([x0, y0, x1, y1], outline=255)
    blue = _is(picture, TILE_GRID_RGB)[:120, :400]
    assert np.array_equal(blue, np.asarray(reference) > 0)


def test_no_tiles_and_no_mask_keep_the_thumbnail() -> None:
    rng = np.random.default_rng(0)
    thumbnail = rng.integers(0, 256, size=(120, 600, 3), dtype=np.uint8)
    picture = qc_image(
        thumbnail,
        4.0,
        tissue_mask=None,
        mask_downsample=None,
        coords=np.zeros((0, 2), np.int64),
        tile_size_level0=64,
        title="slide-0",
        mpp=0.5,
    )
    assert picture.size == (600, 120 + CAPTION_PX)
    assert np.array_equal(np.asarray(picture)[:120], thumbnail)
    caption = np.asarray(picture)[120:]
    assert (caption < 100).any()  # the caption text is drawn


def test_caption_longer_than_a_narrow_thumbnail_widens_the_canvas() -> None:
    picture = qc_image(
        _grey(40, 50),
        4.0,
        tissue_mask=None,
        mask_downsample=None,
        coords=np.zeros((0, 2), np.int64),
        tile_size_level0=64,
        title="a-slide-with-a-long-name",
    )
    pixels = np.asarray(picture)
    assert picture.width > 200 and picture.height == 40 + CAPTION_PX
    assert (pixels[:40, :50] == GREY).all()
    assert (pixels[:40, 50:] == 255).all()


def test_large_thumbnail_is_shrunk_and_tiles_follow() -> None:
    thumbnail = np.full((3000, 5000, 3), 240, dtype=np.uint8)
    # scale = 2048 / 5000: 5000 x 3000 -> 2048 x 1229; level-0 px per picture px ≈ 4.88
    picture = qc_image(
        thumbnail,
        2.0,
        tissue_mask=None,
        mask_downsample=None,
        coords=np.array([[977, 977]], np.int64),
        tile_size_level0=977,
    )
    assert picture.size == (2048, 1229 + CAPTION_PX)
    blue = _is(picture, TILE_GRID_RGB)
    assert blue[200, 200] and blue[400, 400] and blue[200, 400] and blue[400, 200]
    assert not blue[300, 300] and not blue[199, 199] and not blue[401, 401]


def test_100k_tiles_draw_every_grid_line() -> None:
    # 400 x 250 tiles of 80 level-0 px at downsample 16: a 5-px grid over 2000 x 1250 px
    xs, ys = np.meshgrid(np.arange(400) * 80, np.arange(250) * 80)
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)
    assert len(coords) == 100_000
    picture = qc_image(
        _grey(1600, 2040),
        16.0,
        tissue_mask=None,
        mask_downsample=None,
        coords=coords,
        tile_size_level0=80,
    )
    assert max(picture.size) <= MAX_SIDE_PX
    assert picture.size == (2040, 1600 + CAPTION_PX)
    blue = _is(picture, TILE_GRID_RGB)
    assert np.array_equal(np.flatnonzero(blue[:, 2]), np.arange(0, 1251, 5))
    assert np.array_equal(np.flatnonzero(blue[3, :]), np.arange(0, 2001, 5))
    assert blue[:1251, :2001].sum() == 251 * 2001 + 401 * 1251 - 251 * 401


def test_100k_tiles_on_a_huge_thumbnail_stay_under_the_size_limit() -> None:
    rng = np.random.default_rng(1)
    coords = rng.integers(0, 100_000, size=(100_000, 2))
    mask = np.zeros((300, 400), dtype=bool)
    mask[50:250, 50:350] = True
    picture = qc_image(
        _grey(3000, 4000),
        25.0,
        tissue_mask=mask,
        mask_downsample=250.0,
        coords=coords,
        tile_size_level0=256,
    )
    assert max(picture.size) <= MAX_SIDE_PX
    assert picture.size == (2048, 1536 + CAPTION_PX)
    assert _is(picture, TISSUE_OUTLINE_RGB).sum() > 0
    assert _is(picture, TILE_GRID_RGB).mean() > 0.3


def test_rgba_thumbnail_is_composited_on_white() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    assert as_rgb(rgba)[0, 0].tolist() == [10, 20, 30]
    assert as_rgb(rgba)[1, 1].tolist() == [255, 255, 255]


def test_fit_thumbnail_reports_the_exact_new_scale() -> None:
    fitted = fit_thumbnail(np.zeros((1000, 3000, 3), np.uint8), 8.0, max_width=1500)
    assert fitted.rgb.shape == (500, 1500, 3)
    assert fitted.downsample_x == 16.0 and fitted.downsample_y == 16.0
    same = fit_thumbnail(np.zeros((10, 30, 3), np.uint8), 8.0)
    assert same.rgb.shape == (10, 30, 3) and same.downsample_x == 8.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"coords": np.zeros((3, 3))}, "shape"),
        ({"tile_size_level0": 0}, "tile_size_level0"),
        ({"downsample": -1.0}, "downsample"),
        ({"thumbnail": np.zeros((4, 4, 3), np.float32)}, "uint8"),
        ({"tissue_mask": np.zeros((2, 2, 2), bool)}, "2-D"),
    ],
)
def test_bad_inputs_say_what_is_wrong(kwargs: dict, message: str) -> None:
    arguments = {
        "thumbnail": _grey(),
        "downsample": 4.0,
        "tissue_mask": None,
        "mask_downsample": None,
        "coords": np.zeros((0, 2), np.int64),
        "tile_size_level0": 64,
    } | kwargs
    thumbnail = arguments.pop("thumbnail")
    downsample = arguments.pop("downsample")
    with pytest.raises(InvalidParameterError, match=message):
        qc_image(thumbnail, downsample, **arguments)


def test_real_slide_outline_follows_the_real_mask() -> None:
    slide_path = DATA / "small_real_wsis" / "tcga-cr-7395-01a-01-ts1.svs"
    mask_path = DATA / "small_real_wsis" / "histolab_tissue_masks" / "tissue-mask-tcga-cr-7395.npy"
    if not slide_path.exists() or not mask_path.exists():
        pytest.skip(f"real test data not found under {DATA}")
    import openslide

    with openslide.OpenSlide(str(slide_path)) as slide:
        width, height = slide.dimensions
        thumbnail = np.asarray(slide.get_thumbnail((width // 8, height // 8)).convert("RGB"))
    mask = np.load(mask_path)
    downsample = width / thumbnail.shape[1]
    picture = qc_image(
        thumbnail,
        downsample,
        tissue_mask=mask,
        mask_downsample=width / mask.shape[1],
        coords=np.zeros((0, 2), np.int64),
        tile_size_level0=256,
        title="tcga-cr-7395",
    )
    green = _is(picture, TISSUE_OUTLINE_RGB)[: thumbnail.shape[0], : thumbnail.shape[1]]
    # the mask seen at picture scale (nearest neighbour at pixel centres)
    resized = np.asarray(
        Image.fromarray(mask).resize(
            (thumbnail.shape[1], thumbnail.shape[0]), Image.Resampling.NEAREST
        )
    )
    padded = np.pad(resized, 2, mode="edge")
    edge = np.zeros_like(resized)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            shifted = padded[2 + dy : 2 + dy + resized.shape[0], 2 + dx : 2 + dx + resized.shape[1]]
            edge |= shifted != resized
    assert green.sum() > 200
    assert not (green & ~edge).any()  # every green pixel is within 2 px of a mask edge


def test_fitted_thumbnail_repr_is_one_line_with_size_and_scale() -> None:
    fitted = fit_thumbnail(np.zeros((100, 300, 3), np.uint8), 4.0, max_width=150)
    assert repr(fitted) == "<FittedThumbnail 150×50 px, 8×8 level-0 px per px>"
