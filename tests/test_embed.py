import os
import signal
import subprocess
import sys
import time
import types

import h5py
import numpy as np
import pytest
import torch

import wsi
from tests import tiny_encoders
from tests.conftest import TISSUE_TILES, read_manifest, write_reference_slide
from wsi.cli import main
from wsi.options import TileOptions
from wsi.pipeline.embed import embed, embed_archive
from wsi.synthetic.slides import write_slide

tiny_encoders.register()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def archive(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    write_reference_slide(d / "a.tiff", 0.25, texture=12.0)
    write_reference_slide(d / "b.svs", 0.5, flavour="svs", texture=12.0)
    write_reference_slide(d / "c.tiff", 0.5, texture=12.0)
    return d


def test_embed_equals_encoder_on_the_same_patches(slide_025):
    slide = wsi.open_slide(slide_025)
    grid = wsi.tile(slide, mpp=0.5, size=224)
    enc = tiny_encoders.tiny_encoder()
    feats = embed(slide, grid, enc, batch_size=5)
    assert feats.shape == (TISSUE_TILES, tiny_encoders.TINY_DIM) and feats.dtype == np.float32
    by_hand = enc(np.stack(list(grid))).numpy()
    np.testing.assert_allclose(feats, by_hand, rtol=0, atol=1e-6)
    again = embed(slide, grid, enc, batch_size=5, workers=2)
    assert np.array_equal(feats, again)  # deterministic on CPU, whatever the reader workers
    other_batches = embed(slide, grid, enc, batch_size=7)
    np.testing.assert_allclose(feats, other_batches, rtol=0, atol=1e-5)


def test_default_encoder_on_a_slide(slide_050):
    slide = wsi.open_slide(slide_050)
    grid = wsi.tile(slide, mpp=0.5, size=224)
    feats = embed(slide, grid, batch_size=6)  # efficientnet_lite0, offline weights
    assert feats.shape == (TISSUE_TILES, 1280)
    assert np.isfinite(feats).all() and feats.std() > 0.01


def test_archive_files_in_clam_layout_and_skip_done(archive, tmp_path, monkeypatch):
    out = tmp_path / "out"
    rows = embed_archive([archive], out, encoder="tiny", workers=1, progress=False, batch_size=5)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    path = out / "features" / "tiny" / "a.h5"
    with h5py.File(path) as f:  # what CLAM's and TRIDENT's loaders read
        assert f["features"].shape == (TISSUE_TILES, tiny_encoders.TINY_DIM)
        assert f["features"].dtype == np.float32
        assert f["coords"].shape == (TISSUE_TILES, 2) and f["coords"].dtype == np.int64
        assert f["features"].attrs["encoder"] == "tiny"
        assert f["coords"].attrs["patch_level"] == 0
        feats = f["features"][()]
    grid = wsi.tile(wsi.open_slide(archive / "a.tiff"), mpp=0.5, size=224)
    np.testing.assert_allclose(
        feats, tiny_encoders.tiny_encoder()(np.stack(list(grid))).numpy(), atol=1e-6
    )
    assert (out / "patches" / "a.h5").exists() and (out / "qc" / "a.png").exists()

    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "features" / "tiny").iterdir()}

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded when every slide is done")

    monkeypatch.setattr("wsi.pipeline.settings.resolve_encoder", no_model)
    rows = embed_archive([archive], out, encoder="tiny", workers=0, progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "features" / "tiny").iterdir()} == mtimes
    assert set(read_manifest(out)) == {"a", "b", "c"}


def test_changed_parameter_re_embeds(archive, tmp_path):
    out = tmp_path / "out"
    embed_archive([archive / "a.tiff"], out, encoder="tiny", workers=0, progress=False)
    first = (out / "features" / "tiny" / "a.h5").stat().st_mtime_ns
    rows = embed_archive(
        [archive / "a.tiff"],
        out,
        encoder="tiny",
        workers=0,
        progress=False,
        tiling=TileOptions(mpp=1.0, size=112),
    )
    assert rows[0]["status"] == "ok"
    assert (out / "features" / "tiny" / "a.h5").stat().st_mtime_ns != first
    with h5py.File(out / "features" / "tiny" / "a.h5") as f:
        assert f["coords"].attrs["target_mpp"] == 1.0


