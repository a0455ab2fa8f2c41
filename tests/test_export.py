"""wsi.export: AnnData (scanpy layout), QuPath GeoJSON, tile images, and labels coming back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TISSUE_TILES, TISSUE_UM
from tests.export_cohort import write_feature_cohort
from wsi.errors import FeatureFileError, InvalidParameterError
from wsi.store.h5 import FeatureWriter

DIM = 8
ROLES = ["tumour", "stroma", "immune"]
TILE_UM = 112.0  # 224 px at 0.5 µm/px
TILE_MM2 = (TILE_UM / 1000) ** 2


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two slides (0.5 µm/px SVS and 0.25 µm/px TIFF) with random 8-d feature files, and a
    TME folder: per-tile tables (rows shuffled, keyed by x, y), tme.csv and nuclei."""
    from wsi.store.h5 import read_tile_file

    root = tmp_path_factory.mktemp("export")
    features = write_feature_cohort(root, DIM)
    tme = root / "tme"
    (tme / "nuclei").mkdir(parents=True)
    for sid in ("a", "b"):
        coords = read_tile_file(features / f"{sid}.h5", features=False).coords
        n = len(coords)
        table = pd.DataFrame(
            {
                "x": coords[:, 0],
                "y": coords[:, 1],
                "role": [ROLES[i % 3] for i in range(n)],
                "prob_tumour": np.linspace(0, 1, n),
                "n_lymphocytes": np.arange(n),
            }
        )
        # a: where `wsi tme profile` writes it, rows shuffled; b: the flat layout, in order
        if sid == "a":
            (tme / "tme").mkdir()
            table.sample(frac=1, random_state=1).to_csv(tme / "tme" / "a.tiles.csv", index=False)
        else:
            table.drop(columns=["x", "y"]).to_csv(tme / "b.csv", index=False)
        centres = coords[:3] + 10
        pd.DataFrame(
            {"x": centres[:, 0], "y": centres[:, 1], "lymphocyte": [True, False, True]}
        ).to_csv(tme / "nuclei" / f"{sid}.csv", index=False)
    pd.DataFrame(
        {
            "slide_id": ["a", "b"],
            "fraction_tumour": [0.25, 0.5],
            "immune_phenotype": ["inflamed", "desert"],
        }
    ).to_csv(tme / "tme.csv", index=False)
    labels = root / "labels.csv"
    pd.DataFrame(
        {"slide_id": ["a", "b"], "tumour_type": ["luad", "lusc"], "score": [1.5, 2.5]}
    ).to_csv(labels, index=False)
    slides = root / "slides"
    return {"root": root, "slides": slides, "features": features, "tme": tme, "labels": labels}


@pytest.fixture(scope="module")
def checkpoint(cohort):
    import models
    from models.training import TrainConfig
    from wsi.store.h5 import read_tile_file

    bags = [read_tile_file(cohort["features"] / f"{s}.h5").features for s in ("a", "b")]
    labels = pd.DataFrame({"slide_id": ["a", "b"], "score": [1.0, 2.0]})
    model = models.train(
        bags,
        labels,
        regress=["score"],
        encoder="tiny",
        progress=False,
        config=TrainConfig(epochs=1, hidden=8, val_fraction=0),
    )
    return model.save(cohort["root"] / "model.pt")


def test_anndata_tile_level_round_trips_identically(cohort, tmp_path):
    import anndata as ad

    from wsi.export import to_anndata, write_anndata

    adata = to_anndata(cohort["features"], tme=cohort["tme"], labels=cohort["labels"])
    assert adata.shape == (2 * TISSUE_TILES, DIM)
    assert adata.X.dtype == np.float32
    assert list(adata.obs["slide_id"].cat.categories) == ["a", "b"]
    assert (adata.obs["library_id"] == adata.obs["slide_id"]).all()
    path = write_anndata(adata, tmp_path / "tiles.h5ad")
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.X, adata.X)
    pd.testing.assert_frame_equal(back.obs, adata.obs)
    for key in ("spatial", "spatial_um"):
        np.testing.assert_array_equal(back.obsm[key], adata.obsm[key])
    np.testing.assert_array_equal(
        back.uns["spatial"]["b"]["images"]["lowres"], adata.uns["spatial"]["b"]["images"]["lowres"]
    )
    assert back.uns["wsi"]["encoder"] == "tiny"


