"""The per-slide TME profile on hand-made tile tables with exact expected numbers."""

import math

import numpy as np
import pandas as pd
import pytest

from wsi.tme.phenotype import PhenotypeThresholds, morisita_horn, slide_phenotype
from wsi.tme.profile import ProfileParams, slide_profile
from wsi.tme.regions import distance_to_edge_um, lattice_indices, tumour_region


def lattice(n: int, tile_um: float = 100.0, role: str = "stroma", lymph: int = 2) -> pd.DataFrame:
    iy, ix = np.divmod(np.arange(n * n), n)
    return pd.DataFrame(
        {
            "x_um": ix * tile_um,
            "y_um": iy * tile_um,
            "role": role,
            "n_lymphocytes": lymph,
            "n_nuclei": 10,
            "tissue_fraction": 1.0,
            "ix": ix,
            "iy": iy,
        }
    )


def put(tiles: pd.DataFrame, xs, ys, **values) -> None:
    sel = tiles["ix"].isin(xs) & tiles["iy"].isin(ys)
    for column, value in values.items():
        tiles.loc[sel, column] = value


@pytest.fixture
def nest() -> pd.DataFrame:
    """10 × 10 tiles of 100 µm: stroma (2 lymphocytes each) around a 4 × 4 tumour block
    (1 each) whose centre 2 × 2 are lymphocyte-rich immune tiles (50 each)."""
    tiles = lattice(10)
    put(tiles, range(3, 7), range(3, 7), role="tumour", n_lymphocytes=1)
    put(tiles, (4, 5), (4, 5), role="immune", n_lymphocytes=50)
    return tiles


def test_nest_profile_exact_numbers(nest):
    row = slide_profile(nest, tile_um=100.0, slide_id="s").row
    assert row["tissue_area_mm2"] == pytest.approx(1.0)
    assert row["fraction_tumour"] == pytest.approx(0.12)
    assert row["fraction_immune"] == pytest.approx(0.04)
    assert row["fraction_stroma"] == pytest.approx(0.84)
    assert sum(row[f"fraction_{r}"] for r in ("tumour", "immune", "stroma")) == pytest.approx(1)
    assert row["tumour_area_mm2"] == pytest.approx(0.12)
    assert row["tumour_stroma_ratio"] == pytest.approx(0.84 / 0.96)
    # the enclosed immune tiles are intratumoral: (12 * 1 + 4 * 50) / 0.16 mm²
    assert row["tumour_region_mm2"] == pytest.approx(0.16)
    assert row["lymphocytes_per_mm2_intratumoral"] == pytest.approx(212 / 0.16)
    # every stroma tile is within 500 µm of the block: 2 per 0.01 mm²
    assert row["lymphocytes_per_mm2_stromal"] == pytest.approx(200.0)
    assert row["lymphocytes_per_mm2"] == pytest.approx(380.0)
    assert row["nuclei_per_mm2"] == pytest.approx(1000.0)
    assert row["immune_phenotype"] == "inflamed"
    assert row["phenotype_inflamed_fraction"] == 1.0 and row["phenotype_cells"] == 1
    assert row["evaluable"] is False  # 0.12 mm² of tumour < 0.5 mm²
    assert math.isnan(row["mean_confidence"])


def test_stromal_band_and_margin_distances():
    tiles = lattice(20)
    put(tiles, range(8, 12), range(8, 12), role="tumour", n_lymphocytes=0)
    located = slide_profile(tiles, tile_um=100.0).tiles.set_index(["ix", "iy"])
    # (16, 9): 500 µm between centres, 450 µm from the block's edge, the whole tile within
    # 500 µm; (17, 9): 550 µm, the tile spans 500..600 µm: outside
    assert located.loc[(16, 9), "distance_um"] == pytest.approx(450.0)
    assert located.loc[(16, 9), "stromal_weight"] == 1.0
    assert located.loc[(17, 9), "stromal_weight"] == 0.0 and not located.loc[(17, 9), "stromal"]
    # the block's corner: (14, 14) is 374 µm out, all in; (15, 15)'s centre is 516 µm out
    # (the corner is rounded at the scale of a tile): less than half of it is in
    assert located.loc[(15, 15), "distance_um"] == pytest.approx(400 * math.sqrt(2) - 50)
    assert located.loc[(14, 14), "stromal_weight"] == 1.0
    assert 0 < located.loc[(15, 15), "stromal_weight"] < 0.5
    assert located.loc[(9, 9), "distance_um"] == pytest.approx(-150.0)
    assert located.loc[(9, 9), "stromal_weight"] == 0.0  # inside the region
    assert located.loc[(9, 9), "margin_weight"] == 1.0 and located.loc[(16, 9), "margin"]
    assert located.loc[(0, 0), "margin_weight"] == 0.0


