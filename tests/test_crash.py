"""Crash safety of ``wsi embed`` and ``wsi train``: the CLI in another process, SIGKILLed at
points seen from outside (files appearing), then re-run.

At every kill point: no file under a final name is partial (every .h5 opens with its full
shape, every CSV/JSON parses, every model.pt loads) and a killed run never looks finished.
After the re-run: the same files as an uninterrupted run, features and models bit-identical
(CPU, one thread), metrics and predictions byte-identical, finished work not redone.

The killed runs are forked from a multiprocessing fork server that imported torch and the
library once (``wsi.cli.main`` in a fresh process, minus the ~5 s of imports on a busy
machine); the slow tests start each run as a new ``python`` instead.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from models.atomic import (
    HOST,
    atomic_path,
    remove_stale_temporaries,
    temporary_path,
    write_atomic,
)
from models.training import TrainConfig, load_checkpoint, train
from tests import tiny_encoders
from tests.conftest import TISSUE_TILES, write_reference_slide
from tests.test_cli_mil import write_cohort
from wsi.cli import main

tiny_encoders.register()
REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.005
GIVE_UP_S = 180  # a guard against a hung run, not a timing assertion
FORKS = multiprocessing.get_context("forkserver")
FORKS.set_forkserver_preload([__name__])

ENCODER = "tiny_slow"  # 0.3 s per batch: slides take long enough to be caught mid-way
EMBED_BATCH = "4"  # 3 batches per 12-tile slide
SLIDES = ("a", "b", "c")

N_SLIDES, FOLDS, EPOCHS = 16, 3, "4"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cli(args: list[str], log: str) -> None:
    """Process target: ``wsi ARGS`` on one torch thread, stderr into ``log``."""
    os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
    torch.set_num_threads(1)
    sys.exit(main(args))


class _Python:
    """``wsi ARGS`` in a new interpreter (``script`` first: registers test encoders)."""

    def __init__(self, args: list[str], log: Path, script: str) -> None:
        code = f"{script}import sys; from wsi.cli import main; sys.exit(main({args!r}))"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def exitcode(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait()


class _Forked:
    """``wsi ARGS`` in a process forked from the fork server."""

    def __init__(self, args: list[str], log: Path, script: str) -> None:
        self.proc = FORKS.Process(target=_cli, args=(args, str(log)))
        self.proc.start()

    def exitcode(self) -> int | None:
        return self.proc.exitcode

    def kill(self) -> int:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join()
        return self.proc.exitcode


def kill_when(
    args: list[str],
    ready: Callable[[], bool],
    log: Path,
    *,
    script: str = "",
    may_end: bool = False,
    fresh: bool = False,
) -> bool:
    """Run ``wsi ARGS`` in another process and SIGKILL it as soon as ``ready()``; return
    True. If it ends first: False with ``may_end`` (it must have succeeded), else the test
    fails. ``fresh``: a new interpreter rather than a fork of the fork server."""
    run = (_Python if fresh else _Forked)(args, log, script)
    deadline = time.monotonic() + GIVE_UP_S
    try:
        while not ready():
            code = run.exitcode()
            if code == 0 and may_end:
                return False
            if code is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"wsi {args[0]} ended ({code}) before the kill point: {log.read_text()[-2000:]}"
                )
            time.sleep(POLL_S)
    finally:
        code = run.kill() if run.exitcode() is None else run.exitcode()
    assert code == -signal.SIGKILL
    return True


def files_under(root: Path) -> dict[str, Path]:
    """Every file under ``root`` by relative path, hidden temporaries included; not lock
    files (``.locks/``: who held a slide, and when)."""
    return {
        str(p.relative_to(root)): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".locks" not in p.relative_to(root).parts
    }


def mtimes(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


# --------------------------------------------------------------------------- wsi train


def train_args(root: Path, run: Path) -> list[str]:
    return [
        "train",
        "--features",
        str(root / "features"),
        "--labels",
        str(root / "labels.csv"),
        "--out",
        str(run),
        "--folds",
        str(FOLDS),
        "--classify",
        "type",
        "--regress",
        "immune",
        "--epochs",
        EPOCHS,
        "--quiet",
    ]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Synthetic feature files + labels, and ``reference/``: an uninterrupted run."""
    root = tmp_path_factory.mktemp("train")
    rows = write_cohort(root / "features", n=N_SLIDES)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    assert main(train_args(root, root / "reference")) == 0
    return root


