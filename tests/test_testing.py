"""The synthetic slide writer: what openslide sees in the files it writes.

JPEG tolerances (quality 90, YCbCr 2x2, measured): a flat colour decodes within 1 level
per channel; textured tissue (std 12) within 8 levels of ``render()`` per pixel away from
edges, mean error ~1.2.
"""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile

from wsi.errors import InvalidParameterError
from wsi.synthetic import slides as testing
from wsi.synthetic.slides import (
    GLASS,
    PenMark,
    Region,
    render,
    tissue_fraction,
    write_flat_image,
    write_slide,
)

FLAT_TOL = 2  # flat colours through JPEG: measured max error 1
TEXTURE_TOL = 10  # textured tissue through JPEG, per pixel, interior: measured max 8

TISSUE = Region(512, 512, 1536, 1024, color=(200, 110, 170), texture=12.0)
FLAT = Region(2304, 256, 512, 512, color=(120, 60, 140), texture=0.0)
HOLE = Region(1024, 768, 256, 256, hole=True)
ELLIPSE = Region(256, 1280, 1024, 512, shape="ellipse", color=(170, 90, 150), texture=0.0)
PEN = PenMark(2200, 1700, 2900, 1700, width=40, color=(30, 60, 160))
REGIONS = (TISSUE, FLAT, HOLE, ELLIPSE)


