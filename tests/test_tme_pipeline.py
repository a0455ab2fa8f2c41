"""``wsi tme profile`` end to end: feature files → tile table → profile, maps, GeoJSON,
manifest, resume; and the validation on mosaics of real tiles (slow tier)."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import shared_file
from wsi.synthetic.mosaic import mosaic_image, phenotype_layout, write_mosaic, write_pyramid
from wsi.tme.phenotype import PhenotypeThresholds
from wsi.tme.profile import ProfileParams


def crc_tiles() -> dict[str, list[np.ndarray]]:
    """The 32 CRC-VAL-HE-7K tiles by class (file-name prefix), 224 px at 0.5 µm/px."""
    from PIL import Image

    folder = shared_file("crc_val_he_7k_32")
    tiles: dict[str, list[np.ndarray]] = {}
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            tiles.setdefault(path.name.split("-")[0], []).append(np.asarray(image.convert("RGB")))
    return tiles


def tiny_classifier(tiles):
    from models.encoders import load_encoder
    from tests import tiny_encoders
    from wsi.tme.classifier import embed_tiles, fit_tile_classifier

    tiny_encoders.register()
    enc = load_encoder("tiny", None, device="cpu")
    labels = [k for k, v in tiles.items() for _ in v]
    pixels = np.stack([t for v in tiles.values() for t in v])
    return fit_tile_classifier(
        embed_tiles(pixels, enc),
        labels,
        encoder="tiny",
        weights_sha256=enc.weights_sha256,
        tile_mpp=0.5,
        tile_size=224,
    )


def test_mosaic_layouts():
    inflamed, excluded, desert = (
        phenotype_layout(k, n=8, block=4, ring=1) for k in ("inflamed", "excluded", "desert")
    )
    assert (inflamed == "TUM").sum() == 8 and (inflamed == "LYM").sum() == 8
    assert (excluded == "TUM").sum() == 16 and (excluded == "LYM").sum() == 36 - 16
    assert (desert == "LYM").sum() == 0 and (desert == "STR").sum() == 48
    tiles = {
        c: [np.full((4, 4, 3), v, np.uint8)] for c, v in (("TUM", 10), ("STR", 20), ("LYM", 30))
    }
    image = mosaic_image(excluded, tiles, margin=1)
    assert image.shape == (40, 40, 3) and image[0, 0, 0] == 243
    assert image[4 * 4 + 1, 4 * 4 + 1, 0] == 10 and image[4 * 2, 4 * 2, 0] == 30


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_profile_run_end_to_end(tmp_path: Path):
    from wsi.pipeline.tme import profile_run

    tiles = crc_tiles()
    clf = tiny_classifier(tiles)
    slides = tmp_path / "slides"
    slides.mkdir()
    write_mosaic(slides / "nest.tif", phenotype_layout("excluded", n=4, block=2, ring=1), tiles)
    glass = np.full((900, 900, 3), 243, np.uint8)
    write_pyramid(slides / "empty.tif", glass, mpp=0.5)
    out = tmp_path / "out"
    table = profile_run(slides, out, classifier=clf, progress=False)
    manifest = pd.read_csv(out / "tme" / "manifest.csv").set_index("slide_id")
    assert manifest.loc["nest", "status"] == "ok" and manifest.loc["nest", "n_tiles"] == 16
    assert manifest.loc["empty", "status"] == "no_tissue"
    row = table.set_index("slide_id").loc["nest"]
    assert row["n_tiles"] == 16 and row["tissue_area_mm2"] == pytest.approx(16 * 0.112**2, rel=0.05)
    fractions = [
        row[f"fraction_{r}"]
        for r in (
            "tumour",
            "stroma",
            "immune",
            "necrosis",
            "mucus",
            "muscle",
            "fat",
            "normal_epithelium",
            "background",
            "other",
        )
    ]
    assert sum(fractions) == pytest.approx(1.0)
    assert 0 < row["mean_confidence"] <= 1 and row["encoder"] == "tiny"
    empty = table.set_index("slide_id").loc["empty"]
    assert not empty["evaluable"] and math.isnan(empty["lymphocytes_per_mm2_intratumoral"])

    per_tile = pd.read_csv(out / "tme" / "nest.tiles.csv")
    assert len(per_tile) == 16 and {"prob_TUM", "role", "n_nuclei", "n_lymphocytes"} <= set(
        per_tile
    )
    assert per_tile["n_nuclei"].sum() > 16 * 20  # real tiles: tens of nuclei each
    area = per_tile["tissue_fraction"].sum() * 0.112**2  # 224 px at 0.5 µm/px, in mm
    assert row["tissue_area_mm2"] == pytest.approx(area)
    lymph_area = per_tile["n_lymphocytes"].sum() / area
    assert row["lymphocytes_per_mm2"] == pytest.approx(lymph_area, rel=1e-6)
    body = json.loads((out / "tme" / "nest.json").read_text())
    assert body["provenance"]["classifier_sha256"] == clf.sha256
    assert body["params"]["thresholds"]["inflamed_per_mm2"] == 130.0
    geo = json.loads((out / "tme" / "nest.geojson").read_text())
    assert len(geo["features"]) == 16
    first = geo["features"][0]["properties"]
    assert (
        first["objectType"] == "detection" and first["classification"]["name"] in clf.roles.values()
    )
    assert "prob_TUM" in first["measurements"] and "n_lymphocytes" in first["measurements"]
    for kind in ("roles", "lymphocytes", "phenotype"):
        assert (out / "tme" / f"nest.{kind}.png").stat().st_size > 1000

    # resume: the slide is not recomputed; changed thresholds recompute it
    stamp = (out / "tme" / "nest.json").stat().st_mtime_ns
    again = profile_run(slides, out, classifier=clf, progress=False)
    assert (out / "tme" / "nest.json").stat().st_mtime_ns == stamp
    assert again.set_index("slide_id").loc["nest", "lymphocytes_per_mm2"] == pytest.approx(
        row["lymphocytes_per_mm2"]
    )
    strict = ProfileParams(
        thresholds=PhenotypeThresholds(inflamed_per_mm2=1e9, excluded_per_mm2=1e9)
    )
    third = profile_run(slides, out, classifier=clf, progress=False, params=strict, maps=False)
    assert (out / "tme" / "nest.json").stat().st_mtime_ns != stamp
    assert third.set_index("slide_id").loc["nest", "immune_phenotype"] in ("desert", "")

    # the CLI over the same folder: cohort-quantile thresholds, recorded in the JSON
    from wsi.cli import main

    clf.save(tmp_path / "clf")
    code = main(
        [
            "tme",
            "profile",
            str(slides),
            "--out",
            str(out),
            "--classifier",
            str(tmp_path / "clf"),
            "--cohort-quantile",
            "0.5",
            "--no-maps",
            "--quiet",
        ]
    )
    assert code == 0
    body = json.loads((out / "tme" / "nest.json").read_text())
    assert body["provenance"]["thresholds"]["source"].startswith("cohort quantile 0.5")
    assert len(pd.read_csv(out / "tme.csv")) == 2


LITERATURE = ProfileParams(min_tumour_area_mm2=0.3)
"""Park et al.'s default thresholds (130 /mm² intratumoral, 260 /mm² stromal): the
lymphocyte-like detector finds ~60 /mm² in these CRC tumour tiles, ~120 /mm² in their
stroma and ~4,300 /mm² in LYM tiles (means over the 4 tiles per class the mosaics draw
from). 0.3 mm² of tumour for an evaluable slide: the inflamed mosaic has 32 tumour tiles
of 112 µm."""


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", [0, 1])
def test_mosaic_phenotypes_are_called_right(tmp_path: Path, seed: int):
    """Mosaics of real CRC tiles (14 × 14 tiles of 112 µm: an 8 × 8 tumour block with
    lymphocyte tiles inside it, only around it, or nowhere): composition and phenotype
    right for every seed. The classifier (EfficientNet-Lite0 probe) is trained on the 59
    shared labelled tiles, the mosaic's among them: this checks the profile, not the
    classifier's accuracy on unseen tiles."""
    from PIL import Image

    from models.encoders import load_encoder
    from wsi.pipeline.tme import profile_run
    from wsi.tme.classifier import embed_tiles, fit_tile_classifier

    assert LITERATURE.thresholds == PhenotypeThresholds()  # 130 / 260 /mm², Park et al. 2022
    tiles = crc_tiles()
    nct = shared_file("nct_crc_he_27")
    labels = pd.read_csv(nct / "labels.csv")
    pixels = [np.asarray(Image.open(nct / f).convert("RGB")) for f in labels.iloc[:, 0]]
    pixels += [t for v in tiles.values() for t in v]
    names = list(labels["label"]) + [k for k, v in tiles.items() for _ in v]
    enc = load_encoder("efficientnet_lite0", None, device="cpu")
    clf = fit_tile_classifier(
        embed_tiles(np.stack(pixels), enc),
        names,
        encoder=enc.name,
        weights_sha256=enc.weights_sha256,
        tile_mpp=0.5,
        tile_size=224,
    )
    slides = tmp_path / "slides"
    slides.mkdir()
    for kind in ("inflamed", "excluded", "desert"):
        layout = phenotype_layout(kind, n=14, block=8, ring=2)
        write_mosaic(slides / f"{kind}.tif", layout, tiles, seed=seed)
    table = profile_run(
        slides, tmp_path / "out", classifier=clf, params=LITERATURE, progress=False, maps=False
    ).set_index("slide_id")
    assert list(table.loc[["inflamed", "excluded", "desert"], "immune_phenotype"]) == [
        "inflamed",
        "excluded",
        "desert",
    ]
    assert table["evaluable"].all()
    # composition: 196 tiles; tumour 32 / 64 / 64, lymphocyte tiles 32 / 80 / 0
    expected = {"inflamed": (32, 32), "excluded": (64, 80), "desert": (64, 0)}
    for kind, (tumour, immune) in expected.items():
        assert table.loc[kind, "fraction_tumour"] == pytest.approx(tumour / 196, abs=0.01)
        assert table.loc[kind, "fraction_immune"] == pytest.approx(immune / 196, abs=0.01)
    # intratumoral density: inflamed ≫ excluded ≈ desert; stromal: excluded ≫ the others
    intra, stromal = table["lymphocytes_per_mm2_intratumoral"], table["lymphocytes_per_mm2_stromal"]
    assert intra["inflamed"] > 2 * max(intra["excluded"], intra["desert"])
    assert stromal["excluded"] > 2 * max(stromal["inflamed"], stromal["desert"])


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_ray_backend_writes_what_the_local_one_writes(tmp_path: Path):
    """One Ray task per slide: the same tme.csv numbers and per-slide files as in-process."""
    ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'wsi[ray]')")
    from wsi.pipeline.tme import profile_run

    tiles = crc_tiles()
    clf = tiny_classifier(tiles)
    slides = tmp_path / "slides"
    slides.mkdir()
    for kind in ("inflamed", "desert"):
        write_mosaic(slides / f"{kind}.tif", phenotype_layout(kind, n=4, block=2, ring=1), tiles)
    local = profile_run(slides, tmp_path / "local", classifier=clf, progress=False)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 1024**2,
        runtime_env={
            "env_vars": {
                "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                "OMP_NUM_THREADS": "1",
            }
        },
    )
    try:
        on_ray = profile_run(
            slides, tmp_path / "ray", classifier=clf, progress=False, backend="ray"
        )
    finally:
        ray.shutdown()
    numbers = [c for c in local.columns if local[c].dtype.kind in "fiu"]
    pd.testing.assert_frame_equal(on_ray[numbers], local[numbers])
    for sid in ("inflamed", "desert"):
        assert (tmp_path / "ray" / "tme" / f"{sid}.geojson").exists()
    manifest = pd.read_csv(tmp_path / "ray" / "tme" / "manifest.csv")
    assert list(manifest["status"]) == ["ok", "ok"]


