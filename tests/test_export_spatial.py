"""wsi.export.to_spatialdata: tiles as shapes, thumbnail image, features table, µm transforms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TISSUE_TILES, TISSUE_UM
from tests.export_cohort import SLIDE_MPP, write_feature_cohort

pytest.importorskip("spatialdata", reason='SpatialData export needs pip install "wsi[spatial]"')

DIM = 8
TILE_UM = 112.0  # 224 px at 0.5 µm/px
MPP = SLIDE_MPP


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two slides (0.5 µm/px SVS and 0.25 µm/px TIFF) with random 8-d feature files."""

    root = tmp_path_factory.mktemp("spatial")
    features = write_feature_cohort(root, DIM)
    labels = root / "labels.csv"
    pd.DataFrame({"slide_id": ["a", "b"], "tumour_type": ["luad", "lusc"]}).to_csv(
        labels, index=False
    )
    return {"root": root, "features": features, "labels": labels}


@pytest.fixture(scope="module")
def written(cohort):
    """The cohort exported with square tiles, written and read back."""
    import spatialdata as sd

    from wsi.export import export_spatialdata

    path = export_spatialdata(
        cohort["features"],
        cohort["root"] / "cohort.zarr",
        labels=cohort["labels"],
        thumbnail_px=400,
    )
    return sd.read_zarr(path)


def _to(element, points: np.ndarray, system: str) -> np.ndarray:
    """``points`` (N, 2) x, y in ``element``'s own px, mapped into ``system`` by its transform."""
    from spatialdata.transformations import get_transformation

    matrix = get_transformation(element, to_coordinate_system=system).to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y")
    )
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def test_tile_centres_in_um_equal_the_anndata_export(cohort, written):
    from wsi.export import to_anndata

    adata = to_anndata(cohort["features"], hires_px=0)
    table = written.tables["table"]
    for sid, mpp in MPP.items():
        tiles = written.shapes[f"{sid}_tiles"]
        assert len(tiles) == TISSUE_TILES
        assert tiles.geom_type.eq("Polygon").all()
        np.testing.assert_allclose(tiles.area, (TILE_UM / mpp) ** 2)  # level-0 px²
        centres_um = _to(tiles, np.c_[tiles.centroid.x, tiles.centroid.y], f"{sid}_um")
        rows = (adata.obs["slide_id"] == sid).to_numpy()
        np.testing.assert_allclose(centres_um, adata.obsm["spatial_um"][rows])
        np.testing.assert_allclose(centres_um, adata.obsm["spatial"][rows] * mpp)
        # the pixel system is level-0 px itself
        np.testing.assert_allclose(
            _to(tiles, np.c_[tiles.centroid.x, tiles.centroid.y], f"{sid}_px"),
            adata.obsm["spatial"][rows],
        )
        # and every centre lies on the tissue block, in µm
        x0, y0, w, h = TISSUE_UM
        assert ((centres_um > [x0, y0]) & (centres_um < [x0 + w, y0 + h])).all()
        # the table annotates these shapes, row for row
        mine = table.obs[table.obs["region"] == f"{sid}_tiles"]
        assert sorted(mine["tile_id"]) == sorted(tiles.index)


def test_thumbnail_pixel_under_each_tile_centre_is_tissue(written):
    for sid in MPP:
        tiles = written.shapes[f"{sid}_tiles"]
        image = written.images[f"{sid}_thumbnail"]
        rgb = np.moveaxis(np.asarray(image.data), 0, -1)
        assert max(rgb.shape[:2]) == 400 and rgb.dtype == np.uint8
        centres_um = _to(tiles, np.c_[tiles.centroid.x, tiles.centroid.y], f"{sid}_um")
        # µm → thumbnail px through the inverse of the image's own transform
        from spatialdata.transformations import get_transformation

        inverse = get_transformation(image, to_coordinate_system=f"{sid}_um").inverse()
        matrix = inverse.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
        xy = np.floor(centres_um @ matrix[:2, :2].T + matrix[:2, 2]).astype(int)
        pixels = rgb[xy[:, 1], xy[:, 0]].astype(int)
        assert (pixels.max(axis=1) - pixels.min(axis=1) > 60).all()  # pink tissue
        glass = rgb[2, 2].astype(int)
        assert glass.max() - glass.min() < 10  # the corner is blank glass


def test_features_and_obs_are_those_of_the_anndata_export(cohort, written):
    from wsi.export import to_anndata

    adata = to_anndata(cohort["features"], labels=cohort["labels"], hires_px=0)
    table = written.tables["table"]
    np.testing.assert_array_equal(table.X, adata.X)
    assert table.X.dtype == np.float32
    pd.testing.assert_frame_equal(table.obs.drop(columns="region"), adata.obs)
    np.testing.assert_array_equal(table.obsm["spatial_um"], adata.obsm["spatial_um"])
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region_key"] == "region" and attrs["instance_key"] == "tile_id"
    assert sorted(attrs["region"]) == ["a_tiles", "b_tiles"]
    assert table.uns["wsi"]["encoder"] == "tiny"


def test_circles_have_the_tile_side_as_diameter(cohort):
    from wsi.export import to_spatialdata

    sdata = to_spatialdata(cohort["features"], shape="circle", thumbnail_px=100)
    circles = sdata.shapes["b_tiles"]
    assert circles.geom_type.eq("Point").all()
    np.testing.assert_allclose(circles["radius"], TILE_UM / MPP["b"] / 2)
    squares = to_spatialdata(cohort["features"], thumbnail_px=100).shapes["b_tiles"]
    np.testing.assert_allclose(circles.geometry.x, squares.centroid.x)


@pytest.mark.slow
def test_cli_export_spatialdata(cohort, tmp_path):
    import spatialdata as sd

    from wsi.cli import main

    out = tmp_path / "x.zarr"
    assert (
        main(
            [
                "export",
                "spatialdata",
                "--features",
                str(cohort["features"]),
                "--out",
                str(out),
                "--shape",
                "circle",
                "--thumbnail-px",
                "200",
                "--quiet",
            ]
        )
        == 0
    )
    back = sd.read_zarr(out)
    assert set(back.shapes) == {"a_tiles", "b_tiles"}
    assert set(back.images) == {"a_thumbnail", "b_thumbnail"}
    assert back.tables["table"].n_obs == 2 * TISSUE_TILES
    assert {"a_um", "a_px", "b_um", "b_px"} <= set(back.coordinate_systems)


def test_slide_ids_spatialdata_does_not_allow_become_valid_names(cohort, tmp_path):
    import shutil

    from wsi.errors import InvalidParameterError
    from wsi.export import element_names, to_spatialdata

    shutil.copy(cohort["features"] / "a.h5", tmp_path / "slide 1+x.h5")
    sdata = to_spatialdata([tmp_path / "slide 1+x.h5"], thumbnail_px=100)
    assert set(sdata.shapes) == {"slide_1_x_tiles"} and set(sdata.images) == {"slide_1_x_thumbnail"}
    assert set(sdata.tables["table"].obs["slide_id"]) == {"slide 1+x"}  # the id itself is kept
    assert element_names(["__a", "b.c"]) == {"__a": "slide__a", "b.c": "b.c"}
    with pytest.raises(InvalidParameterError, match="'a b' and 'a_b'"):
        element_names(["a b", "a_b"])
