import os
import pickle

import numpy as np
import pytest
from PIL import Image

import wsi
from tests.conftest import shared_file, write_reference_slide
from wsi.errors import InvalidMppError, MissingMppError, SlideNotFoundError, SlideOpenError
from wsi.synthetic.slides import write_flat_image


def test_generic_tiff_geometry_and_mpp(slide_025):
    with wsi.open_slide(slide_025) as s:
        assert s.dimensions == (4096, 3072)
        assert s.level_count == 3
        assert s.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
        assert (s.mpp, s.mpp_source) == (pytest.approx(0.25), "openslide")
        assert s.vendor == "generic-tiff" and s.backend == "openslide"
        assert s.slide_id == "s025"
        assert s.best_level_for_mpp(0.5) == 0
        assert s.best_level_for_mpp(1.0) == 1
        assert s.best_level_for_mpp(0.999) == 0
        assert s.best_level_for_mpp(100) == 2


def test_svs_geometry_and_associated_images(slide_050):
    with wsi.open_slide(slide_050) as s:
        assert s.vendor == "aperio"
        assert s.dimensions == (2048, 1536)
        assert s.mpp == pytest.approx(0.5)
        assert "thumbnail" in s.associated_images


def test_read_region_and_thumbnail_pixels(slide_025):
    with wsi.open_slide(slide_025) as s:
        inside = s.read_region((1200, 600), 0, (64, 32))
        assert inside.shape == (32, 64, 3) and inside.dtype == np.uint8
        assert np.abs(inside.mean(axis=(0, 1)) - (200, 110, 170)).max() < 4
        outside = s.read_region((4000, 3000), 0, (200, 200))  # partly past the edge
        assert outside.min() >= 230  # glass, and white past the slide
        thumb = s.read_thumbnail(32)
        assert thumb.shape == (96, 128, 3)
        # tissue spans level-0 x 896..2688 → thumbnail columns 28..84
        assert np.abs(thumb[20, 40].astype(int) - (200, 110, 170)).max() < 6
        assert thumb[5, 5].min() > 230
        assert s.get_thumbnail(256).size == (256, 192)


def test_thumbnail_is_streamed_in_strips_with_the_same_result(slide_025, monkeypatch):
    with wsi.open_slide(slide_025) as s:
        whole = s.read_thumbnail(5.3)
        monkeypatch.setattr("wsi.io.slide._STRIP_PIXELS", 5_000)
        strips = s.read_thumbnail(5.3)
    assert whole.shape == strips.shape == (580, 773, 3)
    # the last row straddles the slide edge, where glass meets white padding
    assert np.abs(whole[:-1].astype(int) - strips[:-1]).max() <= 1


def test_pickle_reopens_by_path_with_override(tmp_path):
    path = write_reference_slide(tmp_path / "nompp.tiff", 0.25, write_mpp=False)
    s = wsi.open_slide(path, mpp=0.2525)
    clone = pickle.loads(pickle.dumps(s))
    assert clone.mpp == 0.2525 and clone.mpp_source == "argument"
    assert np.array_equal(clone.read_region((0, 0), 0, (8, 8)), s.read_region((0, 0), 0, (8, 8)))


def test_missing_mpp_is_lazy_and_clear(tmp_path):
    path = write_reference_slide(tmp_path / "nompp.tiff", 0.25, write_mpp=False)
    s = wsi.open_slide(path)
    assert s.mpp_or_none is None and s.mpp_source is None
    with pytest.raises(MissingMppError, match=r"nompp.tiff: no mpp in metadata.*--slide-mpp"):
        _ = s.mpp


def test_absurd_mpp_argument_fails_at_open(slide_025):
    with pytest.raises(InvalidMppError, match="s025.tiff"):
        wsi.open_slide(slide_025, mpp=0)