def test_anndata_coordinates_are_tile_centres_in_level0_px_and_um(cohort):
    from wsi.export import to_anndata

    adata = to_anndata(cohort["features"])
    for sid, mpp0 in (("a", 0.5), ("b", 0.25)):
        rows = adata[adata.obs["slide_id"] == sid]
        side = TILE_UM / mpp0  # level-0 px
        topleft = rows.obs[["x", "y"]].to_numpy()
        np.testing.assert_allclose(rows.obsm["spatial"], topleft + side / 2)
        np.testing.assert_allclose(rows.obsm["spatial_um"], (topleft + side / 2) * mpp0)
        np.testing.assert_allclose(rows.obs[["x_um", "y_um"]], rows.obsm["spatial_um"])
        # every tile centre lies inside the tissue block, in µm
        x0, y0, w, h = TISSUE_UM
        um = rows.obsm["spatial_um"]
        assert ((um[:, 0] > x0) & (um[:, 0] < x0 + w) & (um[:, 1] > y0) & (um[:, 1] < y0 + h)).all()
        assert adata.uns["spatial"][sid]["scalefactors"]["spot_diameter_fullres"] == side


def test_thumbnail_pixels_under_tile_centres_are_tissue(cohort):
    """scanpy.pl.spatial's geometry: image px = obsm['spatial'] × tissue_<key>_scalef, for
    the lowres (scanpy) and hires (squidpy's default) images."""
    from wsi.export import to_anndata

    adata = to_anndata(cohort["features"], thumbnail_px=300, hires_px=500)
    for sid, key in (("a", "lowres"), ("a", "hires"), ("b", "lowres"), ("b", "hires")):
        entry = adata.uns["spatial"][sid]
        image = entry["images"][key]
        assert max(image.shape[:2]) == {"lowres": 300, "hires": 500}[key]
        scale = entry["scalefactors"][f"tissue_{key}_scalef"]
        xy = adata[adata.obs["library_id"] == sid].obsm["spatial"] * scale
        pixels = image[np.floor(xy[:, 1]).astype(int), np.floor(xy[:, 0]).astype(int)].astype(int)
        saturation = pixels.max(axis=1) - pixels.min(axis=1)
        glass = image[2, 2].astype(int)
        assert glass.max() - glass.min() < 10  # the corner is blank glass…
        assert (saturation > 60).all()  # …and every tile centre is on the (pink) tissue
    assert "hires" not in to_anndata(cohort["features"], hires_px=0).uns["spatial"]["a"]["images"]


def test_anndata_carries_tme_tables_aligned_by_position(cohort):
    from wsi.export import to_anndata

    adata = to_anndata(cohort["features"], tme=cohort["tme"])
    for sid in ("a", "b"):  # a's rows were shuffled (matched on x, y), b's have no x, y
        obs = adata.obs[adata.obs["slide_id"] == sid]
        n = len(obs)
        assert obs["role"].astype(str).tolist() == [ROLES[i % 3] for i in range(n)]
        np.testing.assert_allclose(obs["prob_tumour"], np.linspace(0, 1, n))
        np.testing.assert_allclose(obs["n_lymphocytes_per_mm2"], np.arange(n) / TILE_MM2)


def test_a_tme_table_without_xy_and_another_length_is_refused(tmp_path):
    from wsi.export.tme_tables import align_to_coords

    with pytest.raises(InvalidParameterError, match="3 rows without x, y columns for 2 tiles"):
        align_to_coords(pd.DataFrame({"role": ["a", "b", "c"]}), np.zeros((2, 2)), source="t")


