import json

import pandas as pd
import pytest

from wsi.pipeline.demo import run_demo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the whole pipeline


def test_small_demo_runs_the_whole_pipeline(tmp_path):
    result = run_demo(
        tmp_path / "demo", n_slides=12, size_px=(1792, 1344), epochs=5, progress=False
    )
    assert result.n_slides == 12 and result.n_tiles > 12
    assert set(result.seconds) == {"slides", "tile+embed", "train", "heatmaps"}
    tasks = result.metrics["tasks"]
    assert tasks["tumour_type"]["kind"] == "classification"
    assert tasks["immune_score"]["kind"] == "regression"
    assert 0.0 <= tasks["tumour_type"]["auc_macro"] <= 1.0
    labels = pd.read_csv(tmp_path / "demo" / "cohort" / "labels.csv")
    assert list(labels.columns) == ["slide_id", "patient_id", "tumour_type", "immune_score"]
    manifest = pd.read_csv(tmp_path / "demo" / "embed" / "manifest.csv")
    assert (manifest["status"] == "ok").all()
    assert (tmp_path / "demo" / "run" / "model.pt").exists()
    assert len([p for p in result.heatmaps if p.suffix == ".png"]) >= 3
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert summary["n_tiles"] == result.n_tiles
    text = result.summary()
    assert "AUC" in text and "Spearman" in text and str(tmp_path) in text