def test_flat_tiff_opens_through_fallback(tmp_path):
    rgb = np.zeros((300, 500, 3), np.uint8)
    rgb[:, 250:] = (200, 100, 150)
    path = write_flat_image(tmp_path / "flat.tif", rgb, mpp=0.5)
    with wsi.open_slide(path) as s:
        assert s.backend == "flat-image"
        assert s.dimensions == (500, 300) and s.level_count == 1
        assert (s.mpp, s.mpp_source) == (pytest.approx(0.5), "tiff-resolution")
        assert np.array_equal(s.read_region((240, 10), 0, (20, 5)), rgb[10:15, 240:260])
        assert s.read_thumbnail(10).shape == (30, 50, 3)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda d: d / "missing.svs", SlideNotFoundError, "no such file"),
        (lambda d: (d / "dir.svs").mkdir() or d / "dir.svs", SlideNotFoundError, "is a directory"),
        (
            lambda d: (d / "empty.svs").write_bytes(b"") or d / "empty.svs",
            SlideOpenError,
            "empty file",
        ),
        (
            lambda d: (d / "text.svs").write_text("not a slide\n") and d / "text.svs",
            SlideOpenError,
            "text.svs: neither openslide nor the image fallback can read it",
        ),
    ],
)
def test_bad_paths(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        wsi.open_slide(make(tmp_path))


def test_truncated_tiff(slide_025, tmp_path):
    data = slide_025.read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(wsi.SlideError, match="cut.tiff"):
        s = wsi.open_slide(cut)
        s.read_thumbnail(4)


def test_symlink_loop(tmp_path):
    loop = tmp_path / "loop.svs"
    os.symlink(loop, loop)
    with pytest.raises(SlideNotFoundError, match="symbolic link loop"):
        wsi.open_slide(loop)


def test_real_tcga_svs_without_mpp():
    path = shared_file("small_real_wsis/tcga-cr-7395-01a-01-ts1.svs")
    with wsi.open_slide(path) as s:
        assert s.dimensions == (4443, 3567) and s.vendor == "aperio"
        with pytest.raises(MissingMppError, match="tcga-cr-7395-01a-01-ts1.svs.*--slide-mpp"):
            _ = s.mpp
    with wsi.open_slide(path, mpp=0.25) as s:
        assert s.best_level_for_mpp(0.5) == 1  # level 1 is 2.0005x: 0.50013 µm/px
        patch = s.read_patch(1000, 1000, 448.0, 224, 1)
        assert patch.shape == (224, 224, 3)


def test_real_flat_tiff_through_fallback():
    path = shared_file("small_real_wsis/kidney-48-5.tif")
    with wsi.open_slide(path) as s:
        assert s.backend == "flat-image" and s.dimensions == (1493, 901)


# --------------------------------------------------------------------------- RGBA → RGB


def test_rgba_is_composited_on_white_as_pil_does() -> None:
    from wsi.io.readers import rgba_image_to_rgb, rgba_to_rgb
    from wsi.viz.qc import as_rgb

    rgba = np.random.default_rng(0).integers(0, 256, (64, 48, 4), dtype=np.uint8)
    rgba[:8, :, 3] = 255  # opaque, fully transparent and partial pixels
    rgba[8:16, :, 3] = 0
    white = Image.new("RGBA", (48, 64), (255, 255, 255, 255))
    pil = np.asarray(Image.alpha_composite(white, Image.fromarray(rgba, "RGBA")).convert("RGB"))
    ours = rgba_to_rgb(rgba)
    assert ours.dtype == np.uint8 and ours.shape == (64, 48, 3)
    assert np.abs(ours.astype(int) - pil).max() <= 1
    assert (ours[:8] == rgba[:8, :, :3]).all() and (ours[8:16] == 255).all()
    # the exact values every path gives (reader arrays, reader images, QC pictures)
    assert rgba_to_rgb(np.array([[[10, 20, 30, 128], [200, 100, 0, 1]]], np.uint8)).tolist() == [
        [[132, 137, 142], [255, 254, 254]]
    ]
    assert (np.asarray(rgba_image_to_rgb(Image.fromarray(rgba, "RGBA"))) == ours).all()
    assert (as_rgb(rgba) == ours).all()
    assert rgba_to_rgb(np.zeros((0, 5, 4), np.uint8)).shape == (0, 5, 3)


def test_slide_and_reader_reprs_are_one_line_with_size_and_scale(tmp_path) -> None:
    with wsi.open_slide(write_reference_slide(tmp_path / "ref.tiff", 0.5)) as slide:
        w, h = slide.dimensions
        text = repr(slide)
        assert "\n" not in text and f"{w}x{h}" in text and "0.5 µm/px" in text
        assert "3 levels" in text
        assert repr(slide._reader) == f"<OpenSlideReader 'ref.tiff' {w}×{h} px, 3 levels>"
    flat = write_flat_image(tmp_path / "flat.tif", np.zeros((40, 60, 3), np.uint8), mpp=0.5)
    with wsi.open_slide(flat) as slide:
        assert repr(slide._reader) == "<FlatImageReader 'flat.tif' 60×40 px, 1 level>"


def test_quickhash_reads_an_unchanged_file_once_and_a_changed_one_again(tmp_path, monkeypatch):
    import builtins
    import os

    from wsi.io.slide import quickhash

    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 3_000_000)
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(
        builtins, "open", lambda f, *a, **k: opened.append(f) or real_open(f, *a, **k)
    )
    first = quickhash(path)
    assert quickhash(path) == first and len(opened) == 1
    path.write_bytes(b"y" * 3_000_000)
    os.utime(path, ns=(1, 1))  # a rewrite in place: same size, new mtime
    assert quickhash(path) != first and len(opened) == 2


def test_thumbnail_within_half_a_pixel_of_a_level_is_that_level_1_to_1(tmp_path, monkeypatch):
    from wsi.synthetic.slides import Region, write_slide

    path = write_slide(
        tmp_path / "odd.tiff",
        width=2001,
        height=1501,
        mpp=0.5,
        regions=[Region(300, 200, 1200, 900, shape="ellipse")],
        downsamples=(1, 4),
    )
    resizes = []
    original = Image.Image.resize
    monkeypatch.setattr(
        Image.Image, "resize", lambda self, *a, **k: resizes.append(a) or original(self, *a, **k)
    )
    with wsi.open_slide(path) as s:
        ds = s.level_downsamples[1]
        assert ds != 4.0  # 501 x 376 px: 3.993, not 4
        w1, h1 = s.level_dimensions[1]
        # 0.2 output px of drift over the long side: the level's pixels, no resampling pass
        thumb = s.read_thumbnail(ds * (1 + 0.2 / w1))
        assert np.array_equal(thumb, s.read_region((0, 0), 1, (w1, h1)))
        assert resizes == []
        # 2 px of drift: resampled
        far = s.read_thumbnail(ds * (1 + 2.0 / w1))
        assert far.shape[1] == w1 - 2 and len(resizes) > 0