@pytest.mark.slow
def test_attention_and_predictions_of_a_checkpoint(cohort, checkpoint, tmp_path):
    from wsi.export import export_qupath, to_anndata

    adata = to_anndata(cohort["features"], checkpoint=checkpoint)
    sums = adata.obs.groupby("slide_id", observed=True)["attention_score"].sum()
    np.testing.assert_allclose(sums.to_numpy(), [1.0, 1.0], rtol=1e-5)
    slides = to_anndata(cohort["features"], level="slide", checkpoint=checkpoint)
    assert np.isfinite(slides.obs["score_pred"]).all() and len(slides) == 2
    [path_a, _] = export_qupath(cohort["features"], tmp_path, checkpoint=checkpoint)
    tiles = json.loads(path_a.read_text())["features"]
    attention = [f["properties"]["measurements"]["attention_score"] for f in tiles]
    np.testing.assert_allclose(attention, adata.obs["attention_score"][:TISSUE_TILES], rtol=1e-6)


def test_anndata_slide_level_is_mean_pooled_with_labels_and_tme(cohort):
    from wsi.export import to_anndata
    from wsi.store.h5 import read_tile_file

    adata = to_anndata(
        cohort["features"], level="slide", tme=cohort["tme"], labels=cohort["labels"]
    )
    assert list(adata.obs_names) == ["a", "b"]
    for i, sid in enumerate(("a", "b")):
        feats = read_tile_file(cohort["features"] / f"{sid}.h5").features
        np.testing.assert_allclose(adata.X[i], feats.mean(axis=0), rtol=1e-6)
    assert adata.obs["n_tiles"].tolist() == [TISSUE_TILES, TISSUE_TILES]
    assert adata.obs["tumour_type"].astype(str).tolist() == ["luad", "lusc"]
    assert adata.obs["fraction_tumour"].tolist() == [0.25, 0.5]
    assert adata.obs["immune_phenotype"].astype(str).tolist() == ["inflamed", "desert"]


def _fake_features(path: Path, encoder: str, dim: int = 4) -> None:
    attrs = {"patch_size": 224, "patch_level": 0, "downsample": [1.0, 1.0], "name": path.stem}
    coords = np.array([[0, 0], [224, 0]])
    with FeatureWriter(path, coords, attrs, {}, dim, {"encoder": encoder}) as w:
        w.write(0, np.ones((2, dim), np.float32))
        w.commit()


def test_features_of_different_encoders_are_refused_naming_them(tmp_path):
    from wsi.export import export_qupath, to_anndata

    _fake_features(tmp_path / "one" / "s1.h5", "resnet50_trunc")
    _fake_features(tmp_path / "two" / "s2.h5", "uni", dim=4)
    for call in (
        lambda: to_anndata([tmp_path / "one", tmp_path / "two"]),
        lambda: export_qupath([tmp_path / "one", tmp_path / "two"], tmp_path / "q"),
    ):
        with pytest.raises(FeatureFileError, match="different encoders") as info:
            call()
        assert "resnet50_trunc" in str(info.value) and "uni" in str(info.value)
        assert "s1.h5" in str(info.value) and "s2.h5" in str(info.value)


def test_cluster_labels_come_back_and_classify_qupath_tiles(cohort, tmp_path):
    from wsi.export import export_qupath, from_anndata, to_anndata

    adata = to_anndata(cohort["features"])
    adata.obs["leiden"] = pd.Categorical((np.arange(adata.n_obs) % 4).astype(str))
    table = from_anndata(adata)
    assert list(table.columns) == ["slide_id", "tile_id", "x", "y", "leiden"]
    csv = tmp_path / "clusters.csv"
    table.to_csv(csv, index=False)
    back = pd.read_csv(csv, dtype={"slide_id": str})
    b = back[back["slide_id"] == "b"]
    np.testing.assert_array_equal(b[["x", "y"]], adata[adata.obs.slide_id == "b"].obs[["x", "y"]])
    [path_a, path_b] = export_qupath(
        cohort["features"], tmp_path / "q", tile_labels=csv, class_column="leiden"
    )
    names = [
        f["properties"]["classification"]["name"]
        for f in json.loads(path_b.read_text())["features"]
    ]
    assert names == adata.obs["leiden"][adata.obs.slide_id == "b"].astype(str).tolist()