def check_run_folder(run: Path) -> bool:
    """Assert that nothing under a final name is partial and that finished-looking parts are
    whole; return whether the run looks finished (metrics.json exists)."""
    finished_folds = []
    for k in range(FOLDS):
        fold = run / f"fold_{k}"
        if (fold / "model.pt").exists():
            assert load_checkpoint(fold / "model.pt").feature_dim == 16
        if (fold / "curves.csv").exists():
            assert len(pd.read_csv(fold / "curves.csv")) >= 1
        if (fold / "metrics.json").exists():
            assert json.loads((fold / "metrics.json").read_text())["fold"] == k
            assert (fold / "model.pt").exists() and (fold / "curves.csv").exists()
            finished_folds.append(k)
    if (run / "predictions.csv").exists():
        assert len(pd.read_csv(run / "predictions.csv")) == N_SLIDES
        assert finished_folds == list(range(FOLDS))
    if (run / "model.pt").exists():
        assert load_checkpoint(run / "model.pt").feature_dim == 16
    if not (run / "metrics.json").exists():
        return False
    assert json.loads((run / "metrics.json").read_text())["folds"] == FOLDS
    assert (run / "model.pt").exists() and (run / "predictions.csv").exists()
    return True


def assert_same_checkpoint(path: Path, reference: Path) -> None:
    got, want = (torch.load(p, weights_only=True) for p in (path, reference))
    assert got.keys() == want.keys()
    assert got["state_dict"].keys() == want["state_dict"].keys()
    for name, tensor in want["state_dict"].items():
        assert torch.equal(got["state_dict"][name], tensor), name
    pd.testing.assert_frame_equal(
        pd.DataFrame(got["curves"]), pd.DataFrame(want["curves"]), check_exact=True
    )
    for key in want.keys() - {"state_dict", "curves"}:
        assert got[key] == want[key], key


def assert_same_run(run: Path, reference: Path) -> None:
    got, want = files_under(run), files_under(reference)
    assert list(got) == list(want)  # the same files, and no temporary left over
    for name, path in want.items():
        if name.endswith(".pt"):
            assert_same_checkpoint(got[name], path)
        else:
            assert got[name].read_bytes() == path.read_bytes(), name


def finished_fold_files(run: Path) -> list[Path]:
    return [
        p
        for k in range(FOLDS)
        if (run / f"fold_{k}" / "metrics.json").exists()
        for p in sorted((run / f"fold_{k}").iterdir())
    ]