def read(slide: openslide.OpenSlide, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
    return np.asarray(slide.read_region((x, y), level, (w, h)).convert("RGB")).astype(np.int32)


@pytest.fixture(scope="module", params=["tiff", "svs"])
def slide(request, tmp_path_factory):
    flavour = request.param
    path = write_slide(
        tmp_path_factory.mktemp(flavour) / f"s.{flavour}",
        width=3072,
        height=2048,
        mpp=0.5,
        regions=REGIONS,
        pen_marks=(PEN,),
        flavour=flavour,
        objective_power=20 if flavour == "svs" else None,
    )
    with openslide.OpenSlide(path) as s:
        yield flavour, s


def test_levels_and_mpp(slide):
    flavour, s = slide
    assert s.level_count == 3
    assert s.level_dimensions == ((3072, 2048), (768, 512), (192, 128))
    assert s.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
    assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
    assert float(s.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.5)
    assert s.properties["openslide.level[0].tile-width"] == "256"
    vendor = s.properties[openslide.PROPERTY_NAME_VENDOR]
    assert vendor == ("aperio" if flavour == "svs" else "generic-tiff")


def test_svs_metadata_and_thumbnail(slide):
    flavour, s = slide
    if flavour != "svs":
        assert "aperio.MPP" not in s.properties
        assert openslide.PROPERTY_NAME_OBJECTIVE_POWER not in s.properties
        return
    assert float(s.properties["aperio.MPP"]) == pytest.approx(0.5)
    assert s.properties["aperio.AppMag"] == "20"
    assert s.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "20"
    assert set(s.associated_images) == {"thumbnail"}
    thumb = np.asarray(s.associated_images["thumbnail"].convert("RGB")).astype(np.int32)
    assert thumb.shape == (683, 1024, 3)  # 3072 x 2048 / 3
    # glass corner and flat tissue, at 1/3 scale
    assert np.abs(thumb[5, 5] - GLASS).max() <= FLAT_TOL
    assert np.abs(thumb[170, 850] - FLAT.color).max() <= FLAT_TOL


def test_pixels_inside_regions_outside_glass(slide):
    _, s = slide
    glass = read(s, 0, 0, 0, 256, 256)
    assert np.abs(glass - GLASS).max() <= FLAT_TOL
    flat = read(s, 2432, 384, 0, 256, 256)
    assert np.abs(flat - FLAT.color).max() <= FLAT_TOL
    hole = read(s, 1056, 800, 0, 192, 192)
    assert np.abs(hole - GLASS).max() <= FLAT_TOL
    # Textured tissue: per pixel close to the analytic render, mean equal to the colour.
    tissue = read(s, 1536, 1024, 0, 256, 256)
    expected = render(1536, 1024, 256, 256, 1, regions=REGIONS).astype(np.int32)
    assert np.abs(tissue - expected).max() <= TEXTURE_TOL
    assert np.abs(tissue.mean(axis=(0, 1)) - TISSUE.color).max() < 2.0
    assert tissue.std(axis=(0, 1)).min() > 8.0  # texture of std 12 survives JPEG


def test_ellipse_and_pen_mark(slide):
    _, s = slide
    # ellipse centre (768, 1536) is tissue; its bounding box corner is glass
    assert np.abs(read(s, 760, 1528, 0, 16, 16) - ELLIPSE.color).max() <= FLAT_TOL
    assert np.abs(read(s, 260, 1284, 0, 16, 16) - GLASS).max() <= FLAT_TOL
    # pen stroke 40 px thick centred on y = 1700
    assert np.abs(read(s, 2500, 1692, 0, 16, 16) - PEN.color).max() <= 3 * FLAT_TOL
    assert np.abs(read(s, 2500, 1740, 0, 16, 16) - GLASS).max() <= FLAT_TOL


def test_levels_agree_through_jpeg(slide):
    _, s = slide
    level0 = read(s, 1024, 1024, 0, 512, 256).astype(np.float64)
    for level, d in ((1, 4), (2, 16)):
        blocks = level0.reshape(256 // d, d, 512 // d, d, 3).mean(axis=(1, 3))
        pixels = read(s, 1024, 1024, level, 512 // d, 256 // d)
        diff = np.abs(blocks - pixels)
        assert diff.mean() < 3.0, (level, diff.mean())
        assert diff.max() < 16.0, (level, diff.max())


@pytest.mark.parametrize("d", [2, 4, 16])
def test_render_levels_agree_exactly(d):
    """Before JPEG, a level pixel is the mean of its level-0 block (up to rounding)."""
    regions = [Region(0, 0, 100_000, 10_000, color=(128, 128, 128), texture=20.0)]  # no clipping
    x0, y0 = 70_001, 3_333  # far from the origin: the texture is defined everywhere
    full = render(x0, y0, 256, 256, 1, regions=regions, seed=7).astype(np.float64)
    coarse = render(x0, y0, 256 // d, 256 // d, d, regions=regions, seed=7)
    blocks = full.reshape(256 // d, d, 256 // d, d, 3).mean(axis=(1, 3))
    assert np.abs(blocks - coarse).max() <= 1.0
    assert full.std() == pytest.approx(20.0, rel=0.25)


def test_render_texture_depends_on_seed_only():
    region = [Region(0, 0, 512, 512)]
    a = render(0, 0, 512, 512, regions=region, seed=1)
    assert np.array_equal(a, render(0, 0, 512, 512, regions=region, seed=1))
    assert not np.array_equal(a, render(0, 0, 512, 512, regions=region, seed=2))
    # a window is a crop of a larger window: texture is a function of position
    assert np.array_equal(a[100:200, 300:400], render(300, 100, 100, 100, regions=region, seed=1))


def test_tissue_fraction_exact():
    rect = Region(0, 0, 100, 50)
    assert tissue_fraction([rect], 0, 0, 100, 100) == 0.5
    assert tissue_fraction([rect, Region(0, 0, 10, 10, hole=True)], 0, 0, 100, 50) == 0.98
    pen = PenMark(0, 25, 100, 25, width=10)
    assert tissue_fraction([rect], 0, 0, 100, 50, pen_marks=[pen]) == 0.8
    ellipse = Region(0, 0, 400, 400, shape="ellipse")
    assert tissue_fraction([ellipse], 0, 0, 400, 400) == pytest.approx(np.pi / 4, abs=2e-3)


def test_tissue_fraction_matches_rendered_pixels():
    regions = [
        Region(10, 20, 300, 200, shape="ellipse", texture=0.0),
        Region(100, 50, 120, 90, hole=True),
        Region(150, 60, 40, 40, texture=0.0),
    ]
    pens = [PenMark(0, 0, 320, 240, width=9)]
    pixels = render(0, 0, 320, 240, regions=regions, pen_marks=pens)
    tissue = (pixels != GLASS).any(axis=2) & (pixels != pens[0].color).any(axis=2)
    expected = tissue_fraction(regions, 0, 0, 320, 240, pen_marks=pens)
    assert tissue.mean() == pytest.approx(expected, abs=1e-12)
    assert 0.4 < expected < 0.7


def test_no_mpp_and_objective_power_only(tmp_path):
    for flavour in ("tiff", "svs"):
        path = write_slide(
            tmp_path / f"n.{flavour}",
            width=512,
            height=512,
            mpp=None,
            flavour=flavour,
            objective_power=40 if flavour == "svs" else None,
        )
        with openslide.OpenSlide(path) as s:
            assert openslide.PROPERTY_NAME_MPP_X not in s.properties
            assert openslide.PROPERTY_NAME_MPP_Y not in s.properties
            assert "aperio.MPP" not in s.properties
            assert s.properties.get("tiff.ResolutionUnit") in (None, "none")
            if flavour == "svs":
                assert s.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "40"


def test_svs_label_and_macro(tmp_path):
    path = write_slide(
        tmp_path / "a.svs",
        width=2048,
        height=1024,
        regions=[Region(0, 0, 1024, 1024, texture=0.0)],
        flavour="svs",
        associated_images=True,
    )
    with openslide.OpenSlide(path) as s:
        assert set(s.associated_images) == {"thumbnail", "label", "macro"}
        assert s.level_count == 3
        macro = np.asarray(s.associated_images["macro"].convert("RGB")).astype(np.int32)
        assert macro.shape == (256, 512, 3)
        assert np.abs(macro[128, 100] - Region(0, 0, 1, 1).color).max() <= FLAT_TOL
        assert np.abs(macro[128, 400] - GLASS).max() <= FLAT_TOL
        assert "openslide.mpp-x" in s.properties
        assert openslide.PROPERTY_NAME_OBJECTIVE_POWER not in s.properties


def test_painter_replaces_regions(tmp_path):
    """A painter draws any level-0 window; a vertical ramp in x tells levels apart."""

    def ramp(x0, y0, w, h, d):
        centres = x0 + (np.arange(w) + 0.5) * d
        value = np.clip(centres / 16, 0, 255).astype(np.uint8)
        return np.repeat(np.broadcast_to(value, (h, w))[..., None], 3, axis=2)

    pen = PenMark(0, 100, 4096, 100, width=20, color=(0, 0, 0))
    path = write_slide(tmp_path / "p.tiff", width=4096, height=512, painter=ramp, pen_marks=[pen])
    with openslide.OpenSlide(path) as s:
        row0 = read(s, 0, 256, 0, 4096, 1)[0, :, 0]
        row1 = read(s, 0, 256, 1, 1024, 1)[0, :, 0]
        assert np.abs(row0 - np.clip((np.arange(4096) + 0.5) / 16, 0, 255)).max() <= 3
        assert np.abs(row1 - np.clip((np.arange(1024) * 4 + 2) / 16, 0, 255)).max() <= 3
        assert read(s, 1000, 95, 0, 8, 8).max() <= 4  # the pen mark drawn over the painter


@pytest.mark.parametrize("flavour", ["tiff", "svs"])
def test_bigtiff_opens(tmp_path, monkeypatch, flavour):
    """Slides past 4 GiB are BigTIFF; openslide must read both flavours that way too."""
    monkeypatch.setattr(testing, "_BIGTIFF_ABOVE_BYTES", 0)
    region = Region(256, 128, 512, 256, color=(120, 60, 140), texture=0.0)
    path = write_slide(
        tmp_path / f"b.{flavour}", width=1024, height=512, flavour=flavour, regions=[region]
    )
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
    with openslide.OpenSlide(path) as s:
        assert s.level_dimensions == ((1024, 512), (256, 128), (64, 32))
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert np.abs(read(s, 500, 250, 0, 8, 8) - region.color).max() <= FLAT_TOL


def test_small_slide_skips_tiny_levels(tmp_path):
    path = write_slide(tmp_path / "t.tiff", width=100, height=50, downsamples=(1, 4, 16, 64))
    with openslide.OpenSlide(path) as s:
        assert s.level_dimensions == ((100, 50), (25, 13), (7, 4))


def test_same_inputs_same_bytes(tmp_path):
    kwargs = {"width": 1024, "height": 768, "regions": [TISSUE], "seed": 3}
    a = write_slide(tmp_path / "a.tiff", **kwargs).read_bytes()
    assert a == write_slide(tmp_path / "b.tiff", **kwargs).read_bytes()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tile_size": 100},
        {"downsamples": (2, 4)},
        {"downsamples": (1, 4, 4)},
        {"mpp": 0.0},
        {"mpp": float("nan")},
        {"objective_power": 20},  # generic TIFF has no place for it
        {"flavour": "ndpi"},
        {"jpeg_quality": 0},
        {"regions": [Region(0, 0, 8, 8)], "painter": lambda *a: None},
        {"associated_images": True},
    ],
)
def test_invalid_parameters(tmp_path, kwargs):
    with pytest.raises(InvalidParameterError):
        write_slide(tmp_path / "x.tiff", width=64, height=64, **kwargs)
    assert not (tmp_path / "x.tiff").exists()


def test_painter_of_wrong_shape_is_named_and_leaves_no_file(tmp_path):
    with pytest.raises(InvalidParameterError, match="must return uint8"):
        write_slide(
            tmp_path / "x.tiff", width=64, height=64, painter=lambda x, y, w, h, d: np.zeros((w,))
        )
    assert not (tmp_path / "x.tiff").exists()


def test_flat_image_rejected_by_openslide_read_by_tifffile(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(300, 200, 3), dtype=np.uint8)
    path = write_flat_image(tmp_path / "flat.tif", rgb, mpp=0.5)
    with pytest.raises(openslide.OpenSlideUnsupportedFormatError):
        openslide.OpenSlide(path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert not page.is_tiled
        assert page.compression == tifffile.COMPRESSION.NONE
        assert np.array_equal(page.asarray(), rgb)
        assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        assert page.resolution == pytest.approx((20_000.0, 20_000.0))  # px/cm at 0.5 µm/px
    no_mpp = write_flat_image(tmp_path / "nompp.tif", rgb)
    with tifffile.TiffFile(no_mpp) as tif:
        assert tif.pages[0].resolutionunit == tifffile.RESUNIT.NONE
