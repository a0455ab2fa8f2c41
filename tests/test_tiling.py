import numpy as np
import pytest

import wsi
from tests.conftest import TISSUE_TILES, shared_file, write_reference_slide
from wsi.errors import InvalidParameterError, MissingMppError, SlideTooSmallError
from wsi.synthetic.slides import Region, write_slide


def _grid(path, **kwargs):
    slide = wsi.open_slide(path)
    return wsi.tile(slide, **kwargs)


def test_exact_tiles_from_a_40x_base(slide_025):
    grid = _grid(slide_025, mpp=0.5, size=224)
    assert len(grid) == TISSUE_TILES
    xs, ys = np.unique(grid.coords[:, 0]), np.unique(grid.coords[:, 1])
    # tissue block 224..672 µm x 112..448 µm at 0.25 µm/px = x 896..2688, y 448..1792
    assert xs.tolist() == [896, 1344, 1792, 2240]
    assert ys.tolist() == [448, 896, 1344]
    assert grid.coords.dtype == np.int64 and grid.coords.shape == (12, 2)
    assert grid.size_level0 == pytest.approx(448.0)
    assert grid.level == 0  # level 1 is 1.0 µm/px, coarser than the target
    assert grid.achieved_mpp == pytest.approx(0.5)
    assert grid.tissue_fraction.min() > 0.9


def test_same_microns_from_a_20x_base(slide_025, slide_050):
    g40 = _grid(slide_025, mpp=0.5, size=224)
    g20 = _grid(slide_050, mpp=0.5, size=224)
    assert len(g20) == len(g40) == TISSUE_TILES
    assert np.array_equal(g40.coords, 2 * g20.coords)
    assert g20.size_level0 == pytest.approx(224.0) and g20.level == 0
    assert g20.tile_size_um == g40.tile_size_um == pytest.approx(112.0)
    um40 = g40.coords * 0.25
    um20 = g20.coords * 0.5
    assert np.array_equal(um40, um20)
    a, b = g40.read(0), g20.read(0)
    assert a.shape == b.shape == (224, 224, 3)
    assert np.abs(a.astype(int) - b).mean() < 3  # same tissue, same µm


@pytest.mark.parametrize("base", [0.2525, 0.263])
def test_non_round_scanner_mpp_keeps_exact_microns(tmp_path, base):
    path = write_reference_slide(tmp_path / "odd.tiff", base)
    grid = _grid(path, mpp=0.5, size=224)
    assert grid.size_level0 == pytest.approx(224 * 0.5 / base)
    assert grid.achieved_mpp == pytest.approx(0.5, rel=1e-9)
    assert grid.attrs()["patch_size_level0"] == round(224 * 0.5 / base)
    # tiles sit every 112 µm: coordinates in µm are multiples of 112 within half a pixel
    um = grid.coords * base
    assert np.abs(um / 112 - np.round(um / 112)).max() * 112 <= base / 2 + 1e-9
    assert 6 <= len(grid) <= TISSUE_TILES
    assert grid.read(0).shape == (224, 224, 3)


def test_reads_at_the_coarsest_level_at_or_finer_than_target(tmp_path):
    path = write_reference_slide(tmp_path / "l.tiff", 0.25, downsamples=(1, 2, 8))
    grid = _grid(path, mpp=0.5, size=224)
    assert grid.level == 1 and grid.patch_size_level == 224
    slide = grid.slide
    x, y = grid.coords[0]
    direct = slide.read_region((int(x), int(y)), 1, (224, 224))
    assert np.array_equal(grid.read(0), direct)  # same scale: no resampling at all
    level0 = slide.read_patch(float(x), float(y), 448.0, 224, 0)
    assert np.abs(level0.astype(int) - direct).mean() < 2


def test_overlap_and_min_tissue(slide_050):
    slide = wsi.open_slide(slide_050)
    mask = wsi.detect_tissue(slide)
    all_tiles = wsi.tile(slide, mpp=0.5, size=224, min_tissue=0.0, mask=mask)
    assert len(all_tiles) == 9 * 6  # 2048/224 = 9 columns, 1536/224 = 6 rows
    over = wsi.tile(slide, mpp=0.5, size=224, overlap=112, min_tissue=0.5, mask=mask)
    assert over.stride_level0 == pytest.approx(112.0)
    assert np.diff(np.unique(over.coords[:, 0])).tolist() == [112] * (
        len(np.unique(over.coords[:, 0])) - 1
    )
    assert len(over) > 2 * TISSUE_TILES
    strict = wsi.tile(slide, mpp=0.5, size=224, min_tissue=1.0, mask=mask)
    assert len(strict) <= TISSUE_TILES


