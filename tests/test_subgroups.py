"""Subgroup discovery (no outcome seen, k by stability), the frozen model, and the tests of
groups against outcomes, on synthetic cohorts with planted structure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from wsi.errors import FeatureFileError, InvalidParameterError, LabelsError
from wsi.pipeline.subgroups import assign_subgroups_run, discover_subgroups_run
from wsi.store.h5 import FeatureWriter
from wsi.subgroups import (
    add_q_values,
    assign_subgroups,
    associate,
    discover_subgroups,
    load_subgroup_model,
    parse_k,
    patient_table,
)

ATTRS = {"patch_size": 224, "patch_level": 0, "downsample": [1.0, 1.0], "name": "s"}
MIXES = np.array([[0.70, 0.10, 0.10, 0.10], [0.10, 0.70, 0.10, 0.10], [0.10, 0.10, 0.10, 0.70]])
"""Tile-type fractions of the three planted groups."""


def planted_table(k: int = 4, per_group: int = 12, dims: int = 8, gap: float = 6.0, seed: int = 0):
    """(table indexed by slide_id, true group 0..k-1): unit-noise blobs ``gap`` apart."""
    rng = np.random.default_rng(seed)
    centres = gap * np.eye(k, dims)
    truth = np.repeat(np.arange(k), per_group)
    x = centres[truth] + rng.normal(size=(len(truth), dims))
    table = pd.DataFrame(
        x, index=[f"s{i:03d}" for i in range(len(truth))], columns=[f"c{j}" for j in range(dims)]
    )
    return table, truth


def write_cohort(folder, per_group=10, tiles=60, dim=12, encoder="enc", seed=0):
    """Feature files whose tiles come from 4 tile types mixed as ``MIXES`` per group;
    returns the true group (0..2) per slide id."""
    rng = np.random.default_rng(seed)
    prototypes = 5.0 * rng.normal(size=(4, dim))
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for g, mix in enumerate(MIXES):
        for i in range(per_group):
            sid = f"g{g}_{i:02d}"
            kinds = rng.choice(4, size=tiles, p=mix)
            rows = (prototypes[kinds] + rng.normal(size=(tiles, dim))).astype(np.float32)
            coords = np.stack([np.arange(tiles) * 224, np.zeros(tiles)], axis=1)
            with FeatureWriter(
                folder / f"{sid}.h5", coords, ATTRS, {}, dim, {"encoder": encoder}
            ) as w:
                w.write(0, rows)
                w.commit()
            truth[sid] = g
    return truth


def survival_labels(
    groups: dict[str, int], *, hazard=(1.0, 1.0, 1.0), treated_effect=None, seed=0
) -> pd.DataFrame:
    """Exponential survival with a hazard per group; ``treated_effect`` {group: HR of the
    treatment in that group}; censoring at 24 months; a random age and stage."""
    rng = np.random.default_rng(seed)
    rows = []
    for sid, g in groups.items():
        treated = int(rng.integers(0, 2))
        rate = hazard[g] * ((treated_effect or {}).get(g, 1.0) if treated else 1.0) / 12.0
        t = rng.exponential(1.0 / rate)
        rows.append(
            {
                "slide_id": sid,
                "os_months": min(t, 24.0),
                "os_event": int(t < 24.0),
                "treated": treated,
                "age": float(rng.normal(60, 8)),
                "stage": str(rng.choice(["I", "II", "III"])),
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- discovery


@pytest.mark.parametrize(
    "method", ["kmeans", pytest.param("gmm", marks=pytest.mark.slow), "agglomerative"]
)
def test_planted_groups_found_with_the_right_k(method):
    table, truth = planted_table(k=4)
    found = discover_subgroups(table, k=range(2, 9), method=method, resamples=6)
    assert found.model.k == 4
    assert adjusted_rand_score(truth, found.assignments["group"]) >= 0.9
    curve = found.stability.set_index("k")["stability"]
    assert curve[4] >= curve.max() - 0.02  # the most stable k (or tied)
    assert curve[4] >= (0.75 if method == "gmm" else 0.9)  # mixtures refit less reproducibly
    assert curve[[2, 3]].min() < 0.85 and curve[[6, 7, 8]].max() < 0.95
    sizes = found.assignments["group"].value_counts().sort_index()
    assert list(sizes.index) == [1, 2, 3, 4] and sizes.is_monotonic_decreasing


@pytest.mark.parametrize("method", ["kmeans", "gmm", "agglomerative"])
def test_frozen_model_assigns_the_discovery_cohort_to_its_groups(tmp_path, method):
    table, _ = planted_table(k=3, per_group=10, gap=3.0, seed=3)  # overlapping blobs
    found = discover_subgroups(table, k=[2, 3, 4], method=method, resamples=5)
    found.model.save(tmp_path)
    loaded = load_subgroup_model(tmp_path / "model.json")
    again = assign_subgroups(loaded, table)
    assert (again["group"].to_numpy() == found.assignments["group"].to_numpy()).all()
    np.testing.assert_allclose(again["distance"], found.assignments["distance"], rtol=1e-9)
    with np.load(tmp_path / "model.npz", allow_pickle=False) as npz:  # no object arrays
        assert all(npz[n].dtype != object for n in npz.files)
    assert repr(loaded).startswith(f"<SubgroupModel k={found.model.k} {method}")


def test_new_slides_go_to_the_nearest_frozen_group():
    table, truth = planted_table(k=3, per_group=10, seed=1)
    found = discover_subgroups(table, k=[2, 3, 4], resamples=5)
    fresh, fresh_truth = planted_table(k=3, per_group=5, seed=2)  # a "validation cohort"
    assigned = assign_subgroups(found.model, fresh)
    mapping = {t: g for t, g in zip(truth, found.assignments["group"], strict=True)}
    assert (assigned["group"].to_numpy() == [mapping[t] for t in fresh_truth]).all()


def test_parse_k():
    assert parse_k("2..8") == [2, 3, 4, 5, 6, 7, 8]
    assert parse_k("4,2") == [2, 4]
    with pytest.raises(InvalidParameterError, match="at least 2"):
        parse_k("1..3")


def test_too_few_slides_for_k_is_an_error():
    table, _ = planted_table(k=2, per_group=6)  # 12 slides
    with pytest.raises(InvalidParameterError, match=r"12 slides .* 2 × k.*--k 2\.\.6"):
        discover_subgroups(table, k=range(2, 9))


def test_constant_features_are_an_error_or_left_out():
    table, _ = planted_table(k=2, per_group=8)
    with pytest.raises(InvalidParameterError, match="constant"):
        discover_subgroups(table * 0 + 1.0, k=[2])
    table["flat"] = 3.0
    with pytest.warns(UserWarning, match="flat"):
        found = discover_subgroups(table, k=[2, 3], resamples=4)
    assert "flat" not in found.model.columns and found.dropped_columns == ["flat"]


# --------------------------------------------------------------------------- association


def test_bh_q_values_match_the_definition():
    tests = [{"p_value": p} for p in (0.01, 0.04, 0.03, 0.2)] + [{"p_value": None}]
    q = [t["q_value"] for t in add_q_values(tests)]
    # BH by hand: sorted p (0.01, 0.03, 0.04, 0.2) * m / rank, then running minimum from the top
    assert q[:4] == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])
    assert q[4] is None


def test_patients_fold_their_slides_and_missing_outcomes_are_counted():
    assignments = pd.DataFrame(
        {"slide_id": ["a1", "a2", "b1", "c1", "d1"], "group": [2, 2, 1, 1, 2]}
    )
    labels = pd.DataFrame(
        {
            "slide_id": ["a1", "a2", "b1", "c1", "d1"],
            "patient_id": ["A", "A", "B", "C", "D"],
            "score": [np.nan, 3.0, 1.0, np.nan, 5.0],
        }
    )
    patients = patient_table(assignments, labels)
    assert patients.set_index("patient_id")["n_slides"].to_dict() == {
        "A": 2,
        "B": 1,
        "C": 1,
        "D": 1,
    }
    assert patients.set_index("patient_id").loc["A", "score"] == 3.0  # first known value
    (test,) = associate(patients, targets=["score"])
    assert (test["n"], test["n_dropped"]) == (3, 1)


def test_survival_difference_and_interaction_planted_in_one_group():
    groups = {f"s{i}": i % 3 for i in range(240)}
    labels = survival_labels(groups, hazard=(1.0, 3.0, 1.0), treated_effect={0: 0.25}, seed=1)
    labels["group"] = labels["slide_id"].map(groups) + 1
    labels["patient_id"] = labels["slide_id"]
    tests = associate(
        labels.drop(columns="slide_id"),
        survival=("os_months", "os_event"),
        treatment="treated",
        covariates=["age"],
        targets=["stage"],
    )
    by = {t["test"]: t for t in tests}
    assert by["logrank"]["p_value"] < 1e-4
    assert by["cox"]["p_value"] < 1e-4
    hr = {h["term"]: h for h in by["cox"]["hazard_ratios"]}
    # group 1 is half treated (HR 0.25): its mean hazard is ~0.6 of group 3's, 3 is 1/3 of 2's
    assert hr["group_2"]["ci_low"] > 1.0 and hr["group_3"]["ci_low"] < 1.6
    assert 2.0 < hr["group_2"]["hazard_ratio"] / hr["group_3"]["hazard_ratio"] < 4.5
    assert by["interaction"]["p_value"] < 0.01 and by["interaction"]["df"] == 2
    within = {h["group"]: h["hazard_ratio"] for h in by["interaction"]["treatment_effect_by_group"]}
    assert within[1] < 0.5 and 0.6 < within[2] < 1.6 and 0.6 < within[3] < 1.6
    assert by["chi2"]["p_value"] > 0.01  # stage was drawn independently of the groups
    assert all(t["q_value"] >= t["p_value"] for t in tests)


def test_treatment_needs_survival():
    table = pd.DataFrame({"patient_id": ["a", "b"], "group": [1, 2], "treated": [0, 1]})
    with pytest.raises(LabelsError, match="--treatment needs --survival"):
        associate(table, treatment="treated")


@pytest.mark.slow
def test_null_cohorts_keep_the_type_one_error_near_5_percent():
    """200 cohorts where features, survival and labels are independent: discovery (k by
    stability) then every test; the rate of p < 0.05 per test with its 95 % binomial CI."""
    from scipy.stats import binomtest

    rng = np.random.default_rng(7)
    n_cohorts, hits = 200, {"logrank": 0, "kruskal": 0, "chi2": 0}
    for c in range(n_cohorts):
        table = pd.DataFrame(rng.normal(size=(40, 3)), index=[f"s{i}" for i in range(40)])
        table.columns = ["a", "b", "c"]
        found = discover_subgroups(table, k=[2, 3], resamples=4, seed=c)
        labels = survival_labels({s: 0 for s in table.index}, seed=c)
        labels["score"] = rng.normal(size=40)
        patients = patient_table(found.assignments, labels)
        for t in associate(
            patients, survival=("os_months", "os_event"), targets=["score", "stage"]
        ):
            if t["test"] in hits and t["p_value"] is not None:
                hits[t["test"]] += t["p_value"] < 0.05
    for test, n in hits.items():
        ci = binomtest(n, n_cohorts).proportion_ci(0.95)
        print(f"{test}: type-I error {n / n_cohorts:.3f} (95 % CI {ci.low:.3f}-{ci.high:.3f})")
        assert ci.low <= 0.05 <= ci.high + 0.01, test
        assert n / n_cohorts < 0.09


# --------------------------------------------------------------------------- folders, CLI


def _labels_csv(path, truth, **kwargs):
    labels = survival_labels(truth, **kwargs)
    labels["patient_id"] = labels["slide_id"].str.replace(r"_0[01]$", "_pair", regex=True)
    labels.loc[labels.index[:2], "os_months"] = np.nan  # unknown outcome: dropped, counted
    labels.to_csv(path, index=False)
    return labels


@pytest.mark.parametrize(
    "kind", ["embeddings", pytest.param("tile-clusters", marks=pytest.mark.slow)]
)
def test_discover_run_writes_the_contract_and_assign_reproduces_it(tmp_path, kind):
    truth = write_cohort(tmp_path / "features" / "enc")
    _labels_csv(tmp_path / "labels.csv", truth, hazard=(1.0, 4.0, 1.0))
    run = discover_subgroups_run(
        tmp_path / "features" / "enc",
        tmp_path / "labels.csv",
        tmp_path / "sg",
        input_kind=kind,
        k=range(2, 6),
        survival=("os_months", "os_event"),
        treatment="treated",
        covariates=["age"],
        targets=["stage"],
        tile_clusters=4,
        resamples=6,
        umap=False,
    )
    out = tmp_path / "sg"
    slides = pd.read_csv(out / "subgroups.csv", dtype={"slide_id": str})
    assert list(slides.columns) == ["slide_id", "patient_id", "group", "distance"]
    assert adjusted_rand_score([truth[s] for s in slides.slide_id], slides.group) >= 0.9
    report = json.loads((out / "subgroups.json").read_text())
    assert report["k"] == 3 and report["input"] == kind and report["encoder"] == "enc"
    assert report["stability"]["k"] == [2, 3, 4, 5]
    assert report["n_slides"] == 30 and report["n_patients"] == 27  # three pairs of slides
    tests = {t["test"]: t for t in report["tests"]}
    assert set(tests) == {"logrank", "cox", "interaction", "chi2"}
    assert tests["logrank"]["n_dropped"] == 1  # both unknown times are one patient's slides
    assert tests["logrank"]["q_value"] >= tests["logrank"]["p_value"]
    assert {"target", "test", "p_value", "q_value"} <= set(tests["interaction"])
    assert {"km.png", "forest.png"} <= set(report["plots"])
    assert (out / "km.png").stat().st_size > 1000 and (out / "model.npz").is_file()
    assert len(run.patients) == 27
    assert "logrank     os_months        n = 26   p = " in run.summary()
    assert "(1 dropped: missing values)" in run.summary()
    assigned = assign_subgroups_run(
        out / "model.json", tmp_path / "features" / "enc", tmp_path / "assigned.csv"
    )
    merged = slides.merge(assigned, on="slide_id", suffixes=("", "_new"))
    assert len(merged) == 30 and (merged.group == merged.group_new).all()


def test_assign_refuses_a_model_from_another_encoder(tmp_path):
    truth = write_cohort(tmp_path / "a", per_group=4, encoder="enc_a")
    pd.DataFrame({"slide_id": list(truth)}).to_csv(tmp_path / "labels.csv", index=False)
    discover_subgroups_run(
        tmp_path / "a", tmp_path / "labels.csv", tmp_path / "sg", k=[2, 3], resamples=3, umap=False
    )
    write_cohort(tmp_path / "b", per_group=2, encoder="enc_b")
    with pytest.raises(FeatureFileError, match="fitted on enc_a .*--encoder enc_a"):
        assign_subgroups_run(tmp_path / "sg", tmp_path / "b")
    write_cohort(tmp_path / "c", per_group=2, dim=6, encoder="enc_a")
    with pytest.raises(FeatureFileError, match="6-d"):
        assign_subgroups_run(tmp_path / "sg", tmp_path / "c")


def test_tme_input_describes_groups_and_refuses_outcome_columns(tmp_path):
    table, truth = planted_table(k=2, per_group=10, dims=3, seed=4)
    tme = pd.DataFrame(
        {
            "slide_id": table.index,
            "fraction_tumour": table.c0 / 20 + 0.5,
            "lymphocytes_per_mm2": 100 + 30 * table.c1,
            "stroma_x": table.c2,
            "immune_phenotype": np.where(truth == 0, "inflamed", "desert"),
        }
    )
    tme.to_csv(tmp_path / "tme.csv", index=False)
    labels = pd.DataFrame({"slide_id": table.index, "response": truth})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    run = discover_subgroups_run(
        tmp_path / "tme.csv",
        tmp_path / "labels.csv",
        tmp_path / "sg",
        input_kind="tme",
        k=[2, 3],
        resamples=5,
        umap=False,
    )
    assert run.discovery.model.k == 2
    profile = pd.read_csv(tmp_path / "sg" / "group_tme.csv").set_index("group")
    big = profile["fraction_tumour"].idxmax()
    assert profile.loc[big, "immune_phenotype_inflamed"] == 1.0
    assert profile["n_slides"].sum() == 20
    (test,) = run.tests
    assert test["test"] == "chi2" and test["p_value"] < 1e-3  # response follows the groups
    tme["response"] = truth
    tme.to_csv(tmp_path / "tme.csv", index=False)
    with pytest.raises(InvalidParameterError, match="must not see outcomes"):
        discover_subgroups_run(
            tmp_path / "tme.csv",
            tmp_path / "labels.csv",
            tmp_path / "x",
            input_kind="tme",
            k=[2],
            resamples=2,
            umap=False,
        )


@pytest.mark.slow
def test_cli_discover_and_assign(tmp_path, capsys):
    from wsi.cli import main

    truth = write_cohort(tmp_path / "features" / "enc")
    _labels_csv(tmp_path / "labels.csv", truth, hazard=(1.0, 4.0, 1.0))
    rc = main(
        [
            "subgroups",
            "discover",
            "--features",
            str(tmp_path / "features" / "enc"),
            "--labels",
            str(tmp_path / "labels.csv"),
            "--out",
            str(tmp_path / "sg"),
            "--k",
            "2..5",
            "--survival",
            "os_months:os_event",
            "--resamples",
            "6",
        ]
    )
    assert rc == 0
    assert "k = 3 (by stability)" in capsys.readouterr().out
    assert (tmp_path / "sg" / "umap.png").stat().st_size > 1000
    rc = main(
        [
            "subgroups",
            "assign",
            "--model",
            str(tmp_path / "sg" / "model.json"),
            "--features",
            str(tmp_path / "features" / "enc"),
            "--out",
            str(tmp_path / "new.csv"),
        ]
    )
    assert rc == 0 and len(pd.read_csv(tmp_path / "new.csv")) == 30
    assert (
        main(
            [
                "subgroups",
                "discover",
                "--features",
                str(tmp_path / "features" / "enc"),
                "--labels",
                str(tmp_path / "labels.csv"),
                "--out",
                str(tmp_path / "x"),
                "--k",
                "2..20",
            ]
        )
        == 2
    )
    assert "2 × k" in capsys.readouterr().err


def test_small_cell_chi_square_uses_permutations_and_matches_fisher():
    """2 × 2 with small counts: the permutation p is close to Fisher's exact test (scipy)."""
    from scipy.stats import fisher_exact

    table = pd.DataFrame(
        {"group": [1] * 8 + [2] * 8, "response": ["y"] * 6 + ["n"] * 2 + ["y"] * 1 + ["n"] * 7}
    )
    (test,) = associate(table, targets=["response"])
    assert test["p_method"] == "permutation"
    exact = fisher_exact([[6, 2], [1, 7]]).pvalue
    assert test["p_value"] == pytest.approx(exact, abs=0.01)