def test_qupath_geojson_has_one_detection_per_tile_with_roles_and_measurements(cohort, tmp_path):
    shapely = pytest.importorskip("shapely")
    from shapely.geometry import shape

    from wsi.export import export_qupath, read_slide_tiles
    from wsi.export.tme_tables import palette

    paths = export_qupath(cohort["features"], tmp_path, tme=cohort["tme"])
    assert [p.name for p in paths] == ["a.geojson", "b.geojson"]
    for path, mpp0 in zip(paths, (0.5, 0.25), strict=True):
        tiles = read_slide_tiles(cohort["features"] / f"{path.stem}.h5", features=False)
        features = json.loads(path.read_text())["features"]
        squares = [f for f in features if f["geometry"]["type"] == "Polygon"]
        points = [f for f in features if f["geometry"]["type"] == "Point"]
        assert len(squares) == len(tiles) == TISSUE_TILES and len(points) == 3
        side = TILE_UM / mpp0
        for f, (x, y), i in zip(squares, tiles.coords, range(len(tiles)), strict=True):
            geometry = shape(f["geometry"])
            assert geometry.is_valid and geometry.area == pytest.approx(side**2)
            assert geometry.bounds == pytest.approx((x, y, x + side, y + side))
            props = f["properties"]
            assert props["objectType"] == "detection"
            assert props["classification"]["name"] == ROLES[i % 3]
            assert tuple(props["classification"]["color"]) == palette(ROLES)[ROLES[i % 3]]
            m = props["measurements"]
            assert m["n_lymphocytes"] == i
            assert m["n_lymphocytes_per_mm2"] == pytest.approx(i / TILE_MM2)
        assert [p["properties"]["classification"]["name"] for p in points] == [
            "lymphocyte",
            "nucleus",
            "lymphocyte",
        ]
        assert shapely.Point(points[0]["geometry"]["coordinates"]).x == tiles.coords[0, 0] + 10


def test_tile_images_have_the_right_size_and_um_per_px(cohort, tmp_path):
    from PIL import Image

    from wsi.export import export_tiles, tile_image_mpp

    result = export_tiles(
        [cohort["slides"]], tmp_path, fmt="png", max_tiles=5, coords=cohort["features"]
    )
    index = pd.read_csv(tmp_path / "index.csv")
    assert len(index) == 10 and index.groupby("slide_id").size().tolist() == [5, 5]
    assert result.failed == {}
    assert (index["mpp"] == 0.5).all() and (index["size_px"] == 224).all()
    for row in index.itertuples():
        with Image.open(tmp_path / row.path) as image:
            assert image.size == (224, 224) and image.format == "PNG"
        assert tile_image_mpp(tmp_path / row.path) == pytest.approx(0.5)
    stored = pd.read_csv(tmp_path / "index.csv").query("slide_id == 'b'")
    from wsi.store.h5 import read_tile_file

    coords = read_tile_file(cohort["features"] / "b.h5", features=False).coords
    np.testing.assert_array_equal(stored[["x", "y"]], coords[stored["tile_id"]])


def test_tile_images_by_role_as_jpeg_from_a_fresh_grid(cohort, tmp_path):
    from PIL import Image

    from wsi.export import export_tiles, tile_image_mpp

    result = export_tiles(
        [cohort["slides"] / "b.tiff"],
        tmp_path,
        fmt="jpg",
        role="stroma",
        tme=cohort["tme"],
        quality=80,
    )
    index = result.index
    # tiles 1, 4, 7, 10 of 12 are stroma; the grid made now equals the embedded one
    assert index["tile_id"].tolist() == [1, 4, 7, 10]
    assert set(index["role"]) == {"stroma"}
    for path in index["path"]:
        with Image.open(tmp_path / path) as image:
            assert image.size == (224, 224) and image.format == "JPEG"
        assert tile_image_mpp(tmp_path / path) == pytest.approx(0.5)