def test_stromal_density_counts_only_the_band():
    """A tumour band over columns 8..11: stroma columns 3..7 and 12..16 lie within 500 µm
    of its edge (column 16: 400..500 µm), column 17 (500..600 µm) does not."""
    tiles = lattice(20, lymph=0)
    put(tiles, range(8, 12), range(20), role="tumour")
    put(tiles, [16], range(20), n_lymphocytes=7)
    put(tiles, [17], range(20), n_lymphocytes=99)
    profile = slide_profile(tiles, tile_um=100.0)
    weight = profile.tiles["stromal_weight"].to_numpy().reshape(20, 20)
    expected = np.zeros(20)
    expected[[3, 4, 5, 6, 7, 12, 13, 14, 15, 16]] = 1.0
    assert weight == pytest.approx(np.tile(expected, (20, 1)))
    assert profile.row["stromal_area_mm2"] == pytest.approx(2.0)
    assert profile.row["lymphocytes_per_mm2_stromal"] == pytest.approx(7 * 20 / 2.0)
    # the margin: 500 µm either side of both edges: 5 + 4 (the whole band) + 5 columns
    assert profile.row["margin_area_mm2"] == pytest.approx(14 * 20 * 0.01)
    assert profile.row["lymphocytes_per_mm2_intratumoral"] == 0.0


def test_no_tumour_is_not_evaluable_and_nan():
    row = slide_profile(lattice(5), tile_um=100.0).row
    assert row["evaluable"] is False and row["immune_phenotype"] == ""
    assert row["tumour_area_mm2"] == 0.0
    for key in ("intratumoral", "stromal", "margin"):
        assert math.isnan(row[f"lymphocytes_per_mm2_{key}"])
    assert math.isnan(row["morisita_horn"]) and math.isnan(row["phenotype_inflamed_fraction"])
    assert row["lymphocytes_per_mm2"] == pytest.approx(200.0)


def test_empty_table():
    row = slide_profile(lattice(0), tile_um=100.0).row
    assert row["n_tiles"] == 0 and row["evaluable"] is False
    assert math.isnan(row["fraction_tumour"])


def test_tissue_fraction_and_background_areas():
    tiles = lattice(2, lymph=10)
    put(tiles, [0], [0], role="tumour", tissue_fraction=0.5)
    put(tiles, [1], [1], role="background", n_lymphocytes=0)
    row = slide_profile(tiles, tile_um=100.0).row
    assert row["tissue_area_mm2"] == pytest.approx(0.035)
    assert row["fraction_background"] == pytest.approx(0.01 / 0.035)
    # background tiles count neither lymphocytes nor area: 30 over 0.025 mm²
    assert row["lymphocytes_per_mm2"] == pytest.approx(30 / 0.025)
    assert row["lymphocytes_per_mm2_intratumoral"] == pytest.approx(10 / 0.005)


def test_unknown_roles_and_missing_columns_are_named():
    tiles = lattice(2).assign(role=["tumour", "TUM", "stroma", "LYM"])
    with pytest.raises(ValueError, match=r"\['LYM', 'TUM'\]"):
        slide_profile(tiles, tile_um=100.0)
    with pytest.raises(ValueError, match="n_lymphocytes"):
        slide_profile(lattice(2).drop(columns="n_lymphocytes"), tile_um=100.0)


def test_morisita_horn_values():
    assert morisita_horn([1, 0], [0, 1]) == 0.0
    assert morisita_horn([2, 2], [5, 5]) == pytest.approx(1.0)
    assert morisita_horn([3, 1], [1, 3]) == pytest.approx(0.6)
    assert math.isnan(morisita_horn([0, 0], [1, 1]))


def test_tumour_region_fills_enclosed_tiles():
    ix, iy = lattice_indices(
        np.repeat(np.arange(5), 5) * 50.0, np.tile(np.arange(5), 5) * 50.0, 50.0
    )
    ring = (np.isin(ix, [1, 3]) & np.isin(iy, [1, 2, 3])) | (
        np.isin(iy, [1, 3]) & np.isin(ix, [1, 2, 3])
    )
    region = tumour_region(ix, iy, ring)
    assert region.sum() == 9 and region[(ix == 2) & (iy == 2)].all()
    d = distance_to_edge_um(ix, iy, region, 50.0)
    assert d[(ix == 2) & (iy == 2)][0] == pytest.approx(-75.0)
    assert d[(ix == 4) & (iy == 2)][0] == pytest.approx(25.0)


def phenotype_slide(inside: int, around: int) -> pd.DataFrame:
    """30 × 30 tiles of 100 µm (3 × 3 mm): a 1.6 mm tumour block at 7..22, ``inside``
    lymphocytes per tumour tile, ``around`` per stroma tile."""
    tiles = lattice(30, lymph=around)
    put(tiles, range(7, 23), range(7, 23), role="tumour", n_lymphocytes=inside)
    return tiles


