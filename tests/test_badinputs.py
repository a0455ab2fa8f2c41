"""The bad-input corpus (``tests/badinputs``): every broken slide, labels table and feature
file raises exactly its :mod:`wsi.errors` class with a message naming the file and the fix,
and the CLI turns each into one printed line and a manifest row while the rest finish."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import wsi
from tests.badinputs import (
    HUGE_SIDE_PX,
    BadInput,
    make_corpus,
    write_good_slide,
    write_sparse_slide,
)
from tests.conftest import read_manifest
from wsi.cli import main
from wsi.errors import FeatureFileError, WsiError
from wsi.store.h5 import FeatureBag, FeatureWriter, read_tile_file

REPO = Path(__file__).resolve().parents[1]


def _cases_for_ids() -> list[BadInput]:
    with tempfile.TemporaryDirectory() as tmp:
        return make_corpus(tmp)


CASES = _cases_for_ids()


def _ids(api: str) -> list[str]:
    return [f"{c.kind}:{c.name}" for c in CASES if c.api == api]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BadInput]:
    folder = tmp_path_factory.mktemp("corpus")
    cases = make_corpus(folder)
    yield {f"{c.kind}:{c.name}": c for c in cases}
    for c in cases:  # let pytest remove what chmod 000 protects
        if c.kind == "no-permission" and not c.skip:
            c.path.chmod(0o600)


def exercise_slide(path: Path) -> wsi.TileGrid:
    """What a pipeline does with a slide: open, thumbnail, tissue + tile grid, tile reads."""
    with wsi.open_slide(path) as slide:
        slide.get_thumbnail(256)
        grid = wsi.tile(slide, mpp=0.5, size=224, min_tissue=0)
        for i in (0, len(grid) - 1):
            assert grid.read(i).shape == (224, 224, 3)
        return grid


def _assert_named_and_fixed(case: BadInput, error: BaseException) -> None:
    message = str(error)
    assert type(error) is case.error, f"{case.kind}: {type(error).__name__}: {message}"
    for fragment in case.message:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message


# --------------------------------------------------------------------------- the corpus


def test_corpus_has_the_kinds_asked_for_and_stays_small(tmp_path):
    cases = make_corpus(tmp_path)
    kinds = {c.kind for c in cases}
    assert len(kinds) >= 15
    assert {
        "truncated-tiff",
        "random-bytes",
        "zero-size",
        "corrupt-jpeg-tiles",
        "wrong-size-level",
        "absurd-mpp",
        "too-large-level",
        "no-permission",
        "symlink-loop",
        "directory-named-slide",
        "non-utf8-name",
        "labels-duplicate-conflict",
        "labels-bom",
        "labels-semicolon-mixed",
        "features-truncated",
        "features-wrong-shape",
    } <= kinds
    assert len([c for c in cases if c.kind == "truncated-tiff"]) == 5
    assert {c.note.split()[-1] for c in cases if c.kind == "absurd-mpp"} >= {"0.0", "1e6", "nan"}
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert sum(p.stat().st_size for p in files) < 5_000_000
    for c in cases:
        assert c.skip or os.path.lexists(c.path), c


# --------------------------------------------------------------------------- library calls


@pytest.mark.parametrize("key", _ids("slide"))
def test_slide_case_raises_its_error(corpus, key):
    case = corpus[key]
    if case.skip:
        pytest.skip(case.skip)
    if case.error is None:
        pytest.skip("works: see test_too_large_level_is_tiled_in_bounded_memory")
    with pytest.raises(WsiError) as caught:
        exercise_slide(case.path)
    _assert_named_and_fixed(case, caught.value)


@pytest.mark.parametrize("key", _ids("labels"))
def test_labels_case(corpus, key):
    case = corpus[key]
    if case.error is not None:
        with pytest.raises(WsiError) as caught:
            wsi.read_labels(case.path)
        _assert_named_and_fixed(case, caught.value)
        return
    table = wsi.read_labels(case.path)
    assert table["slide_id"].tolist() == ["s1", "s2"]
    assert table["type"].tolist() == ["tumour", "normal"]
    if "score" in table:
        assert table["score"].tolist() == [0.5, 1.25]


@pytest.mark.parametrize("key", _ids("features"))
def test_feature_case_raises_its_error(corpus, key):
    case = corpus[key]
    with pytest.raises(WsiError) as caught:
        FeatureBag(case.path).load()
    _assert_named_and_fixed(case, caught.value)
    if case.kind == "features-missing-dataset":
        assert read_tile_file(case.path).features is None  # a valid coords file
        return
    with pytest.raises(FeatureFileError, match=case.path.name):
        read_tile_file(case.path)


_BOUNDED = """
import json, resource, sys
limit = int(sys.argv[2]) << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import numpy as np
import wsi
with wsi.open_slide(sys.argv[1]) as slide:
    thumb = slide.get_thumbnail(1024)
    mask = wsi.detect_tissue(slide)
    grid = wsi.tile(slide, mpp=0.5, size=224, min_tissue=0, mask=mask)
    tiles = [grid.read(i) for i in (0, len(grid) // 2, len(grid) - 1)]
    print(json.dumps({
        "dimensions": slide.dimensions, "thumbnail": list(thumb.size), "mask": mask.array.shape,
        "tissue": mask.tissue_fraction, "tiles": len(grid), "level": grid.level,
        "tile_min": int(min(t.min() for t in tiles)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))
"""


@pytest.mark.slow
def test_too_large_level_is_tiled_in_bounded_memory(corpus):
    """A 200 000² px slide (120 GB of RGB at level 0) is thumbnailed, masked, tiled and
    read under a 2.5 GiB address-space limit: no full level is ever read."""
    case = corpus["too-large-level:too-large-level.tiff"]
    limit_mb = 2560
    done = subprocess.run(
        [sys.executable, "-c", _BOUNDED, str(case.path), str(limit_mb)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["dimensions"] == [HUGE_SIDE_PX, HUGE_SIDE_PX]
    assert result["thumbnail"] == [1024, 1024]
    assert result["mask"] == [4096, 4096] and result["tissue"] == 0.0
    assert result["tiles"] == (HUGE_SIDE_PX // 448) ** 2  # 446² tiles of 448 level-0 px
    assert result["level"] == 0 and result["tile_min"] == 255  # empty tiles read as white
    assert result["peak_rss_mb"] < limit_mb
    level0_mb = HUGE_SIDE_PX**2 * 3 / 2**20
    assert level0_mb > 40 * limit_mb


def test_thumbnail_of_a_level_without_pyramid_is_read_in_blocks(tmp_path):
    """65 536 x 512 px in one level, its first 512-px tile coloured: a thumbnail at 1024
    level px per output px goes through a finer pass read in column blocks (no read spans
    the level), and averages as one read of the whole footprint would."""
    colour = np.array([200, 110, 170])
    path = write_sparse_slide(
        tmp_path / "wide.tiff", 65536, 512, tile=512, filled={(0, 0): tuple(colour)}
    )
    with wsi.open_slide(path) as slide:
        thumb = slide.read_thumbnail(1024.0)
    assert thumb.shape == (1, 64, 3)
    # output pixel 0 covers [0, 1024)²: a quarter of it is the tile, the rest white
    assert np.abs(thumb[0, 0] - (0.25 * colour + 0.75 * 255)).max() <= 2
    assert (thumb[0, 1:] == 255).all()


# --------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_cli_tile_over_the_slide_corpus(tmp_path, capsys):
    cases = make_corpus(tmp_path / "corpus")
    slides = tmp_path / "corpus" / "slides"
    for c in cases:  # reported by its own test below until wsi/pipeline/batch.py can write its row
        if c.kind == "non-utf8-name" and not c.skip:
            c.path.unlink()
    write_good_slide(slides / "good-a.tiff")
    write_good_slide(slides / "good-b.svs", flavour="svs")
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["tile", str(slides), "--out", str(out), "--quiet"])
    assert code == 1
    rows = read_manifest(out)
    expected = {
        c.path.name.rsplit(".", 1)[0]: c
        for c in cases
        if c.api == "slide" and not c.skip and c.kind != "non-utf8-name"
    }
    assert set(rows) == set(expected) | {"good-a", "good-b"}
    for good in ("good-a", "good-b"):
        assert rows[good]["status"] == "ok" and int(rows[good]["n_tiles"]) > 0
    for slide_id, case in expected.items():
        row = rows[slide_id]
        assert row["status"] == case.cli_status, (slide_id, row)
        if case.cli_status == "failed":
            assert case.path.name in row["error"] and "\n" not in row["error"]
            assert not row["error"].startswith("internal error"), row["error"]
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err
    failed_lines = [line for line in printed.out.splitlines() if ": failed: " in line]
    failed = sorted(s for s, c in expected.items() if c.cli_status == "failed")
    assert sorted(line.split(": failed: ")[0] for line in failed_lines) == failed


def test_cli_tile_reports_a_non_utf8_name(corpus, tmp_path, capsys):
    case = corpus["non-utf8-name:caf\\xe9-latin1.tiff"]
    if case.skip:
        pytest.skip(case.skip)
    out = tmp_path / "out"
    code = main(["tile", str(case.path), "--out", str(out), "--quiet"])
    assert code == 1
    row = read_manifest(out)["caf\\xe9-latin1"]
    assert row["status"] == "failed" and "rename the file to UTF-8" in row["error"]
    assert "caf\\xe9-latin1: failed: " in capsys.readouterr().out


def _write_bag(path: Path, label: int, rng: np.random.Generator) -> None:
    n = 30
    rows = rng.normal(size=(n, 16)).astype(np.float32)
    rows[: n // 3, 0] += 3.0 * label
    coords = np.stack([np.arange(n) * 224, np.zeros(n)], axis=1)
    attrs = {"patch_size": 224, "patch_level": 0, "downsample": [1.0, 1.0], "name": path.stem}
    with FeatureWriter(path, coords, attrs, {}, 16, {"encoder": "enc"}) as writer:
        writer.write(0, rows)
        writer.commit()


@pytest.fixture(scope="module")
def feature_folder(corpus, tmp_path_factory):
    """8 good 16-d bags (g0..g7, two classes) and every feature case of the corpus."""
    folder = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    labels = []
    for i in range(8):
        _write_bag(folder / f"g{i}.h5", i % 2, rng)
        labels.append({"slide_id": f"g{i}", "patient_id": f"p{i}", "type": "ab"[i % 2]})
    bad = {}
    for case in corpus.values():
        if case.api == "features":
            shutil.copy(case.path, folder / case.path.name)
            bad[case.path.stem] = case
            labels.append({"slide_id": case.path.stem, "patient_id": case.path.stem, "type": "a"})
    csv = folder.parent / "labels.csv"
    pd.DataFrame(labels).to_csv(csv, index=False)
    return folder, csv, bad


def test_load_cohort_leaves_out_unreadable_feature_files(feature_folder):
    folder, labels, bad = feature_folder
    with pytest.warns(UserWarning, match=f"{len(bad)} labelled slides have unreadable"):
        cohort = wsi.load_cohort(folder, labels, targets=["type"])
    assert cohort.slide_ids == [f"g{i}" for i in range(8)]
    assert set(cohort.unreadable) == set(bad)
    for slide_id, message in cohort.unreadable.items():
        assert f"{slide_id}.h5" in message and "wsi embed" in message
    assert "delete them and re-run `wsi embed`" in cohort.report()
    with pytest.warns(UserWarning):
        streamed = wsi.load_cohort(folder, labels, cache=False)
    # streamed bags are checked when read: the NaN file opens, then fails on load
    assert "nan-row" in streamed.slide_ids and "nan-row" not in streamed.unreadable
    with pytest.raises(FeatureFileError, match="nan-row.h5: NaN or infinite"):
        streamed.bags[streamed.slide_ids.index("nan-row")]


def test_cli_train_and_predict_finish_the_good_slides(feature_folder, tmp_path, capsys):
    folder, labels, bad = feature_folder
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            [
                "train",
                "--features",
                str(folder),
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
    assert code == 1  # trained on the good slides; the bad files are reported
    printed = capsys.readouterr().out
    left_out = [line for line in printed.splitlines() if ": left out: " in line]
    assert sorted(line.split(":")[0] for line in left_out) == sorted(bad)
    assert (run / "model.pt").exists() and (run / "metrics.json").exists()

    out_csv, attention = tmp_path / "pred.csv", tmp_path / "att"
    code = main(
        [
            "predict",
            "--checkpoint",
            str(run / "model.pt"),
            "--features",
            str(folder),
            "--out",
            str(out_csv),
            "--attention",
            str(attention),
            "--quiet",
        ]
    )
    assert code == 1
    printed = capsys.readouterr().out
    failed_lines = [line for line in printed.splitlines() if ": failed: " in line]
    assert sorted(line.split(":")[0] for line in failed_lines) == sorted(bad)
    assert "8 slides predicted, " + f"{len(bad)} failed" in printed
    pred = pd.read_csv(out_csv, keep_default_na=False)
    assert len(pred) == 8 + len(bad)
    good = pred[pred["error"] == ""]
    assert sorted(good["slide_id"]) == [f"g{i}" for i in range(8)]
    assert set(good["type_pred"]) <= {"a", "b"}
    assert good["type_prob_a"].astype(float).between(0, 1).all()
    for _, row in pred[pred["error"] != ""].iterrows():
        assert f"{row['slide_id']}.h5" in row["error"] and row["type_pred"] == ""
    assert sorted(p.stem for p in attention.glob("*.csv")) == sorted(good["slide_id"])


@pytest.mark.parametrize(
    "key", [f"{c.kind}:{c.name}" for c in CASES if c.api == "labels" and c.error is not None]
)
def test_cli_train_labels_case_is_one_line_exit_2(corpus, feature_folder, key, tmp_path, capsys):
    case = corpus[key]
    folder, _, _ = feature_folder
    code = main(
        [
            "train",
            "--features",
            str(folder),
            "--labels",
            str(case.path),
            "--out",
            str(tmp_path / "run"),
            "--folds",
            "2",
            "--classify",
            "type",
            "--epochs",
            "1",
            "--quiet",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wsi train: error: ")
    for fragment in case.message:
        assert fragment in err[0]
    assert not (tmp_path / "run").exists()