TRAIN_KILL_POINTS = {
    # fold_0/ is made when fold 0 starts training; its metrics.json is written last
    "during fold 0": (lambda run: (run / "fold_0").is_dir(), 0),
    "between folds 0 and 1": (lambda run: (run / "fold_0" / "metrics.json").exists(), 1),
    # predictions.csv is written after the last fold, before the final model is trained
    "during the final model": (lambda run: (run / "predictions.csv").exists(), FOLDS),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", TRAIN_KILL_POINTS)
def test_killed_train_resumes_to_the_uninterrupted_result(cohort, tmp_path, point):
    ready, folds_done = TRAIN_KILL_POINTS[point]
    run = tmp_path / "run"
    kill_when(train_args(cohort, run), lambda: ready(run), tmp_path / "log")
    assert not check_run_folder(run)  # nothing partial, and not finished
    assert len({p.parent for p in finished_fold_files(run)}) == folds_done
    kept = mtimes(finished_fold_files(run))

    assert main(train_args(cohort, run)) == 0
    assert_same_run(run, cohort / "reference")
    assert mtimes(list(kept)) == kept  # finished folds were reused, not retrained


@pytest.mark.slow
def test_a_new_run_over_an_old_one_never_looks_finished(cohort, tmp_path):
    run = tmp_path / "run"
    old = train_args(cohort, run)
    old[old.index("--epochs") + 1] = "2"
    assert main(old) == 0  # a finished run of other settings in the same folder
    old_key = json.loads((run / "fold_0" / "metrics.json").read_text())["run_key"]

    def new_fold_written() -> bool:
        try:  # the new run deletes the old fold first: it may vanish between two reads
            return json.loads((run / "fold_0" / "metrics.json").read_text())["run_key"] != old_key
        except FileNotFoundError:
            return False

    kill_when(train_args(cohort, run), new_fold_written, tmp_path / "log")
    assert not check_run_folder(run)
    assert not (run / "model.pt").exists() and not (run / "predictions.csv").exists()
    keys = {json.loads(p.read_text())["run_key"] for p in run.glob("fold_*/metrics.json")}
    assert old_key not in keys  # the old run's folds are gone, not mixed with the new ones

    assert main(train_args(cohort, run)) == 0
    assert_same_run(run, cohort / "reference")


@pytest.mark.slow
def test_a_re_embedded_feature_file_retrains_every_fold(cohort, tmp_path):
    root = tmp_path / "cohort"
    shutil.copytree(cohort / "features", root / "features")
    shutil.copy(cohort / "labels.csv", root / "labels.csv")
    run = tmp_path / "run"
    assert main(train_args(root, run)) == 0
    folds = mtimes(finished_fold_files(run))
    assert main(train_args(root, run)) == 0
    assert mtimes(list(folds)) == folds  # same files: every fold reused

    feature_file = root / "features" / "s03.h5"
    stat = feature_file.stat()
    os.utime(feature_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # as if rewritten
    assert main(train_args(root, run)) == 0
    again = mtimes(list(folds))
    assert all(again[p] != folds[p] for p in folds)  # no fold of the old features reused
    assert check_run_folder(run)


# --------------------------------------------------------------------------- wsi embed

REGISTER = (
    f"import sys; sys.path.insert(0, {str(REPO)!r}); from tests import tiny_encoders; "
    "tiny_encoders.register(); "
)


def embed_args(slides: Path, out: Path) -> list[str]:
    return [
        "embed",
        str(slides),
        "--out",
        str(out),
        "--encoder",
        ENCODER,
        "--workers",
        "0",
        "--batch-size",
        EMBED_BATCH,
        "--quiet",
    ]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Three small slides in ``slides/`` and ``reference/``: an uninterrupted embed."""
    root = tmp_path_factory.mktemp("embed")
    (root / "slides").mkdir()
    write_reference_slide(root / "slides" / "a.tiff", 0.5, texture=12.0)
    write_reference_slide(root / "slides" / "b.svs", 0.5, flavour="svs", texture=12.0)
    write_reference_slide(root / "slides" / "c.tiff", 0.5, texture=12.0, downsamples=(1, 4))
    assert main(embed_args(root / "slides", root / "reference")) == 0
    return root


def check_embed_folder(out: Path) -> dict[str, dict[str, str]]:
    """Assert that every file under a final name is whole; return the manifest rows."""
    feats = out / "features" / ENCODER
    for path in sorted((out / "patches").glob("*.h5")):
        with h5py.File(path, "r") as f:
            assert f["coords"].shape == (TISSUE_TILES, 2)
    for path in sorted(feats.glob("*.h5")):
        with h5py.File(path, "r") as f:
            assert f["coords"].shape == (TISSUE_TILES, 2)
            assert f["features"].shape == (TISSUE_TILES, tiny_encoders.TINY_DIM)
            assert np.isfinite(f["features"][()]).all()
    for path in sorted((out / "qc").glob("*.png")):
        with Image.open(path) as image:
            image.load()
    for path in sorted((out / "qc").glob("*.geojson")):
        assert json.loads(path.read_text())["type"] == "FeatureCollection"
    rows: dict[str, dict[str, str]] = {}
    if (out / "manifest.csv").exists():
        with open(out / "manifest.csv", newline="") as f:
            rows = {row["slide_id"]: row for row in csv.DictReader(f)}
    for slide_id, row in rows.items():
        assert row["status"] == "ok" and row["n_tiles"] == str(TISSUE_TILES)
        assert (feats / f"{slide_id}.h5").exists()  # a manifest row only for a finished slide
    return rows


def assert_same_h5(path: Path, reference: Path) -> None:
    with h5py.File(path, "r") as got, h5py.File(reference, "r") as want:
        assert sorted(got) == sorted(want)
        for name in want:
            assert np.array_equal(got[name][()], want[name][()]), name
            assert dict(got[name].attrs).keys() == dict(want[name].attrs).keys()


def assert_same_embed(out: Path, reference: Path) -> None:
    got, want = files_under(out), files_under(reference)
    assert list(got) == list(want)  # the same files, and no temporary left over
    for name, path in want.items():
        if name.endswith(".h5"):
            assert_same_h5(got[name], path)
        elif name == "manifest.csv":
            drop = ["seconds"]
            pd.testing.assert_frame_equal(
                pd.read_csv(got[name]).drop(columns=drop), pd.read_csv(path).drop(columns=drop)
            )
        else:
            assert got[name].read_bytes() == path.read_bytes(), name


def _features(out: Path, slide_id: str) -> Path:
    return out / "features" / ENCODER / f"{slide_id}.h5"


def _manifest_rows(out: Path) -> int:
    try:
        return len((out / "manifest.csv").read_text().splitlines()) - 1
    except FileNotFoundError:
        return 0


EMBED_KILL_POINTS = {
    # the tiling stage wrote a's coords (patches/) and QC; its features are not done
    "coords written, features not": (
        lambda out: (out / "patches" / "a.h5").exists(),
        lambda out: not _features(out, "a").exists(),
    ),
    "mid-features of the 2nd slide": (
        lambda out: (
            _features(out, "a").exists() and any(_features(out, "b").parent.glob(".b.h5.tmp-*"))
        ),
        lambda out: not _features(out, "b").exists(),
    ),
    "right after the first manifest row": (
        lambda out: _manifest_rows(out) >= 1,
        lambda out: _features(out, "a").exists() and not _features(out, "c").exists(),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", EMBED_KILL_POINTS)
def test_killed_embed_resumes_to_the_uninterrupted_result(archive, tmp_path, point):
    ready, landed = EMBED_KILL_POINTS[point]
    out = tmp_path / "out"
    kill_when(
        embed_args(archive / "slides", out), lambda: ready(out), tmp_path / "log", script=REGISTER
    )
    assert landed(out)
    rows = check_embed_folder(out)
    assert len(rows) < len(SLIDES)
    done = mtimes(sorted(_features(out, "a").parent.glob("*.h5")))

    assert main(embed_args(archive / "slides", out)) == 0
    assert_same_embed(out, archive / "reference")
    assert mtimes(list(done)) == done  # finished slides were skipped, not re-embedded


# --------------------------------------------------------------------------- chained kills


def after(appears: Callable[[], bool], delay_s: float) -> Callable[[], bool]:
    """A kill condition: ``delay_s`` after ``appears()`` first held."""
    seen: list[float] = []

    def ready() -> bool:
        if not seen and appears():
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= delay_s

    return ready


def chain_of_kills(
    args: list[str],
    events: list[Callable[[], bool]],
    check: Callable[[], object],
    log: Path,
    rng: np.random.Generator,
    script: str = "",
) -> int:
    """Kill fresh runs one after the other, each 0-0.3 s after one of the next 2 ``events``
    (in the order a run makes them happen) that have not happened yet, and ``check()`` the
    folder after each kill, until a run finishes first or every event has happened; return
    the number of kills."""
    kills = 0
    while left := [e for e in events if not e()]:
        ready = after(left[int(rng.integers(min(2, len(left))))], rng.uniform(0.0, 0.3))
        if not kill_when(args, ready, log, script=script, may_end=True, fresh=True):
            break
        kills += 1
        check()
    return kills


@pytest.mark.slow
def test_train_killed_again_and_again(cohort, tmp_path):
    """New interpreters killed at random outputs, each re-run killed again, then one run to
    the end: still the uninterrupted result."""
    run = tmp_path / "run"
    files = [
        run / f"fold_{k}" / name
        for k in range(FOLDS)
        for name in ("model.pt", "curves.csv", "metrics.json")
    ]
    files += [run / "predictions.csv", run / "model.pt"]
    kills = chain_of_kills(
        train_args(cohort, run),
        [f.exists for f in files],
        lambda: check_run_folder(run),
        tmp_path / "log",
        np.random.default_rng(0),
    )
    assert kills >= 3
    assert main(train_args(cohort, run)) == 0
    assert_same_run(run, cohort / "reference")


@pytest.mark.slow
def test_embed_killed_again_and_again(archive, tmp_path):
    out = tmp_path / "out"
    events: list[Callable[[], bool]] = [(out / "patches" / "a.h5").exists]
    for slide in SLIDES:  # encoding started (a temporary features file), then finished
        final = _features(out, slide)
        events.append(lambda f=final: f.exists() or any(f.parent.glob(f".{f.name}.tmp-*")))
        events.append(final.exists)
    kills = chain_of_kills(
        embed_args(archive / "slides", out),
        events,
        lambda: check_embed_folder(out),
        tmp_path / "log",
        np.random.default_rng(0),
        script=REGISTER,
    )
    assert kills >= 3
    assert main(embed_args(archive / "slides", out)) == 0
    assert_same_embed(out, archive / "reference")


# --------------------------------------------------------------------------- atomic writes


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"old": 1}')

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text('{"new": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_crash)
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_an_atomic_path_block_that_raises_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "coords.h5"
    with atomic_path(path) as tmp:  # the parent folder is made; the rename happens on exit
        assert tmp.parent == path.parent and tmp.name.startswith(".coords.h5.tmp-")
        tmp.write_bytes(b"old")
    with pytest.raises(KeyError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise KeyError("killed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["coords.h5"]


def test_a_crash_inside_torch_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    bags = [np.random.default_rng(i).normal(size=(8, 4)).astype(np.float32) for i in range(6)]
    labels = pd.DataFrame({"slide_id": [f"s{i}" for i in range(6)], "y": ["a", "b"] * 3})
    config = TrainConfig(epochs=1, hidden=8, val_fraction=0)
    model = train(bags, labels, classify=["y"], config=config, progress=False)
    path = model.save(tmp_path / "model.pt")
    before = path.read_bytes()

    def torn_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(before[: len(before) // 2])
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(RuntimeError, match="mid-write"):
        model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".model.pt.tmp-{HOST}-{int(dead.stdout)}"
    stale.write_bytes(b"partial")
    live = temporary_path(tmp_path / "curves.csv")  # this process: still writing
    live.write_text("epoch")
    elsewhere = tmp_path / f".predictions.csv.tmp-otherhost-{int(dead.stdout)}"
    elsewhere.write_text("slide_id")  # another machine's process: not ours to judge
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and elsewhere.exists()
