"""The Ray backend on a real local Ray cluster: same files as the local backend, retries."""

import os
import sys

import h5py
import numpy as np
import pytest

from tests import tiny_encoders
from tests.conftest import read_manifest, write_reference_slide
from wsi.cli import main
from wsi.pipeline.embed import embed_archive
from wsi.pipeline.ray_runner import RayOptions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow  # a local Ray cluster


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'wsi[ray]')")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 1024**2,
        # workers import the test encoders' module by reference (cloudpickle)
        runtime_env={"env_vars": {"PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    d = tmp_path_factory.mktemp("slides")
    write_reference_slide(d / "a.tiff", 0.25, texture=12.0)
    write_reference_slide(d / "b.svs", 0.5, flavour="svs", texture=12.0)
    write_reference_slide(d / "c.tiff", 0.5, texture=9.0)
    (d / "corrupt.svs").write_bytes(np.random.default_rng(0).bytes(5000))
    return d


def _files(out):
    return sorted(
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and ".locks" not in p.parts
    )


def _same_h5(a, b):
    with h5py.File(a) as f, h5py.File(b) as g:
        assert sorted(f) == sorted(g)
        for name in f:
            assert np.array_equal(f[name][()], g[name][()]), name


def test_ray_writes_what_the_local_backend_writes(ray_cluster, archive, tmp_path):
    encoder = tiny_encoders.tiny_encoder()
    local = embed_archive(
        [archive], tmp_path / "local", encoder=encoder, workers=0, batch_size=4, progress=False
    )
    on_ray = embed_archive(
        [archive], tmp_path / "ray", encoder=encoder, batch_size=4, progress=False, backend="ray"
    )

    def essentials(rows):
        return [(r["slide_id"], r["status"], r["n_tiles"], r["error"]) for r in rows]

    assert essentials(on_ray) == essentials(local)
    assert [r["status"] for r in on_ray] == ["ok", "ok", "ok", "failed"]
    assert "corrupt.svs" in on_ray[3]["error"]
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")
    for sid in "abc":
        _same_h5(
            tmp_path / f"ray/features/tiny/{sid}.h5", tmp_path / f"local/features/tiny/{sid}.h5"
        )
        _same_h5(tmp_path / f"ray/patches/{sid}.h5", tmp_path / f"local/patches/{sid}.h5")
    manifest = read_manifest(tmp_path / "ray")
    assert {k: v["status"] for k, v in manifest.items()} == {
        "a": "ok",
        "b": "ok",
        "c": "ok",
        "corrupt": "failed",
    }

    # re-run: finished slides are answered from their files, nothing is rewritten
    stamp = (tmp_path / "ray/features/tiny/a.h5").stat().st_mtime_ns
    again = embed_archive(
        [archive], tmp_path / "ray", encoder=encoder, batch_size=4, progress=False, backend="ray"
    )
    assert essentials(again) == essentials(local)
    assert (tmp_path / "ray/features/tiny/a.h5").stat().st_mtime_ns == stamp


def test_stain_normalisation_on_ray_fits_each_slide_as_locally(ray_cluster, archive, tmp_path):
    """--stain-normalize with --ray: each task fits its slide's stains on its first batch, as
    the local runner does, so files, fits and features are the local run's."""
    import json

    slides = [archive / "a.tiff", archive / "b.svs"]
    kw = dict(encoder=tiny_encoders.tiny_encoder(), batch_size=4, progress=False)
    plain = embed_archive(slides, tmp_path / "plain", workers=0, **kw)
    local = embed_archive(slides, tmp_path / "local", workers=0, stain="macenko", **kw)
    on_ray = embed_archive(slides, tmp_path / "ray", backend="ray", stain="macenko", **kw)
    assert [r["status"] for r in plain + local + on_ray] == ["ok"] * 6
    for sid in "ab":
        ray_file, local_file = (
            tmp_path / f"{run}/features/tiny/{sid}.h5" for run in ("ray", "local")
        )
        _same_h5(ray_file, local_file)
        with (
            h5py.File(ray_file) as f,
            h5py.File(local_file) as g,
            h5py.File(tmp_path / f"plain/features/tiny/{sid}.h5") as p,
        ):
            fit = json.loads(f.attrs["provenance"])["stain"]
            assert fit == json.loads(g.attrs["provenance"])["stain"]
            assert fit["method"] == "macenko" and fit["pixels"] > 100_000
            assert np.abs(f["features"][()] - p["features"][()]).max() > 0.1  # normalised


def test_a_killed_worker_is_retried_then_given_up(ray_cluster, archive, tmp_path):
    slides = [archive / "a.tiff", archive / "b.svs"]
    reference = embed_archive(
        slides,
        tmp_path / "ref",
        encoder=tiny_encoders.tiny_encoder(),
        workers=0,
        batch_size=4,
        progress=False,
    )
    assert [r["status"] for r in reference] == ["ok", "ok"]

    marker = tmp_path / "killed-once"
    rows = embed_archive(
        slides,
        tmp_path / "retried",
        encoder=tiny_encoders.kill_once_encoder(marker),
        batch_size=4,
        progress=False,
        backend="ray",
        ray=RayOptions(retries=1),
    )
    assert marker.exists()  # a worker did die mid-slide ...
    assert [r["status"] for r in rows] == ["ok", "ok"]  # ... and its slide was redone
    for sid in "ab":
        _same_h5(
            tmp_path / f"retried/features/tiny/{sid}.h5", tmp_path / f"ref/features/tiny/{sid}.h5"
        )
    assert not [p for p in (tmp_path / "retried").rglob(".*tmp*")]

    marker = tmp_path / "killed-no-retry"
    rows = embed_archive(
        slides,
        tmp_path / "no_retry",
        encoder=tiny_encoders.kill_once_encoder(marker),
        batch_size=4,
        progress=False,
        backend="ray",
        ray=RayOptions(retries=0),
    )
    statuses = sorted(r["status"] for r in rows)
    assert statuses == ["failed", "ok"]
    failed = next(r for r in rows if r["status"] == "failed")
    assert "Ray task failed 1 times" in failed["error"] and "re-run" in failed["error"]
    assert read_manifest(tmp_path / "no_retry")[failed["slide_id"]]["status"] == "failed"


def test_cli_ray_flag_uses_the_cluster(ray_cluster, archive, tmp_path, capsys):
    code = main(
        [
            "embed",
            str(archive / "a.tiff"),
            str(archive / "corrupt.svs"),
            "--out",
            str(tmp_path / "o"),
            "--ray",
            "--quiet",
            "--batch-size",
            "8",
        ]
    )
    assert code == 1
    rows = read_manifest(tmp_path / "o")
    assert rows["a"]["status"] == "ok" and int(rows["a"]["n_tiles"]) == 12
    assert rows["corrupt"]["status"] == "failed"
    with h5py.File(tmp_path / "o/features/efficientnet_lite0/a.h5") as f:
        assert f["features"].shape == (12, 1280)


def test_without_ray_the_flag_says_how_to_install_it(archive, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(["embed", str(archive / "a.tiff"), "--out", str(tmp_path / "o"), "--ray"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "wsi[ray]"' in err[0]
    assert not (tmp_path / "o").exists()
