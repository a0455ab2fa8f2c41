"""The public per-slide step: what a Ray task (or a SLURM array task) runs for one slide."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests import tiny_encoders
from tests.conftest import TISSUE_TILES, write_reference_slide
from wsi.pipeline.embed import embed_archive
from wsi.pipeline.settings import EmbedSettings
from wsi.pipeline.slide_step import embed_slide
from wsi.store.folder import take_slide
from wsi.tiling import TileOptions

tiny_encoders.register()


@pytest.fixture
def slides(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    write_reference_slide(d / "a.tiff", 0.25, texture=12.0)
    write_reference_slide(d / "b.svs", 0.5, flavour="svs", texture=12.0)
    return d


def test_embed_slide_writes_what_a_run_writes_without_a_manifest(slides, tmp_path, monkeypatch):
    settings = EmbedSettings(encoder="tiny", batch_size=5, workers=0, progress=False)
    rows = [
        embed_slide(slides / name, tmp_path / "steps", settings) for name in ("a.tiff", "b.svs")
    ]
    reference = embed_archive(
        [slides], tmp_path / "ref", encoder="tiny", batch_size=5, workers=0, progress=False
    )
    assert (
        [(r["slide_id"], r["status"], r["n_tiles"]) for r in rows]
        == [(r["slide_id"], r["status"], r["n_tiles"]) for r in reference]
        == [("a", "ok", TISSUE_TILES), ("b", "ok", TISSUE_TILES)]
    )
    assert not (tmp_path / "steps" / "manifest.csv").exists()  # the caller collects rows
    for sid in "ab":
        with (
            h5py.File(tmp_path / f"steps/features/tiny/{sid}.h5") as f,
            h5py.File(tmp_path / f"ref/features/tiny/{sid}.h5") as g,
        ):
            for name in ("features", "coords", "tissue_fraction"):
                assert np.array_equal(f[name][()], g[name][()]), name
        assert (tmp_path / f"steps/qc/{sid}.png").exists()

    def no_model(*args, **kwargs):
        raise AssertionError("a done slide must not load the model")

    monkeypatch.setattr("wsi.pipeline.settings.resolve_encoder", no_model)
    again = embed_slide(slides / "a.tiff", tmp_path / "steps", settings)
    assert (again["status"], again["n_tiles"]) == ("ok", TISSUE_TILES)


def test_embed_slide_fails_a_bad_slide_in_its_row(tmp_path):
    (tmp_path / "x.svs").write_text("not a slide")
    row = embed_slide(
        tmp_path / "x.svs", tmp_path / "out", EmbedSettings(encoder="tiny", progress=False)
    )
    assert row["status"] == "failed" and "x.svs" in row["error"]


def test_embed_slide_waits_for_a_slide_another_process_holds(slides, tmp_path):
    import threading
    import time

    out = tmp_path / "out"
    held = take_slide(out, "a")
    released = []

    def release_later():
        time.sleep(0.8)
        released.append(time.time())
        held.release()

    threading.Thread(target=release_later).start()
    row = embed_slide(
        slides / "a.tiff",
        out,
        EmbedSettings(encoder="tiny", progress=False, tiling=TileOptions(size=112)),
    )
    assert released and row["status"] == "ok"
    assert (out / "features/tiny/a.h5").stat().st_mtime >= released[0] - 0.01


def test_settings_repr_is_one_line():
    text = repr(EmbedSettings(encoder="tiny", batch_size=8, tiling=TileOptions(mpp=1.0)))
    assert text == (
        "EmbedSettings(encoder='tiny', tiles 224 px at 1 µm/px, batch 8, "
        "device auto, workers auto, lanes auto, skip done)"
    )


def test_ray_runner_and_slide_step_do_not_import_the_embed_module():
    code = (
        "import sys, wsi.pipeline.ray_runner, wsi.pipeline.slide_step; "
        "assert 'wsi.pipeline.embed' not in sys.modules, 'import cycle'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