def test_tile_export_refuses_a_role_without_tme(cohort, tmp_path):
    from wsi.export import export_tiles

    with pytest.raises(InvalidParameterError, match="--tme"):
        export_tiles([cohort["slides"]], tmp_path, role="tumour")


def test_cli_export_anndata_and_qupath(cohort, tmp_path):
    import anndata as ad

    from wsi.cli import main

    out = tmp_path / "s.h5ad"
    assert (
        main(
            [
                "export",
                "anndata",
                "--features",
                str(cohort["features"]),
                "--out",
                str(out),
                "--level",
                "slide",
                "--labels",
                str(cohort["labels"]),
                "--quiet",
            ]
        )
        == 0
    )
    assert ad.read_h5ad(out).shape == (2, DIM)
    assert (
        main(
            [
                "export",
                "qupath",
                "--features",
                str(cohort["features"]),
                "--out",
                str(tmp_path / "q"),
                "--tme",
                str(cohort["tme"]),
                "--quiet",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["a.geojson", "b.geojson"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # scanpy 1.11 points to squidpy
def test_scanpy_pl_spatial_draws_each_tile_on_its_tissue(cohort):
    """scanpy.pl.spatial, unchanged, on an exported slide: one circle per tile, a tile wide,
    centred on tissue pixels of the thumbnail it draws under them."""
    sc = pytest.importorskip("scanpy")
    import matplotlib

    matplotlib.use("Agg")
    from wsi.export import to_anndata

    adata = to_anndata(cohort["features"], thumbnail_px=300, hires_px=600)
    for sid, mpp0 in (("a", 0.5), ("b", 0.25)):  # scanpy takes hires when there
        [ax] = sc.pl.spatial(adata[adata.obs["library_id"] == sid], library_id=sid, show=False)
        image = ax.images[0].get_array()
        boxes = np.array([p.get_extents().get_points() for p in ax.collections[0].get_paths()])
        centres, widths = boxes.mean(axis=1), boxes[:, 1, 0] - boxes[:, 0, 0]
        scale = adata.uns["spatial"][sid]["scalefactors"]["tissue_hires_scalef"]
        assert len(centres) == TISSUE_TILES and max(image.shape[:2]) == 600
        np.testing.assert_allclose(widths, TILE_UM / mpp0 * scale, rtol=1e-6)
        pixels = image[centres[:, 1].astype(int), centres[:, 0].astype(int)].astype(int)
        assert (pixels.max(axis=1) - pixels.min(axis=1) > 60).all()
        matplotlib.pyplot.close("all")


def test_a_slide_missing_from_coords_fails_alone(cohort, tmp_path):
    from wsi.export import export_tiles

    coords = tmp_path / "coords"
    coords.mkdir()
    (coords / "a.h5").symlink_to(cohort["features"] / "a.h5")
    result = export_tiles([cohort["slides"]], tmp_path / "t", coords=coords, max_tiles=2)
    assert list(result.failed) == ["b"] and "no b.h5 in" in result.failed["b"]
    assert result.index["slide_id"].tolist() == ["a", "a"]


def test_from_anndata_returns_only_columns_added_after_export(cohort):
    from wsi.export import from_anndata, to_anndata

    adata = to_anndata(cohort["features"], tme=cohort["tme"], labels=cohort["labels"])
    assert list(from_anndata(adata).columns) == ["slide_id", "tile_id", "x", "y"]
    adata.obs["cluster"] = np.arange(adata.n_obs) % 2
    table = from_anndata(adata)
    assert table["cluster"].tolist() == (np.arange(adata.n_obs) % 2).tolist()
    assert table["tile_id"].tolist() == list(range(TISSUE_TILES)) * 2


def test_an_embed_output_folder_points_at_its_encoder_folders(cohort):
    from wsi.export import to_anndata

    with pytest.raises(FeatureFileError, match=r"pass one encoder's features: .*features/tiny"):
        to_anndata(cohort["root"] / "out")