def test_profile_cli_thresholds_and_slide_mpp_reach_the_settings():
    """`wsi tme profile --inflamed-per-mm2 --excluded-per-mm2 --slide-mpp` set the run's
    phenotype thresholds (recorded as the user's) and the µm/px of slides embedded on the way;
    left out, the literature defaults stay."""
    from wsi.cli import build_parser
    from wsi.errors import InvalidParameterError
    from wsi.pipeline.tme import profile_settings

    args = build_parser().parse_args(
        [
            "tme",
            "profile",
            "s.svs",
            "--out",
            "o",
            "--classifier",
            "c",
            "--inflamed-per-mm2",
            "400",
            "--excluded-per-mm2",
            "600",
            "--slide-mpp",
            "0.25",
        ]
    )
    settings = profile_settings(
        inflamed_per_mm2=args.inflamed_per_mm2,
        excluded_per_mm2=args.excluded_per_mm2,
        slide_mpp=args.slide_mpp,
    )
    thresholds = settings.params.thresholds
    assert (thresholds.inflamed_per_mm2, thresholds.excluded_per_mm2) == (400.0, 600.0)
    assert thresholds.source == "user" and settings.slide_mpp == 0.25
    assert thresholds.cell_um == PhenotypeThresholds().cell_um
    only_one = profile_settings(excluded_per_mm2=500.0).params.thresholds
    assert only_one.inflamed_per_mm2 == PhenotypeThresholds().inflamed_per_mm2
    assert profile_settings().params.thresholds == PhenotypeThresholds()
    with pytest.raises(InvalidParameterError, match="--inflamed-per-mm2"):
        profile_settings(inflamed_per_mm2=-1.0)
