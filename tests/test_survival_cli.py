"""``wsi train --survival`` / ``wsi predict`` / ``wsi heatmap`` on a survival head."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests import tiny_encoders
from tests.conftest import write_reference_slide
from tests.test_cli_mil import write_cohort
from wsi.cli import main

tiny_encoders.register()


@pytest.mark.slow
def test_train_and_predict_a_survival_head_end_to_end(tmp_path, capsys):
    feats = tmp_path / "features"
    rows = pd.DataFrame(write_cohort(feats, n=36))
    rng = np.random.default_rng(0)
    immune = pd.to_numeric(rows["immune"], errors="coerce").fillna(0.3).to_numpy()
    death = rng.exponential(24 * np.exp(4 * (immune - 0.3)))  # lymphocyte-rich live longer
    death = pd.Series(death).groupby(rows["patient_id"]).transform("first").to_numpy()
    rows["os_months"] = np.round(np.minimum(death, 60), 1)
    rows["os_event"] = np.where(death <= 60, "yes", "no")
    rows.loc[3, "os_months"] = -1  # a bad row: left out with a count
    rows["arm"] = np.where(np.arange(36) % 4 < 2, "drug", "control")
    labels = tmp_path / "labels.csv"
    rows.to_csv(labels, index=False)
    run = tmp_path / "run"
    code = main(["train", "--features", str(feats), "--labels", str(labels), "--out", str(run),
                 "--folds", "3", "--survival", "os_months:os_event", "--classify", "type",
                 "--treatment", "arm", "--epochs", "15", "--survival-times", "12,24",
                 "--survival-loss", "nll",
                 "--quiet"])  # fmt: skip
    assert code == 0
    entry = json.loads((run / "metrics.json").read_text())["tasks"]["os_months"]
    assert entry["kind"] == "survival" and "auc_24" in entry and "auc_36" not in entry
    assert 0.0 <= entry["c_index"] <= 1.0 and entry["c_index_ci"][0] <= entry["c_index_ci"][1]
    assert entry["n_patients"] == 18  # s03 (negative time) is left out; its patient keeps s02
    assert entry["treatment"]["p_interaction"] is not None
    assert "1 slide(s) left out" in entry["notes"][0]
    table = pd.read_csv(run / "predictions.csv")
    assert {"os_months_time", "os_months_event", "os_months_risk", "os_months_group"} <= set(
        table.columns
    )
    image = Image.open(run / "km_os_months.png")
    assert image.size[0] > 500
    out_csv = tmp_path / "pred.csv"
    assert main(["predict", "--checkpoint", str(run / "model.pt"), "--features", str(feats),
                 "--out", str(out_csv), "--quiet"]) == 0  # fmt: skip
    predicted = pd.read_csv(out_csv)
    assert set(predicted["os_months_group"]) == {"low", "high"}
    assert np.isfinite(predicted["os_months_risk"]).all()
    capsys.readouterr()


@pytest.mark.slow
def test_heatmap_draws_the_survival_branch(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(4):
        write_reference_slide(slides / f"s{i}.tiff", 0.5, texture=12.0)
    out = tmp_path / "out"
    assert main(["embed", str(slides), "--out", str(out), "--encoder", "tiny", "--quiet",
                 "--workers", "0"]) == 0  # fmt: skip
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"slide_id": [f"s{i}" for i in range(4)], "os": [5, 10, 15, 20],
                  "dead": [1, 1, 0, 1]}).to_csv(labels, index=False)  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", "--features", str(out / "features" / "tiny"), "--labels", str(labels),
                 "--out", str(run), "--folds", "2", "--survival", "os:dead", "--epochs", "2",
                 "--quiet"]) == 0  # fmt: skip
    png = tmp_path / "heat" / "s0.png"
    assert main(["heatmap", "--checkpoint", str(run / "model.pt"), "--slide",
                 str(slides / "s0.tiff"), "--features", str(out / "features/tiny/s0.h5"),
                 "--out", str(png)]) == 0  # fmt: skip
    geo = json.loads(png.with_suffix(".geojson").read_text())
    att = [f["properties"]["measurements"]["attention_os"] for f in geo["features"]]
    assert sum(att) == pytest.approx(1.0, abs=1e-4)