def test_grid_iterates_patches(slide_050):
    grid = _grid(slide_050, mpp=1.0, size=64)
    patches = list(grid)
    assert len(patches) == len(grid) > 0
    assert all(p.shape == (64, 64, 3) and p.dtype == np.uint8 for p in patches)
    inner = [p for p, f in zip(patches, grid.tissue_fraction, strict=True) if f == 1.0]
    assert len(inner) >= 8  # edge tiles straddle glass; the inner ones are pure tissue
    assert np.abs(np.mean([p.mean(axis=(0, 1)) for p in inner], axis=0) - (200, 110, 170)).max() < 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mpp": 0}, "tile mpp"),
        ({"mpp": float("nan")}, "tile mpp"),
        ({"size": 0}, "tile size"),
        ({"overlap": 224}, "overlap"),
        ({"min_tissue": 1.5}, "min_tissue"),
    ],
)
def test_bad_parameters(slide_050, kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        _grid(slide_050, **kwargs)


def test_blank_slide_gives_an_empty_grid(tmp_path):
    path = write_slide(tmp_path / "blank.tiff", width=1024, height=1024, mpp=0.5)
    grid = _grid(path)
    assert len(grid) == 0 and grid.coords.shape == (0, 2)


def test_slide_smaller_than_one_tile(tmp_path):
    path = write_slide(
        tmp_path / "tiny.tiff",
        width=150,
        height=100,
        mpp=0.5,
        regions=[Region(0, 0, 150, 100)],
        downsamples=(1,),
    )
    with pytest.raises(SlideTooSmallError, match=r"tiny.tiff: the slide is 150x100 px = 75x50 µm"):
        _grid(path, mpp=0.5, size=224)


def test_no_mpp_fails_with_the_fix(tmp_path):
    path = write_reference_slide(tmp_path / "nompp.tiff", 0.25, write_mpp=False)
    with pytest.raises(MissingMppError, match="--slide-mpp"):
        _grid(path)


def test_attrs_follow_clam_and_trident(slide_025):
    attrs = _grid(slide_025).attrs()
    assert attrs["patch_size"] == 448 and attrs["patch_level"] == 0
    assert attrs["patch_size_level0"] == 448 and attrs["target_patch_size"] == 224
    assert attrs["level0_width"] == 4096 and attrs["level0_height"] == 3072
    assert attrs["target_mpp"] == 0.5 and attrs["mpp_level0"] == pytest.approx(0.25)
    assert attrs["name"] == "s025" and attrs["overlap"] == 0


def test_real_tcga_tiles_with_slide_mpp():
    path = shared_file("small_real_wsis/tcga-cr-7395-01a-01-ts1.svs")
    slide = wsi.open_slide(path, mpp=0.25)
    grid = wsi.tile(slide, mpp=0.5, size=224)
    assert grid.level == 1
    assert 20 < len(grid) < 400
    patch = grid.read(len(grid) // 2)
    assert patch.shape == (224, 224, 3) and patch.std() > 10  # real tissue has texture


# native scale: a level within mpp_tolerance of the target is read 1:1 -----------------------
def _openslide_box(path, grid, i):
    """openslide's read_region of tile i's box at the grid's level, composited on white
    (openslide's RGBA is transparent past the slide's edge)."""
    import openslide

    from wsi.io.readers import rgba_to_rgb

    x, y = (int(v) for v in grid.coords[i])
    with openslide.OpenSlide(str(path)) as o:
        region = o.read_region((x, y), grid.level, (grid.size, grid.size))
    return rgba_to_rgb(np.asarray(region))


@pytest.mark.parametrize(
    "flavour, downsamples, level",
    [
        ("svs", (1, 4, 16), 0),
        ("tiff", (1, 4, 16), 0),
        ("svs", (1, 2, 8), 1),
    ],
)
@pytest.mark.parametrize("fast_reads", [True, False])
def test_scan_within_tolerance_gives_the_scanners_pixels(
    tmp_path, flavour, downsamples, level, fast_reads
):
    base = 0.499 / downsamples[level]  # the read level is 0.499 µm/px, 0.2 % finer than 0.5
    path = write_reference_slide(
        tmp_path / f"n.{flavour}", base, flavour=flavour, downsamples=downsamples, texture=1.0
    )
    slide = wsi.open_slide(path, fast_reads=fast_reads)
    grid = wsi.tile(slide, mpp=0.5, size=224)  # default tolerance 0.02
    assert grid.native and grid.level == level and grid.mpp_tolerance == 0.02
    assert grid.size_level0 == 224 * downsamples[level]
    assert grid.achieved_mpp == pytest.approx(0.499, rel=1e-9)
    assert grid.tile_size_um == pytest.approx(224 * 0.499)
    attrs = grid.attrs()
    assert attrs["achieved_mpp"] == pytest.approx(0.499) and attrs["target_mpp"] == 0.5
    assert attrs["patch_size"] == 224 and attrs["patch_level"] == level
    assert attrs["patch_size_level0"] == 224 * downsamples[level]
    assert grid.params()["mpp_tolerance"] == 0.02 and grid.params()["native"] is True
    assert len(grid) == TISSUE_TILES
    for i in (0, len(grid) // 2, len(grid) - 1):
        assert np.array_equal(grid.read(i), _openslide_box(path, grid, i))  # bit-identical


def test_native_tiles_on_a_level_with_a_fractional_downsample(tmp_path):
    """Level 1 of a 4003 x 3001 px slide is 1001 x 751 px (downsample 3.9975): the fast
    reader returns that level's stored pixels from the nearest level pixel; the openslide
    path returns openslide's read_region of the box (which openslide shifts by a sub-pixel)."""
    import openslide

    path = write_slide(
        tmp_path / "frac.svs",
        width=4003,
        height=3001,
        mpp=0.12475,
        regions=[Region(100, 100, 3800, 2800, texture=12)],
        flavour="svs",
        downsamples=(1, 4, 16),
    )
    fast = wsi.tile(wsi.open_slide(path), mpp=0.5, size=224, min_tissue=0)
    plain = wsi.tile(wsi.open_slide(path, fast_reads=False), mpp=0.5, size=224, min_tissue=0)
    assert fast.native and fast.level == 1 and fast.slide.patch_backend == "fast-tiff"
    ds = fast.level_downsample
    assert ds == pytest.approx(3.9975, abs=1e-4) and fast.size_level0 == 224 * ds
    with openslide.OpenSlide(str(path)) as o:
        level1 = np.asarray(o.read_region((0, 0), 1, o.level_dimensions[1]).convert("RGB"))
    for i in range(len(fast)):
        ix, iy = (round(v / ds) for v in fast.coords[i])
        assert np.array_equal(fast.read(i), level1[iy : iy + 224, ix : ix + 224])
        assert np.array_equal(plain.read(i), _openslide_box(path, plain, i))


def test_tolerance_zero_resamples_to_exactly_the_target(tmp_path):
    path = write_reference_slide(tmp_path / "n.svs", 0.499, flavour="svs", texture=1.0)
    slide = wsi.open_slide(path)
    grid = wsi.tile(slide, mpp=0.5, size=224, mpp_tolerance=0)
    assert not grid.native and grid.level == 0
    assert grid.size_level0 == pytest.approx(224 * 0.5 / 0.499)
    assert grid.achieved_mpp == pytest.approx(0.5, rel=1e-9) and grid.tile_size_um == 112.0
    patch, native = grid.read(0), _openslide_box(path, grid, 0)
    assert not np.array_equal(patch, native)  # resampled: 224.45 px squeezed into 224
    assert np.abs(patch.astype(int) - native).mean() < 10


def test_tolerance_leaves_far_scans_and_exact_scans_unchanged(tmp_path):
    # 0.25 µm/px with levels 1, 4, 16: no level within 2 % of 0.5 → the exact path, level 0
    far = wsi.open_slide(write_reference_slide(tmp_path / "far.tiff", 0.25, texture=1.0))
    a, b = wsi.tile(far, mpp=0.5, size=224), wsi.tile(far, mpp=0.5, size=224, mpp_tolerance=0)
    assert not a.native and a.level == 0 and a.size_level0 == b.size_level0 == 448.0
    assert np.array_equal(a.coords, b.coords) and a.attrs() == b.attrs()
    assert np.array_equal(a.read(3), b.read(3))
    # a level exactly at the target: native and exact agree to the bit
    path = write_reference_slide(tmp_path / "ex.tiff", 0.25, downsamples=(1, 2, 8), texture=1.0)
    exact = wsi.open_slide(path)
    a, b = wsi.tile(exact, mpp=0.5, size=224), wsi.tile(exact, mpp=0.5, size=224, mpp_tolerance=0)
    assert a.native and not b.native and a.level == b.level == 1
    assert np.array_equal(a.coords, b.coords) and a.size_level0 == b.size_level0 == 448.0
    assert a.achieved_mpp == b.achieved_mpp == 0.5
    assert all(np.array_equal(a.read(i), b.read(i)) for i in range(len(a)))


def test_nearest_level_within_tolerance_wins(tmp_path):
    # 0.2475 µm/px, levels 1, 2, 8: level 1 is 0.495 µm/px (1 % off 0.5) → native at 1%
    path = write_reference_slide(tmp_path / "l.tiff", 0.2475, downsamples=(1, 2, 8))
    slide = wsi.open_slide(path)
    assert wsi.tile(slide, mpp=0.5, size=224).level == 1
    assert not wsi.tile(slide, mpp=0.5, size=224, mpp_tolerance=0.005).native  # 1 % > 0.5 %
    with pytest.raises(InvalidParameterError, match="mpp_tolerance"):
        wsi.tile(slide, mpp=0.5, size=224, mpp_tolerance=-0.1)