@pytest.mark.slow
def test_bad_slides_fail_alone_and_blank_gives_empty_features(archive, tmp_path, capsys):
    (archive / "broken.svs").write_text("not a slide")
    write_reference_slide(archive / "nompp.tiff", 0.25, write_mpp=False)
    write_slide(archive / "blank.tiff", width=800, height=800, mpp=0.5)
    out = tmp_path / "out"
    code = main(
        ["embed", str(archive), "--out", str(out), "--encoder", "tiny", "--quiet", "--workers", "1"]
    )
    assert code == 1
    status = {k: v["status"] for k, v in read_manifest(out).items()}
    assert status == {
        "a": "ok",
        "b": "ok",
        "c": "ok",
        "broken": "failed",
        "nompp": "failed",
        "blank": "no_tissue",
    }
    with h5py.File(out / "features" / "tiny" / "blank.h5") as f:
        assert f["features"].shape == (0, tiny_encoders.TINY_DIM)
    assert "Traceback" not in capsys.readouterr().out


def test_corrupt_bytes_in_one_slide_leave_the_others_embedded(archive, tmp_path):
    data = bytearray((archive / "c.tiff").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4000] = b"\xff" * 4000  # inside level-0 JPEG tiles
    (archive / "c.tiff").write_bytes(bytes(data))
    out = tmp_path / "out"
    rows = embed_archive([archive], out, encoder="tiny", workers=0, progress=False)
    status = {r["slide_id"]: r["status"] for r in rows}
    assert status["a"] == status["b"] == "ok"
    assert not list((out / "features" / "tiny").glob(".*tmp*"))


