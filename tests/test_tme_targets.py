"""Issue 14 item 6: the columns of a TME cohort table (``wsi tme profile``'s ``tme.csv``) work
as ``wsi train`` targets: densities regressed, the immune phenotype classified, the rows of
non-evaluable slides (NaN densities, empty phenotype) ignored for that task."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from wsi.cli import main
from wsi.store.h5 import FeatureWriter

ATTRS = {"patch_size": 224, "patch_level": 0, "achieved_mpp": 0.5, "name": "s"}
PHENOTYPES = ("inflamed", "excluded", "desert")


def write_tme_cohort(folder, n=12, dim=8):
    """Bags whose feature 0 is high on a fraction of tiles that sets the intratumoral density;
    every 6th slide is not evaluable (no tumour: NaN densities, no phenotype)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        tiles, density = 20, 100.0 + 150.0 * (i % 5)
        x = rng.normal(0, 1, (tiles, dim)).astype(np.float32)
        x[: int(tiles * density / 1000), 0] += 4.0
        coords = np.stack([np.arange(tiles) * 224, np.zeros(tiles)], axis=1)
        with FeatureWriter(folder / f"s{i:02d}.h5", coords, ATTRS, {}, dim, {"encoder": "e"}) as w:
            w.write(0, x)
            w.commit()
        evaluable = i % 6 != 5
        nan = float("nan")
        rows.append(
            {
                "slide_id": f"s{i:02d}",
                "fraction_tumour": 0.0 if not evaluable else 0.4,
                "fraction_stroma": 0.3,
                "tumour_area_mm2": 2.5 if evaluable else 0.0,
                "tumour_stroma_ratio": 1.3 if evaluable else nan,
                "lymphocytes_per_mm2": density * 0.8,
                "lymphocytes_per_mm2_intratumoral": density if evaluable else nan,
                "lymphocytes_per_mm2_stromal": 2 * density if evaluable else nan,
                "morisita_horn": 0.5 if evaluable else nan,
                "immune_phenotype": PHENOTYPES[i % 3] if evaluable else "",
                "evaluable": evaluable,
                "classifier_sha256": "ab" * 32,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def tme_cohort(tmp_path):
    feats = tmp_path / "features"
    table = write_tme_cohort(feats)
    table.to_csv(tmp_path / "tme.csv", index=False)
    return feats, tmp_path / "tme.csv"


def test_tme_columns_train_as_regression_and_classification_targets(
    tme_cohort, tmp_path, capsys, one_torch_thread
):
    feats, labels = tme_cohort
    run = tmp_path / "run"
    code = main([
        "train", "--features", str(feats), "--labels", str(labels), "--out", str(run),
        "--folds", "2", "--model", "meanpool", "--epochs", "2", "--quiet",
        "--regress", "lymphocytes_per_mm2_intratumoral", "tumour_stroma_ratio",
        "--classify", "immune_phenotype", "--classify", "evaluable",
    ])  # fmt: skip
    assert code == 0
    assert "'lymphocytes_per_mm2_intratumoral' known for 10 of 12" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())["tasks"]
    assert metrics["lymphocytes_per_mm2_intratumoral"]["kind"] == "regression"
    assert np.isfinite(metrics["lymphocytes_per_mm2_intratumoral"]["mae"])
    assert metrics["immune_phenotype"]["classes"] == sorted(PHENOTYPES)
    assert metrics["evaluable"]["classes"] == ["False", "True"]
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == 12
    truth = predictions.set_index("slide_id")["lymphocytes_per_mm2_intratumoral_true"]
    assert truth.isna().tolist() == [i % 6 == 5 for i in range(12)]


def test_text_columns_refused_as_regression_targets(tme_cohort, tmp_path, capsys):
    feats, labels = tme_cohort
    code = main(
        [
            "train",
            "--features",
            str(feats),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "run"),
            "--regress",
            "immune_phenotype",
            "--quiet",
        ]
    )
    assert code == 2
    assert "'immune_phenotype' has a non-numeric value 'inflamed'" in capsys.readouterr().err
