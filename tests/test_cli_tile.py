import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from tests.conftest import (
    TISSUE_TILES,
    read_manifest,
    run_together,
    shared_file,
    write_reference_slide,
)
from wsi.cli import main
from wsi.synthetic.slides import write_slide


@pytest.fixture
def archive(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    write_reference_slide(d / "good40.tiff", 0.25)
    write_reference_slide(d / "good20.svs", 0.5, flavour="svs")
    write_reference_slide(d / "nompp.tiff", 0.25, write_mpp=False)
    write_slide(d / "blank.tiff", width=1024, height=1024, mpp=0.5)
    (d / "empty.svs").write_bytes(b"")
    (d / "text.svs").write_text("hello\n")
    (d / "folder.svs").mkdir()
    return d


def test_tile_archive_with_bad_slides(archive, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["tile", str(archive), str(tmp_path / "missing.svs"), "--out", str(out), "--quiet"])
    assert code == 1
    rows = read_manifest(out)
    status = {k: v["status"] for k, v in rows.items()}
    assert status == {
        "good40": "ok",
        "good20": "ok",
        "blank": "no_tissue",
        "nompp": "failed",
        "empty": "failed",
        "text": "failed",
        "folder": "failed",
        "missing": "failed",
    }
    assert int(rows["good40"]["n_tiles"]) == int(rows["good20"]["n_tiles"]) == TISSUE_TILES
    assert rows["good40"]["mpp"] == "0.25" and rows["good40"]["mpp_source"] == "openslide"
    assert "--slide-mpp" in rows["nompp"]["error"]
    assert "empty file" in rows["empty"]["error"]
    assert "directory" in rows["folder"]["error"]
    err = capsys.readouterr()
    assert "Traceback" not in err.out + err.err
    failed_lines = [ln for ln in err.out.splitlines() if ": failed: " in ln]
    assert len(failed_lines) == 5
    with h5py.File(out / "patches" / "good40.h5") as f:
        assert f["coords"].shape == (TISSUE_TILES, 2)
        assert f["coords"].attrs["target_mpp"] == 0.5
        prov = json.loads(f.attrs["provenance"])
        assert prov["tiling"]["size"] == 224 and len(prov["slide_quickhash"]) == 64
    with h5py.File(out / "patches" / "blank.h5") as f:
        assert f["coords"].shape == (0, 2)
    qc = Image.open(out / "qc" / "good40.png")
    assert qc.size[0] >= 128
    geo = json.loads((out / "qc" / "good40.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 1
    xs = [p[0] for p in geo["features"][0]["geometry"]["coordinates"][0]]
    assert min(xs) == pytest.approx(896, abs=40) and max(xs) == pytest.approx(2688, abs=40)


def test_slide_mpp_rescues_a_slide_without_metadata(archive, tmp_path):
    out = tmp_path / "out"
    code = main(
        ["tile", str(archive / "nompp.tiff"), "--out", str(out), "--slide-mpp", "0.25", "--quiet"]
    )
    assert code == 0
    row = read_manifest(out)["nompp"]
    assert (row["status"], row["n_tiles"], row["mpp_source"]) == (
        "ok",
        str(TISSUE_TILES),
        "argument",
    )


@pytest.mark.parametrize("tolerance, native, achieved", [(None, True, 0.499), ("0", False, 0.5)])
def test_mpp_tolerance_flag_decides_native_tiles(tmp_path, tolerance, native, achieved):
    slide = write_reference_slide(tmp_path / "s0499.svs", 0.499, flavour="svs")
    out = tmp_path / "out"
    flag = [] if tolerance is None else ["--mpp-tolerance", tolerance]
    assert main(["tile", str(slide), "--out", str(out), "--quiet", *flag]) == 0
    with h5py.File(out / "patches" / "s0499.h5") as f:
        attrs = f["coords"].attrs
        assert attrs["target_mpp"] == 0.5 and attrs["achieved_mpp"] == pytest.approx(achieved)
        assert attrs["patch_size_level0"] == 224
        tiling = json.loads(f.attrs["provenance"])["tiling"]
        assert tiling["mpp_tolerance"] == (0.02 if tolerance is None else 0.0)
        assert tiling["native"] is native


def test_rerun_keeps_other_rows(archive, tmp_path):
    out = tmp_path / "out"
    main(["tile", str(archive / "good40.tiff"), "--out", str(out), "--quiet"])
    main(["tile", str(archive / "good20.svs"), "--out", str(out), "--quiet"])
    assert set(read_manifest(out)) == {"good40", "good20"}


@pytest.mark.parametrize(
    "flag", [["--mpp", "0"], ["--size", "0"], ["--min-tissue", "2"], ["--mpp-tolerance", "-1"]]
)
def test_usage_errors_exit_2(archive, tmp_path, flag, capsys):
    code = main(["tile", str(archive / "good40.tiff"), "--out", str(tmp_path / "o"), *flag])
    assert code == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_console_script_and_debug(archive, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "wsi.cli", "tile", str(archive / "text.svs"), "--out", str(out)]
    quiet = subprocess.run(cmd + ["--quiet"], capture_output=True, text=True)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr + quiet.stdout
    debug = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stdout + debug.stderr


def test_real_tcga_slide_end_to_end(tmp_path):
    svs = shared_file("small_real_wsis/tcga-cr-7395-01a-01-ts1.svs")
    out = tmp_path / "out"
    assert main(["tile", str(svs), "--out", str(out), "--quiet"]) == 1
    assert "no mpp in metadata" in read_manifest(out)["tcga-cr-7395-01a-01-ts1"]["error"]
    assert main(["tile", str(svs), "--out", str(out), "--slide-mpp", "0.25", "--quiet"]) == 0
    row = read_manifest(out)["tcga-cr-7395-01a-01-ts1"]
    assert row["status"] == "ok" and int(row["n_tiles"]) > 20
    with h5py.File(out / "patches" / "tcga-cr-7395-01a-01-ts1.h5") as f:
        assert f["coords"].attrs["patch_level"] == 1
        assert np.all(f["coords"][:, 0] >= 0)


def test_duplicate_slide_ids_fail_the_second_slide(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        write_reference_slide(tmp_path / sub / "same.tiff", 0.5)
    out = tmp_path / "out"
    code = main(["tile", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--quiet"])
    assert code == 1
    row = read_manifest(out)["same"]
    assert row["status"] == "failed" and "duplicate slide id 'same'" in row["error"]
    assert str(tmp_path / "a" / "same.tiff") in row["error"]


def _tile_process(slides, out, log, ready, go):
    """``wsi tile`` in a child whose tiling of each slide is logged ("pid slide_id") and
    slowed (0.3 s), started together with its sibling through the ``ready``/``go`` files."""
    repo = str(Path(__file__).resolve().parent.parent)
    script = (
        f"import os, sys, time, pathlib\nsys.path.insert(0, {repo!r})\n"
        "import wsi.pipeline.tile as t\nreal = t.tile_slide\n"
        "def logged(path, options):\n"
        f"    with open({str(log)!r}, 'a') as f:\n"
        "        f.write(f'{os.getpid()} {path.stem}\\n')\n"
        "    time.sleep(0.3)\n    return real(path, options)\n"
        "t.tile_slide = logged\nfrom wsi.cli import main\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists():\n    time.sleep(0.01)\n"
        f"sys.exit(main(['tile', {str(slides)!r}, '--out', {str(out)!r}, '--quiet']))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_two_tile_runs_on_one_folder_tile_every_slide_once(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for i, base in enumerate([0.25, 0.5, 0.5, 0.25, 0.5, 0.5]):
        write_reference_slide(slides / f"s{i}.tiff", base)
    out, log, go = tmp_path / "out", tmp_path / "tiled.log", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [_tile_process(slides, out, log, ready[i], go) for i in range(2)]
    outputs = run_together(procs, ready, go)
    assert [p.returncode for p in procs] == [0, 0], outputs

    tiled = [line.split() for line in log.read_text().splitlines()]
    assert sorted(sid for _, sid in tiled) == [f"s{i}" for i in range(6)]  # each slide once
    assert len({pid for pid, _ in tiled}) == 2  # and both runs did part of the work
    rows = read_manifest(out)
    assert {k: (v["status"], int(v["n_tiles"])) for k, v in rows.items()} == {
        f"s{i}": ("ok", TISSUE_TILES) for i in range(6)
    }
    assert [p for p in out.rglob(".*") if p.is_file() and ".locks" not in p.parts] == []


def _outputs(out):
    return {
        p.relative_to(out): p.stat().st_mtime_ns
        for p in out.rglob("*")
        if p.is_file() and ".locks" not in p.parts and p.name != "manifest.csv"
    }


def test_a_second_tile_run_re_tiles_nothing_and_keeps_the_rows(archive, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert main(["tile", str(archive), "--out", str(out), "--quiet"]) == 1
    first_rows, first_files = read_manifest(out), _outputs(out)
    assert first_rows["good40"]["status"] == "ok" and first_rows["blank"]["status"] == "no_tissue"

    import wsi.pipeline.tile as tile_module

    real_tile_slide = tile_module.tile_slide
    tiled = []

    def counting(path, options):
        tiled.append(path.stem)
        return real_tile_slide(path, options)

    monkeypatch.setattr(tile_module, "tile_slide", counting)
    assert main(["tile", str(archive), "--out", str(out), "--quiet"]) == 1
    # only the failed slides are tried again; the others answer from their patches files
    assert sorted(tiled) == ["empty", "folder", "nompp", "text"]
    assert _outputs(out) == first_files
    again = read_manifest(out)
    for sid in ("good40", "good20", "blank"):  # seconds included: the rows are kept
        assert again[sid] == first_rows[sid]
    for sid in ("empty", "folder", "nompp", "text"):  # failed again, same message
        assert (again[sid]["status"], again[sid]["error"]) == ("failed", first_rows[sid]["error"])

    tiled.clear()
    assert (
        main(["tile", str(archive / "good40.tiff"), "--out", str(out), "--quiet", "--size", "112"])
        == 0
    )  # other options: tiled again
    assert tiled == ["good40"]
    with h5py.File(out / "patches" / "good40.h5") as f:
        assert f["coords"].attrs["target_patch_size"] == 112
    assert read_manifest(out)["good40"]["n_tiles"] != first_rows["good40"]["n_tiles"]

    tiled.clear()
    assert main(["tile", str(archive / "good20.svs"), "--out", str(out), "--quiet", "--redo"]) == 0
    assert tiled == ["good20"]
    assert _outputs(out)[Path("patches/good20.h5")] != first_files[Path("patches/good20.h5")]
