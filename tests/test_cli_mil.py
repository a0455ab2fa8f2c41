import csv
import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests import tiny_encoders
from tests.conftest import write_reference_slide
from wsi.cli import main
from wsi.store.h5 import FeatureWriter

tiny_encoders.register()
D = 16
ATTRS = {"patch_size": 224, "patch_level": 0, "downsample": [1.0, 1.0], "name": "s"}


def write_cohort(folder, n=36, seed=0, dim=D, encoder="enc"):
    """Bags where 'tumour' slides hold some tiles with feature 0 high, and the immune score
    is the fraction of tiles with feature 1 high."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        tiles = int(rng.integers(30, 60))
        x = rng.normal(0, 1, (tiles, dim)).astype(np.float32)
        label = "tumour" if i % 2 else "normal"
        if label == "tumour":
            x[: tiles // 5, 0] += 4.0
        frac = float(rng.uniform(0, 0.6))
        x[: int(frac * tiles), 1] += 4.0
        x = x[rng.permutation(tiles)]
        coords = np.stack([np.arange(tiles) * 224, np.zeros(tiles)], axis=1)
        with FeatureWriter(
            folder / f"s{i:02d}.h5", coords, ATTRS, {}, dim, {"encoder": encoder}
        ) as w:
            w.write(0, x)
            w.commit()
        rows.append(
            {
                "slide_id": f"s{i:02d}",
                "patient_id": f"p{i // 2}",
                "type": label,
                "immune": "" if i == 5 else round(frac, 4),
            }
        )
    return rows


@pytest.fixture
def cohort(tmp_path):
    feats = tmp_path / "features"
    rows = write_cohort(feats)
    labels = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    return feats, labels


@pytest.mark.slow
def test_train_predict_end_to_end(cohort, tmp_path, capsys):
    feats, labels = cohort
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--features",
            str(feats),
            "--labels",
            str(labels),
            "--out",
            str(run),
            "--folds",
            "3",
            "--classify",
            "type",
            "--regress",
            "immune",
            "--epochs",
            "15",
            "--quiet",
        ]
    )
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "abmil" and metrics["folds"] == 3
    assert metrics["tasks"]["type"]["kind"] == "classification"
    assert metrics["tasks"]["type"]["classes"] == ["normal", "tumour"]
    assert metrics["tasks"]["type"]["auc_macro"] >= 0.9
    assert metrics["tasks"]["immune"]["spearman"] >= 0.7
    assert len(metrics["tasks"]["type"]["per_fold"]) == 3
    with open(run / "predictions.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[:2] == ["slide_id", "fold"]
    assert {"type_true", "type_pred", "type_prob_tumour", "immune_true", "immune_pred"} <= set(
        header
    )
    assert (run / "model.pt").exists() and (run / "fold_0" / "model.pt").exists()
    printed = capsys.readouterr().out
    assert "auc_macro" in printed and "spearman" in printed

    out_csv = tmp_path / "pred.csv"
    att = tmp_path / "att"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run / "model.pt"),
                "--features",
                str(feats),
                "--out",
                str(out_csv),
                "--attention",
                str(att),
                "--quiet",
            ]
        )
        == 0
    )
    pred = pd.read_csv(out_csv)
    assert (
        len(pred) == 36
        and (pred["type_pred"] == np.where(np.arange(36) % 2, "tumour", "normal")).mean() >= 0.9
    )
    tile_att = pd.read_csv(att / "s01.csv")
    assert list(tile_att.columns) == ["x", "y", "attention_type", "attention_immune"]
    assert tile_att["attention_type"].sum() == pytest.approx(1.0, abs=1e-4)


def test_predict_refuses_other_dims_and_encoders(cohort, tmp_path, capsys):
    feats, labels = cohort
    run = tmp_path / "run"
    main(
        [
            "train",
            "--features",
            str(feats),
            "--labels",
            str(labels),
            "--out",
            str(run),
            "--folds",
            "2",
            "--classify",
            "type",
            "--epochs",
            "2",
            "--quiet",
        ]
    )
    other = tmp_path / "other"
    write_cohort(other, n=4, dim=8)
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run / "model.pt"),
                "--features",
                str(other),
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 2
    )
    assert "16-d" in capsys.readouterr().err
    other_enc = tmp_path / "other_enc"
    write_cohort(other_enc, n=4, encoder="uni")
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run / "model.pt"),
                "--features",
                str(other_enc),
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 2
    )
    assert "encoder 'enc'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "edit, args, message",
    [
        (lambda t: t.rename(columns={"slide_id": "slide"}), ["--classify", "type"], "slide_id"),
        (lambda t: t, ["--classify", "nope"], "nope"),
        (
            lambda t: t.assign(type=["rare" if i == 0 else "normal" for i in range(len(t))]),
            ["--classify", "type"],
            "fewer folds or merge",
        ),
        (lambda t: t.assign(immune=""), ["--regress", "immune"], "immune"),
        (lambda t: t.assign(immune="high"), ["--regress", "immune"], "high"),
    ],
)
def test_bad_labels_are_usage_errors(cohort, tmp_path, capsys, edit, args, message):
    feats, labels = cohort
    table = edit(pd.read_csv(labels, dtype=str, keep_default_na=False))
    bad = tmp_path / "bad.csv"
    table.to_csv(bad, index=False)
    code = main(
        [
            "train",
            "--features",
            str(feats),
            "--labels",
            str(bad),
            "--out",
            str(tmp_path / "r"),
            "--folds",
            "3",
            "--epochs",
            "1",
            "--quiet",
            *args,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.slow
def test_heatmap_of_a_slide(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(4):
        write_reference_slide(slides / f"s{i}.tiff", 0.5, texture=12.0)
    out = tmp_path / "out"
    assert (
        main(
            [
                "embed",
                str(slides),
                "--out",
                str(out),
                "--encoder",
                "tiny",
                "--quiet",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"slide_id": [f"s{i}" for i in range(4)], "grade": ["a", "b", "a", "b"]}).to_csv(
        labels, index=False
    )
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--features",
                str(out / "features" / "tiny"),
                "--labels",
                str(labels),
                "--out",
                str(run),
                "--folds",
                "2",
                "--classify",
                "grade",
                "--epochs",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    png = tmp_path / "heat" / "s0.png"
    assert (
        main(
            [
                "heatmap",
                "--checkpoint",
                str(run / "model.pt"),
                "--slide",
                str(slides / "s0.tiff"),
                "--features",
                str(out / "features/tiny/s0.h5"),
                "--out",
                str(png),
            ]
        )
        == 0
    )
    image = Image.open(png)
    assert image.size[0] > 1024  # the thumbnail's long side plus the colour bar
    geo = json.loads(png.with_suffix(".geojson").read_text())
    assert len(geo["features"]) == 12
    att = [f["properties"]["measurements"]["attention_grade"] for f in geo["features"]]
    assert sum(att) == pytest.approx(1.0, abs=1e-4)
    assert (tmp_path / "heat" / "s0_grade_top.png").exists()


def test_a_second_train_into_a_busy_run_folder_is_refused(cohort, tmp_path, capsys):
    from wsi.store.folder import FileLock

    feats, labels = cohort
    run = tmp_path / "run"
    held = FileLock.try_acquire(run / ".locks" / "run.lock")  # another wsi train is writing
    code = main(
        [
            "train",
            "--features",
            str(feats),
            "--labels",
            str(labels),
            "--out",
            str(run),
            "--folds",
            "3",
            "--classify",
            "type",
            "--epochs",
            "2",
            "--quiet",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and "another --out" in err
    assert not (run / "metrics.json").exists()
    held.release()
    assert (
        main(
            [
                "train",
                "--features",
                str(feats),
                "--labels",
                str(labels),
                "--out",
                str(run),
                "--folds",
                "3",
                "--classify",
                "type",
                "--epochs",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