def test_unknown_encoder_is_a_usage_error(archive, tmp_path, capsys):
    code = main(["embed", str(archive), "--out", str(tmp_path / "o"), "--encoder", "nope"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown encoder 'nope'" in err and "efficientnet_lite0" in err


@pytest.mark.slow
@pytest.mark.slow
def test_killed_run_resumes_only_the_unfinished_slide(archive, tmp_path):
    out = tmp_path / "out"
    script = (
        f"import sys; sys.path.insert(0, {REPO!r}); from tests import tiny_encoders; "
        "tiny_encoders.register(); from wsi.cli import main; "
        f"sys.exit(main(['embed', {str(archive)!r}, '--out', {str(out)!r}, '--encoder', 'tiny_slow', "
        "'--quiet', '--workers', '0', '--batch-size', '2']))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    feats = out / "features" / "tiny_slow"
    deadline = time.time() + 120
    while time.time() < deadline:
        if (feats / "a.h5").exists() and list(feats.glob(".b.h5.tmp-*")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (feats / "a.h5").exists() and not (feats / "b.h5").exists()
    assert list(feats.glob(".b.h5.tmp-*"))  # the half-written slide is only a temporary
    a_mtime = (feats / "a.h5").stat().st_mtime_ns

    rows = embed_archive([archive], out, encoder="tiny_slow", workers=0, progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    assert (feats / "a.h5").stat().st_mtime_ns == a_mtime  # finished slide untouched
    assert not list(feats.glob(".*tmp*"))  # stale temporary cleaned up
    assert set(read_manifest(out)) == {"a", "b", "c"}
    reference = embed_archive(
        [archive], tmp_path / "ref", encoder="tiny", workers=0, progress=False
    )
    assert [r["n_tiles"] for r in reference] == [r["n_tiles"] for r in rows]
    with h5py.File(feats / "b.h5") as f, h5py.File(tmp_path / "ref/features/tiny/b.h5") as g:
        assert np.array_equal(f["features"][()], g["features"][()])


def _corrupt_level0_tile(path, x, y):
    """Overwrite the JPEG bytes of the level-0 tile holding level-0 pixel (x, y)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        per_row = -(-page.imagewidth // page.tilewidth)
        index = (y // page.tilelength) * per_row + x // page.tilewidth
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as f:
        f.seek(offset + count // 3)
        f.write(b"\x00\xff\xd9" * (count // 6))


def test_a_corrupt_tile_is_skipped_and_counted(tmp_path):
    (tmp_path / "slides").mkdir()
    path = write_reference_slide(
        tmp_path / "slides" / "c.tiff", 0.5, texture=12.0, downsamples=(1, 4)
    )
    _corrupt_level0_tile(path, 700, 400)  # inside the tissue, under one 224-px tile or two
    out = tmp_path / "out"
    rows = embed_archive(
        [path], out, encoder="tiny", workers=0, progress=False, max_failed_fraction=0.5
    )
    row = rows[0]
    assert row["status"] == "ok"
    assert 1 <= row["failed_tiles"] <= 4 and row["n_tiles"] == TISSUE_TILES - row["failed_tiles"]
    assert "undecodable" in row["error"]
    with h5py.File(out / "features" / "tiny" / "c.h5") as f:
        assert f["features"].shape[0] == f["coords"].shape[0] == row["n_tiles"]
        assert f["tissue_fraction"].shape[0] == row["n_tiles"]
        assert np.isfinite(f["features"][()]).all()
    strict = embed_archive(
        [path],
        tmp_path / "strict",
        encoder="tiny",
        workers=0,
        progress=False,
        max_failed_fraction=0.0,
    )
    assert strict[0]["status"] == "failed" and "could not be decoded" in strict[0]["error"]


def test_a_slide_whose_qc_cannot_be_written_fails_without_features(archive, tmp_path, monkeypatch):
    import wsi.pipeline.local_runner as embed_module

    real_write_qc = embed_module.write_qc

    def failing_for_b(out_dir, slide, mask, grid):
        if slide.slide_id == "b":
            raise OSError(28, "No space left on device")
        return real_write_qc(out_dir, slide, mask, grid)

    monkeypatch.setattr(embed_module, "write_qc", failing_for_b)
    rows = embed_archive([archive], tmp_path / "out", encoder="tiny", workers=0, progress=False)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "No space left on device" in rows[1]["error"]
    feats = tmp_path / "out" / "features" / "tiny"
    assert sorted(p.name for p in feats.iterdir()) == ["a.h5", "c.h5"]
    assert sorted(p.name for p in (tmp_path / "out" / "qc").glob("*.png")) == ["a.png", "c.png"]


@pytest.mark.slow
def test_a_damaged_feature_file_is_embedded_again(archive, tmp_path):
    out = tmp_path / "out"
    embed_archive([archive], out, encoder="tiny", workers=0, progress=False)
    target = out / "features" / "tiny" / "a.h5"
    with h5py.File(target) as f:
        expected = f["features"][()]
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    rows = embed_archive([archive], out, encoder="tiny", workers=0, progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    with h5py.File(target) as f:
        assert np.array_equal(f["features"][()], expected)


# encoding lanes ------------------------------------------------------------------------------
def test_lanes_read_and_encode_in_two_processes_with_the_features_of_one(
    archive, tmp_path, monkeypatch
):
    log = tmp_path / "encoded.log"
    monkeypatch.setenv(tiny_encoders.ENCODE_LOG_ENV, str(log))
    kwargs = {"encoder": "tiny_logged", "batch_size": 4, "progress": False}
    rows = embed_archive([archive], tmp_path / "lanes", lanes=2, **kwargs)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    pids = {int(line.split()[0]) for line in log.read_text().splitlines()}
    assert len(pids - {os.getpid()}) == 2  # both lanes encoded (the main process warms up)
    log.unlink()
    embed_archive([archive], tmp_path / "main", lanes=0, **kwargs)
    assert {int(line.split()[0]) for line in log.read_text().splitlines()} == {os.getpid()}
    for sid in ("a", "b", "c"):
        with (
            h5py.File(tmp_path / f"lanes/features/tiny_logged/{sid}.h5") as f,
            h5py.File(tmp_path / f"main/features/tiny_logged/{sid}.h5") as g,
        ):
            np.testing.assert_allclose(f["features"][:], g["features"][:], rtol=0, atol=1e-5)
            assert np.array_equal(f["coords"][:], g["coords"][:])


def test_embed_in_lanes_equals_embed_in_this_process(slide_025):
    slide = wsi.open_slide(slide_025)
    grid = wsi.tile(slide, mpp=0.5, size=224)
    enc = tiny_encoders.tiny_encoder()
    here = embed(slide, grid, enc, batch_size=5, lanes=0)
    np.testing.assert_allclose(embed(slide, grid, enc, batch_size=5, lanes=2), here, atol=1e-5)
    np.testing.assert_allclose(embed(slide, grid, enc, batch_size=5), here, atol=1e-5)


class _SlowFirstLane(torch.nn.Module):
    """Features: mean colour, the lane's id (-1 outside lanes) and the lane's JPEG decoding
    threads. Lane 0 sleeps 0.3 s per batch, like a lane sharing its core with other work."""

    def forward(self, x):
        from wsi.io import fastread

        info = torch.utils.data.get_worker_info()
        lane = -1 if info is None else info.id
        if lane == 0:
            time.sleep(0.3)
        ids = torch.tensor([float(lane), float(fastread._decode["threads"])]).expand(len(x), 2)
        return torch.cat([x.mean(dim=(2, 3)), ids], 1)


def test_a_slow_lane_hands_its_batches_to_the_other(slide_025):
    from models.encoders import encoder_from_module
    from wsi.pipeline.loader import BatchSpec, patch_loader

    slide = wsi.open_slide(slide_025)
    grid = wsi.tile(slide, mpp=0.5, size=32)
    enc = encoder_from_module(_SlowFirstLane(), 5, 32, (0.5,) * 3, (0.25,) * 3, name="slow0")
    specs = list(BatchSpec.batches(0, grid, 2))[:16]
    batches = list(patch_loader(specs, 2, encoder=enc))
    # every batch exactly once, whatever the order they came back in
    assert sorted(b.spec.start for b in batches) == [s.start for s in specs]
    lanes = [int(b.features[0, 3]) for b in batches]
    assert lanes.count(1) >= 11  # in turn, each lane would have encoded 8 of the 16
    assert {float(b.features[0, 4]) for b in batches} == {1.0}  # lanes decode on one thread
    here = enc(
        np.stack(
            [
                slide.read_patch(*map(float, xy), grid.size_level0, 32, grid.level)
                for xy in grid.coords[:2]
            ]
        )
    ).numpy()
    first = next(b for b in batches if b.spec.start == 0)
    np.testing.assert_allclose(first.features[:, :3], here[:, :3], atol=1e-5)


class _Broken(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("the encoder broke")


def test_an_encoder_error_in_a_lane_fails_the_slides_not_the_run(archive, tmp_path):
    from models.encoders import encoder_from_module

    enc = encoder_from_module(_Broken(), 4, 32, (0.5,) * 3, (0.25,) * 3, name="broken")
    rows = embed_archive([archive], tmp_path / "out", encoder=enc, lanes=2, progress=False)
    assert [r["status"] for r in rows] == ["failed"] * 3
    assert all("the encoder broke" in r["error"] for r in rows)


def test_lane_choice_and_what_it_refuses(monkeypatch):
    from wsi.errors import InvalidParameterError
    from wsi.pipeline import loader
    from wsi.pipeline.loader import default_lanes, encoding_lanes
    from wsi.pipeline.settings import EmbedSettings

    assert default_lanes("cpu", 4_700_000, cores=2) == 2  # EfficientNet-Lite0
    assert default_lanes("cpu", 25_600_000, cores=2) == 0  # ResNet-50: threads already busy
    assert default_lanes("cpu", 1, cores=1) == 0 and default_lanes("cuda", 1, cores=16) == 0
    tiny = tiny_encoders.tiny_encoder()
    assert encoding_lanes(None, None, tiny) == default_lanes("cpu", 1)
    assert encoding_lanes(None, 0, tiny) == 0  # reader processes asked for: no lanes
    assert encoding_lanes(None, None, tiny, stain=True) == 0
    assert encoding_lanes(3, None, tiny) == 3
    monkeypatch.setattr(loader, "LIGHT_ENCODER_PARAMETERS", 10)
    assert encoding_lanes(None, None, tiny) == 0  # a heavy encoder by this limit
    assert encoding_lanes(2, None, tiny) == 2  # asked for: given
    on_gpu = types.SimpleNamespace(device=torch.device("cuda"), module=tiny.module)
    assert encoding_lanes(0, None, on_gpu) == 0
    for lanes, workers, enc, stain, message in (
        (2, None, on_gpu, False, "CPU encoder"),
        (2, 1, tiny, False, "not both"),
        (2, None, tiny, True, "lanes=0"),
        (-1, None, tiny, False, "≥ 0"),
    ):
        with pytest.raises(InvalidParameterError, match=message):
            encoding_lanes(lanes, workers, enc, stain=stain)
    with pytest.raises(InvalidParameterError, match="lanes"):
        EmbedSettings(lanes=1.5).check()  # type: ignore[arg-type]


def test_a_done_slide_step_does_not_load_the_encoder(archive, tmp_path, monkeypatch):
    from wsi.pipeline.settings import EmbedSettings
    from wsi.pipeline.slide_step import embed_slide

    settings = EmbedSettings(encoder="tiny", progress=False)
    assert embed_slide(archive / "a.tiff", tmp_path, settings)["status"] == "ok"

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded for a slide already done")

    monkeypatch.setattr("wsi.pipeline.settings.resolve_encoder", no_model)
    assert embed_slide(archive / "a.tiff", tmp_path, settings)["status"] == "ok"


def test_cli_lanes_flag_reaches_the_run(archive, tmp_path, monkeypatch, capsys):
    log = tmp_path / "encoded.log"
    monkeypatch.setenv(tiny_encoders.ENCODE_LOG_ENV, str(log))
    base = ["embed", str(archive / "a.tiff"), "--encoder", "tiny_logged", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "o0"), "--lanes", "0"]) == 0
    assert {int(line.split()[0]) for line in log.read_text().splitlines()} == {os.getpid()}
    code = main([*base, "--out", str(tmp_path / "o1"), "--lanes", "2", "--workers", "1"])
    assert code == 2 and "not both" in capsys.readouterr().err