def test_mosaic_shows_tiles_of_the_slides_nearest_each_centre(tmp_path):
    from PIL import Image

    from tests.conftest import write_reference_slide

    rng = np.random.default_rng(0)
    (tmp_path / "f").mkdir()
    (tmp_path / "slides").mkdir()
    ids = []
    for i in range(8):
        sid = f"s{i}"
        write_reference_slide(tmp_path / "slides" / f"{sid}.tiff", 0.5)
        coords = np.array([[448 + 224 * c, 224 + 224 * r] for r in range(3) for c in range(4)])
        rows = (rng.normal(size=(12, 4)) + (8.0 if i < 4 else -8.0)).astype(np.float32)
        with FeatureWriter(
            tmp_path / "f" / f"{sid}.h5", coords, ATTRS, {}, 4, {"encoder": "enc"}
        ) as w:
            w.write(0, rows)
            w.commit()
        ids.append(sid)
    pd.DataFrame({"slide_id": ids}).to_csv(tmp_path / "labels.csv", index=False)
    run = discover_subgroups_run(
        tmp_path / "f",
        tmp_path / "labels.csv",
        tmp_path / "sg",
        k=[2],
        resamples=3,
        umap=False,
        slides=[tmp_path / "slides"],
    )
    assert run.discovery.model.k == 2
    for g in (1, 2):
        with Image.open(tmp_path / "sg" / f"mosaic_group_{g}.png") as image:
            assert image.width == 3 * (224 + 4) + 4  # 3 tiles per slide, one slide per row
            assert image.height > 3 * 224  # 3 slides nearest the centre
