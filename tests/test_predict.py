"""``wsi predict`` as a function: its CSVs are written atomically."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import models
from models.training import TrainConfig
from wsi.pipeline.predict import predict_run
from wsi.store.h5 import FeatureWriter

D = 8
ATTRS = {"patch_size": 224, "patch_level": 0, "downsample": [1.0, 1.0], "name": "s"}


@pytest.fixture
def trained(tmp_path):
    """A features folder of 4 slides (5 tiles each) and a checkpoint trained on it."""
    rng = np.random.default_rng(0)
    feats = tmp_path / "features"
    bags = []
    for i in range(4):
        x = rng.normal(size=(5, D)).astype(np.float32)
        coords = np.stack([np.arange(5) * 224, np.zeros(5)], axis=1)
        with FeatureWriter(feats / f"s{i}.h5", coords, ATTRS, {}, D, {"encoder": "enc"}) as w:
            w.write(0, x)
            w.commit()
        bags.append(x)
    labels = pd.DataFrame({"slide_id": [f"s{i}" for i in range(4)], "y": ["a", "b"] * 2})
    config = TrainConfig(epochs=1, hidden=8, val_fraction=0)
    model = models.train(bags, labels, classify=["y"], config=config, encoder="enc", progress=False)
    return model.save(tmp_path / "model.pt"), feats


def _torn_to_csv(self, path_or_buf=None, *args, **kwargs):
    """Write half a CSV to the path, then die (a full disk, a kill)."""
    with open(path_or_buf, "w") as f:
        f.write("slide_id,y_pr")
    raise OSError("disk full")


def test_predict_writes_its_csvs_whole(trained, tmp_path):
    checkpoint, feats = trained
    frame = predict_run(
        checkpoint,
        feats,
        tmp_path / "out" / "pred.csv",
        attention_dir=tmp_path / "att",
        progress=False,
    )
    assert pd.read_csv(tmp_path / "out" / "pred.csv")["slide_id"].tolist() == list(frame.slide_id)
    assert sorted(p.name for p in (tmp_path / "att").iterdir()) == [f"s{i}.csv" for i in range(4)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pred.csv"]


def test_an_interrupted_predict_leaves_no_csv_and_no_temporary(trained, tmp_path, monkeypatch):
    checkpoint, feats = trained
    out = tmp_path / "out"
    monkeypatch.setattr(pd.DataFrame, "to_csv", _torn_to_csv)
    with pytest.raises(OSError, match="disk full"):
        predict_run(checkpoint, feats, out / "pred.csv", progress=False)
    assert list(out.iterdir()) == []  # neither pred.csv nor .pred.csv.tmp-*
    with pytest.raises(OSError, match="disk full"):
        predict_run(checkpoint, feats, None, attention_dir=tmp_path / "att", progress=False)
    assert list((tmp_path / "att").iterdir()) == []


def test_an_interrupted_predict_keeps_the_previous_csv(trained, tmp_path, monkeypatch):
    checkpoint, feats = trained
    path = tmp_path / "pred.csv"
    path.write_text("slide_id\nold\n")
    monkeypatch.setattr(pd.DataFrame, "to_csv", _torn_to_csv)
    with pytest.raises(OSError, match="disk full"):
        predict_run(checkpoint, feats, path, progress=False)
    assert path.read_text() == "slide_id\nold\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features", "model.pt", "pred.csv"]


def test_a_compressed_out_name_gets_a_compressed_csv(trained, tmp_path):
    checkpoint, feats = trained
    frame = predict_run(checkpoint, feats, tmp_path / "pred.csv.gz", progress=False)
    assert (tmp_path / "pred.csv.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip magic
    assert pd.read_csv(tmp_path / "pred.csv.gz")["slide_id"].tolist() == list(frame.slide_id)
