"""DICOM WSI through wsidicom: the real file openslide refuses, folders of instances, and
files written here with known pixels."""

import h5py
import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.pixels import pixel_array

from tests import tiny_encoders
from tests.conftest import TISSUE_TILES, read_manifest, shared_file, write_reference_slide
from tests.dicom_slides import write_dicom_level, write_dicom_pyramid
from wsi.cli import main
from wsi.errors import MissingMppError
from wsi.io.slide import open_slide
from wsi.pipeline.batch import find_slides

tiny_encoders.register()

REAL = "small_real_wsis/pathml_small_dicom.dcm"
REAL_TILES = 80  # tissue tiles of 224 px at 0.5 µm/px (its QC picture shows them on tissue)


@pytest.fixture(scope="module")
def reference_rgb(tmp_path_factory) -> np.ndarray:
    """Level 0 of the reference layout at 0.5 µm/px (2048 x 1536 px, 4 x 3 tissue tiles)."""
    path = write_reference_slide(tmp_path_factory.mktemp("ref") / "ref.tiff", 0.5)
    return tifffile.imread(path, key=0)


def test_real_dicom_openslide_refuses_reads_like_pydicom():
    path = shared_file(REAL)
    with open_slide(path) as slide:
        assert slide.backend == "wsidicom" and slide.dimensions == (3236, 2638)
        with pytest.raises(MissingMppError, match="--slide-mpp"):
            slide.mpp  # noqa: B018 - no pixel spacing in this file
        repaired = slide.properties["dicom.repaired"].split(",")
        assert {"ImageType", "PhotometricInterpretation", "frame-order"} <= set(repaired)
        ds = pydicom.dcmread(path)  # 42 frames of 500 x 500 px, column by column
        with pytest.warns(UserWarning):  # pydicom too sees the JFIF frames labelled RGB
            frames = {i: pixel_array(ds, index=i) for i in (1, 6)}
        # frame 1 is column 0, row 1; frame 6 column 1, row 0 (6 rows of frames); the two
        # JPEG decoders' YCbCr → RGB round a few pixels differently
        for (x, y), frame in (((0, 500), frames[1]), ((500, 0), frames[6])):
            diff = np.abs(slide.read_region((x, y), 0, (500, 500)).astype(int) - frame)
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-4
        # past the image: white, as openslide
        edge = slide.read_region((3200, 2600), 0, (100, 100))
        assert (edge[40:, :] == 255).all() and (edge[:, 40:] == 255).all()
    with open_slide(path, mpp=0.5) as slide:
        assert slide.mpp == 0.5 and slide.mpp_source == "argument"


@pytest.mark.slow
def test_real_dicom_tiles_through_the_cli(tmp_path):
    path = shared_file(REAL)
    out = tmp_path / "out"
    assert main(["tile", str(path), "--out", str(out), "--slide-mpp", "0.5", "--quiet"]) == 0
    row = read_manifest(out)["pathml_small_dicom"]
    assert row["status"] == "ok" and float(row["mpp"]) == 0.5 and row["mpp_source"] == "argument"
    # 3236 x 2638 px at 0.5 µm/px: 14 x 11 tiles of 224 px; tissue covers about 40 % of them
    assert int(row["n_tiles"]) == REAL_TILES
    with h5py.File(out / "patches" / "pathml_small_dicom.h5") as f:
        coords = f["coords"][:]
    assert coords.shape == (REAL_TILES, 2) and coords.max() < 3236
    assert (out / "qc" / "pathml_small_dicom.png").stat().st_size > 0
    # without --slide-mpp the slide fails with the usual missing-mpp message
    assert main(["tile", str(path), "--out", str(tmp_path / "nompp"), "--quiet"]) == 1
    assert "--slide-mpp" in read_manifest(tmp_path / "nompp")["pathml_small_dicom"]["error"]


@pytest.mark.slow
def test_real_dicom_embeds_through_the_cli(tmp_path):
    path = shared_file(REAL)
    out = tmp_path / "out"
    args = ["embed", str(path), "--out", str(out), "--slide-mpp", "0.5", "--encoder", "tiny"]
    assert main([*args, "--workers", "0", "--quiet"]) == 0
    row = read_manifest(out)["pathml_small_dicom"]
    assert row["status"] == "ok" and int(row["n_tiles"]) == REAL_TILES
    with h5py.File(out / "features" / "tiny" / "pathml_small_dicom.h5") as f:
        assert f["features"].shape == (REAL_TILES, tiny_encoders.TINY_DIM)
        assert np.isfinite(f["features"][:]).all()


def test_dicom_folder_is_one_slide_with_exact_pixels(tmp_path, reference_rgb):
    folder = write_dicom_pyramid(tmp_path / "slides" / "case1", reference_rgb, spacing_mm=0.0005)
    assert find_slides([tmp_path / "slides"]) == [folder]
    assert find_slides([folder]) == [folder]
    with open_slide(folder) as slide:
        assert slide.backend == "wsidicom" and slide.slide_id == "case1"
        assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == "dicom-pixel-spacing"
        assert slide.level_dimensions == ((2048, 1536), (1024, 768))
        assert slide.level_downsamples == (1.0, 2.0)
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (2048, 1536)), reference_rgb)
        expected = reference_rgb[1000:1100, 300:500].reshape(50, 2, 100, 2, 3).mean(axis=(1, 3))
        got = slide.read_region((300, 1000), 1, (100, 50))
        np.testing.assert_array_equal(got, np.round(expected).astype(np.uint8))
    out = tmp_path / "out"
    assert main(["tile", str(tmp_path / "slides"), "--out", str(out), "--quiet"]) == 0
    row = read_manifest(out)["case1"]
    assert int(row["n_tiles"]) == TISSUE_TILES and row["mpp_source"] == "dicom-pixel-spacing"


def test_non_standard_dicom_without_spacing(tmp_path):
    # textured everywhere (as real glass is), with partial edge frames (1500 x 2000 px in
    # 256-px frames): the frame order can be told from where the padding lies
    rgb = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    path = write_dicom_level(
        tmp_path / "legacy.dcm", rgb, spacing_mm=None, image_type=False, column_major=True
    )
    with open_slide(path) as slide:
        assert slide.backend == "wsidicom"
        assert "frame-order" in slide.properties["dicom.repaired"]
        with pytest.raises(MissingMppError):
            slide.mpp  # noqa: B018 - the placeholder spacing never shows as a scale
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (2000, 1500)), rgb)
    with open_slide(path, mpp=0.25) as slide:
        assert slide.mpp == 0.25


def test_separate_dicom_slides_in_one_folder_stay_separate(tmp_path, reference_rgb):
    small = np.ascontiguousarray(reference_rgb[:512, :512])
    a = write_dicom_level(tmp_path / "a.dcm", small)
    b = write_dicom_level(tmp_path / "b.dcm", small)  # another series: another slide
    assert find_slides([tmp_path]) == [a, b]


def test_dicom_folder_quickhash_changes_with_an_instance(tmp_path, reference_rgb):
    from wsi.io.slide import quickhash

    folder = write_dicom_pyramid(tmp_path / "s", np.ascontiguousarray(reference_rgb[:512, :512]))
    before = quickhash(folder)
    write_dicom_level(folder / "level1.dcm", np.zeros((256, 256, 3), np.uint8))
    assert quickhash(folder) != before