@pytest.mark.parametrize(
    ("inside", "around", "call"),
    [
        (3, 0, "inflamed"),  # 300 /mm² in the tumour
        (0, 5, "excluded"),  # 500 /mm² around it only
        (0, 0, "desert"),
        (1, 1, "desert"),  # 100 /mm² both: under 130 and 260
    ],
)
def test_phenotype_calls(inside, around, call):
    row = slide_profile(phenotype_slide(inside, around), tile_um=100.0).row
    assert row["immune_phenotype"] == call
    assert row["evaluable"] is True and row["tumour_area_mm2"] == pytest.approx(2.56)
    assert row["phenotype_cells"] == 9


def test_grid_cells_excluded_needs_stroma_in_the_cell():
    profile = slide_profile(phenotype_slide(0, 5), tile_um=100.0)
    cells = profile.cells.set_index(["gx", "gy"])
    # the centre cell (1, 1) is all tumour: no stroma, desert; the 8 around it are excluded
    assert cells.loc[(1, 1), "call"] == "desert" and math.isnan(
        cells.loc[(1, 1), "stromal_per_mm2"]
    )
    assert (cells["call"] == "excluded").sum() == 8
    assert profile.row["phenotype_excluded_fraction"] == pytest.approx(8 / 9)


def test_cohort_quantile_thresholds():
    cells = [slide_profile(phenotype_slide(k, 2 * k), tile_um=100.0).cells for k in (1, 2, 3)]
    t = PhenotypeThresholds.from_cohort(cells, quantile=0.5)
    assert t.inflamed_per_mm2 == pytest.approx(200.0) and t.excluded_per_mm2 == pytest.approx(400.0)
    assert "quantile 0.5" in t.source
    params = ProfileParams(thresholds=t)
    calls = [
        slide_profile(phenotype_slide(k, 2 * k), tile_um=100.0, params=params).row[
            "immune_phenotype"
        ]
        for k in (1, 2, 3)
    ]
    assert calls == ["desert", "inflamed", "inflamed"]
    with pytest.raises(ValueError, match="no tumour"):
        PhenotypeThresholds.from_cohort([slide_profile(lattice(3), tile_um=100.0).cells])


def test_slide_phenotype_tie_is_desert():
    cells = pd.DataFrame({"call": ["excluded", "desert", ""]})
    out = slide_phenotype(cells)
    assert out["immune_phenotype"] == "desert" and out["phenotype_cells"] == 2
    assert out["phenotype_excluded_fraction"] == 0.5


def tiled(points: np.ndarray, tumour: callable, side_um: float, tile_um: float) -> pd.DataFrame:
    """A continuous slide tiled at ``tile_um``: role by the tile centre, lymphocytes counted."""
    n = int(side_um // tile_um)
    iy, ix = np.divmod(np.arange(n * n), n)
    cx, cy = (ix + 0.5) * tile_um, (iy + 0.5) * tile_um
    counts = np.zeros((n, n), int)
    px, py = (points[:, 0] // tile_um).astype(int), (points[:, 1] // tile_um).astype(int)
    keep = (px < n) & (py < n)
    np.add.at(counts, (py[keep], px[keep]), 1)
    return pd.DataFrame(
        {
            "x_um": ix * tile_um,
            "y_um": iy * tile_um,
            "role": np.where(tumour(cx, cy), "tumour", "stroma"),
            "n_lymphocytes": counts[iy, ix],
        }
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_densities_agree_between_tilings(seed):
    """The same slide tiled with 224 px at 0.5 µm/px (112 µm) and at 1.0 µm/px (224 µm):
    every density within 10 %. A disc of tumour (300 lymphocytes /mm²) in a 600 µm ring of
    lymphocyte-rich stroma (600 /mm²; the 500 µm stromal band lies within it), then sparse
    stroma (80 /mm²). (Structure finer than a 224 µm tile — a 400 µm ring — leaves the
    coarse tiling's stromal density ~12 % low: it cannot see it.)"""
    rng = np.random.default_rng(seed)
    side = 5376.0  # 48 and 24 tiles
    centre, radius = side / 2, 1500.0

    def tumour(x, y):
        return np.hypot(x - centre, y - centre) < radius

    def poisson(rate_per_mm2, keep):
        pts = rng.uniform(0, side, (rng.poisson(rate_per_mm2 * (side / 1000) ** 2), 2))
        return pts[keep(pts[:, 0], pts[:, 1])]

    r = lambda x, y: np.hypot(x - centre, y - centre)  # noqa: E731
    points = np.concatenate(
        [
            poisson(300, tumour),
            poisson(600, lambda x, y: (r(x, y) >= radius) & (r(x, y) < radius + 600)),
            poisson(80, lambda x, y: r(x, y) >= radius + 600),
        ]
    )
    rows = [slide_profile(tiled(points, tumour, side, t), tile_um=t).row for t in (112.0, 224.0)]
    for key in (
        "lymphocytes_per_mm2",
        "lymphocytes_per_mm2_intratumoral",
        "lymphocytes_per_mm2_stromal",
        "lymphocytes_per_mm2_margin",
        "tumour_area_mm2",
    ):
        assert rows[1][key] == pytest.approx(rows[0][key], rel=0.10), key
    assert rows[0]["immune_phenotype"] == rows[1]["immune_phenotype"]
