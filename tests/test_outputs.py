"""Shared output folders: locks, temporaries, manifest merging, two concurrent `wsi embed`."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests import tiny_encoders
from tests.conftest import read_manifest, run_together, write_reference_slide
from wsi.pipeline.embed import embed_archive
from wsi.store.folder import (
    HOST,
    FileLock,
    lock_holder,
    remove_stale_temporaries,
    remove_temporaries_of,
    slide_lock_path,
    take_slide,
    temporary_path,
)
from wsi.store.manifest import Manifest, manifest_row

tiny_encoders.register()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_is_exclusive_until_released(tmp_path):
    first = take_slide(tmp_path, "a")
    assert first is not None and first.held
    assert take_slide(tmp_path, "a") is None
    assert take_slide(tmp_path, "b") is not None  # other slides are free
    holder = lock_holder(slide_lock_path(tmp_path, "a"))
    assert holder["pid"] == os.getpid()
    first.release()
    again = take_slide(tmp_path, "a")
    assert again is not None
    again.release()


@pytest.mark.slow
def test_a_killed_holders_lock_file_is_not_a_held_lock(tmp_path):
    path = slide_lock_path(tmp_path, "a")
    script = (
        f"import sys, time; sys.path.insert(0, {REPO!r}); from wsi.store.folder import FileLock; "
        f"lock = FileLock.try_acquire({str(path)!r}); print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    assert FileLock.try_acquire(path) is None
    assert FileLock.acquire(path, timeout_s=0.3) is None  # waits, then gives up
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.exists() and lock_holder(path)["pid"] == proc.pid  # the stale file is left
    lock = FileLock.acquire(path, timeout_s=5)  # ... and taken over at once
    assert lock is not None
    assert lock_holder(path)["pid"] == os.getpid()
    lock.release()


def test_temporaries_of_dead_processes_on_this_host_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    names = {
        "dead": f".a.h5.tmp-{HOST}-{dead}",
        "alive": f".b.h5.tmp-{HOST}-{alive}",
        "other_host": f".c.h5.tmp-elsewhere-{dead}",
        "not_ours": ".d.h5.tmp-notapid",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [names["dead"]]
    assert temporary_path(tmp_path / "b.h5").name == names["alive"]
    # the next holder of c's lock clears what c's previous holder (another host) left
    previous = {"host_tag": "elsewhere", "pid": dead}
    assert [p.name for p in remove_temporaries_of(tmp_path, "c.h5", previous)] == [
        names["other_host"]
    ]
    assert remove_temporaries_of(tmp_path, "c.h5", None) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["alive"], names["not_ours"]])


def test_taking_a_slide_clears_its_leftover_temporaries(tmp_path):
    features = tmp_path / "features" / "tiny"
    features.mkdir(parents=True)
    (tmp_path / "patches").mkdir()
    left = [features / ".a.h5.tmp-otherhost-12", tmp_path / "patches" / ".a.h5.tmp-otherhost-12"]
    keep = [features / ".ab.h5.tmp-otherhost-12", features / ".a.h5.tmp-otherhost-13"]
    for p in [*left, *keep]:
        p.write_bytes(b"partial")
    # a process on another host (pid 12) held a's lock and died mid-write
    lock_file = slide_lock_path(tmp_path, "a")
    lock_file.parent.mkdir(parents=True)
    lock_file.write_text('{"host": "otherhost", "host_tag": "otherhost", "pid": 12}')
    lock = take_slide(tmp_path, "a", features)
    assert lock is not None and lock.previous_holder["pid"] == 12
    assert not any(p.exists() for p in left) and all(p.exists() for p in keep)
    lock.release()


def _row(sid: str, status: str = "ok", n: int = 1) -> dict:
    return manifest_row(Path(f"/s/{sid}.svs"), status, n_tiles=n)


def test_manifests_of_two_processes_merge_instead_of_overwriting(tmp_path):
    path = tmp_path / "manifest.csv"
    one, two = Manifest(path), Manifest(path)
    one.update(_row("a"))
    two.update(_row("b"))
    one.update(_row("c"))
    two.update(_row("a", "failed"))  # two re-did a later: its newer row wins
    rows = read_manifest(tmp_path)
    assert list(rows) == ["a", "b", "c"]
    assert rows["a"]["status"] == "failed"
    assert not list(tmp_path.glob(".*tmp*"))


def test_weak_rows_fill_gaps_and_replace_failures_only(tmp_path):
    path = tmp_path / "manifest.csv"
    writer = Manifest(path)
    writer.update(_row("a", "ok", n=7))
    writer.update(_row("b", "failed"))
    late = Manifest(path, save_interval_s=3600)
    late.update(_row("a", "ok", n=1), weak=True)  # found done: keeps the real row
    late.update(_row("b", "ok", n=3), weak=True)
    late.update(_row("c", "ok", n=4), weak=True)
    assert set(read_manifest(tmp_path)) == {"a", "b"}  # throttled: not saved yet
    late.flush()
    rows = read_manifest(tmp_path)
    assert {k: (v["status"], v["n_tiles"]) for k, v in rows.items()} == {
        "a": ("ok", "7"),
        "b": ("ok", "3"),
        "c": ("ok", "4"),
    }


@pytest.fixture
def archive(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    for i, base in enumerate([0.25, 0.5, 0.5, 0.25, 0.5, 0.5]):
        write_reference_slide(d / f"s{i}.tiff", base, texture=8.0 + i)
    return d


def _embed_process(archive, out, log, ready, go):
    """``wsi embed`` in a child that, once imported, touches ``ready`` and waits for ``go``
    (so both runs start together, whatever their import times on a loaded machine)."""
    script = (
        f"import sys, time, pathlib\nsys.path.insert(0, {REPO!r})\n"
        "from tests import tiny_encoders\ntiny_encoders.register()\n"
        "from wsi.cli import main\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists():\n    time.sleep(0.01)\n"
        f"sys.exit(main(['embed', {str(archive)!r}, '--out', {str(out)!r}, '--encoder', "
        "'tiny_logged', '--quiet', '--workers', '0', '--batch-size', '4']))"
    )
    env = dict(os.environ, **{tiny_encoders.ENCODE_LOG_ENV: str(log)})
    return subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_two_embed_runs_on_one_folder_embed_every_slide_once(archive, tmp_path):
    out, log = tmp_path / "out", tmp_path / "encoded.log"
    ready, go = [tmp_path / f"ready{i}" for i in range(2)], tmp_path / "go"
    procs = [_embed_process(archive, out, log, ready[i], go) for i in range(2)]
    outputs = run_together(procs, ready, go)
    assert [p.returncode for p in procs] == [0, 0], outputs

    reference = embed_archive(
        [archive], tmp_path / "ref", encoder="tiny_logged", workers=0, batch_size=4, progress=False
    )
    n_tiles = {r["slide_id"]: r["n_tiles"] for r in reference}
    encoded = [line.split() for line in log.read_text().splitlines()]
    by_pid: dict[str, int] = {}
    for pid, rows in encoded:
        by_pid[pid] = by_pid.get(pid, 0) + int(rows)
    # every tile encoded exactly once over both processes, and both did part of the work
    assert sum(by_pid.values()) == sum(n_tiles.values()) == 6 * 12
    assert len(by_pid) == 2 and min(by_pid.values()) > 0

    manifest = read_manifest(out)
    assert {k: (v["status"], int(v["n_tiles"])) for k, v in manifest.items()} == {
        k: ("ok", n) for k, n in n_tiles.items()
    }
    for sid in n_tiles:
        with (
            h5py.File(out / f"features/tiny_logged/{sid}.h5") as f,
            h5py.File(tmp_path / f"ref/features/tiny_logged/{sid}.h5") as g,
        ):
            assert np.array_equal(f["features"][()], g["features"][()])
            assert np.array_equal(f["coords"][()], g["coords"][()])
    leftovers = [p for p in out.rglob(".*") if p.is_file() and ".locks" not in p.parts]
    assert leftovers == []


@pytest.mark.slow
def test_a_run_waits_for_a_slide_another_process_holds(archive, tmp_path):
    out = tmp_path / "out"
    held = take_slide(out, "s0")
    assert held is not None
    released = []

    def release_later():
        time.sleep(1.0)
        released.append(time.time())
        held.release()

    threading.Thread(target=release_later).start()
    rows = embed_archive([archive], out, encoder="tiny", workers=0, progress=False)
    assert released, "the run must not finish before s0's holder lets go"
    assert (out / "features/tiny/s0.h5").stat().st_mtime >= released[0] - 0.01
    assert [r["slide_id"] for r in rows] == [f"s{i}" for i in range(6)]
    assert all(r["status"] == "ok" for r in rows)
