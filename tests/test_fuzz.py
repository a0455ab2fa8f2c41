"""Fuzzing the slide API over mutated small TIFF/SVS files (hypothesis).

Each example mutates a valid seed slide (byte flips, truncation, inserted junk, zeroed
runs, TIFF directory entries and tag values such as tile offsets, byte counts and image
sizes) and hands the file to a worker process (``tests/badinputs/worker.py``) that runs
``wsi.open_slide``, thumbnails, ``slide.read_patch`` at every level, ``wsi.tile`` and
``grid.read``. Only success or a :class:`wsi.errors.WsiError` is allowed: any other
exception, a crash of the worker (segfault, abort) or an answer later than
``WSI_FUZZ_TIMEOUT`` seconds (a hang) fails the example, naming the seed, the mutations
and a saved copy of the file.

The default run is 200 derandomised examples; ``WSI_FUZZ_EXAMPLES=5000`` runs more, and
``WSI_FUZZ_SEED=<int>`` explores a different random sequence.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import tifffile
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.badinputs import write_good_slide
from wsi.synthetic.slides import write_flat_image

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("WSI_FUZZ_EXAMPLES", "200"))
TIMEOUT_S = float(os.environ.get("WSI_FUZZ_TIMEOUT", "30"))
RANDOM_SEED = os.environ.get("WSI_FUZZ_SEED")
pytestmark = pytest.mark.slow  # worker processes over hundreds of mutated files
STARTUP_S = 120.0
"""Extra time for the worker's first answer (imports on a busy machine)."""

SEED_NAMES = ("tiff", "svs", "flat")
_TAG_VALUES = (0, 1, 2, 3, 7, 8, 16, 255, 256, 257, 4096, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1)
_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 4,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 4,
    11: 4,
    12: 8,
    16: 8,
    17: 8,
    18: 8,
}
"""TIFF field type → bytes per element written (rationals: the numerator)."""

OUTCOMES: Counter[str] = Counter()


# --------------------------------------------------------------------------- seeds


class Seed:
    """A valid slide file and the positions of its TIFF directory entries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = path.read_bytes()
        self.suffix = path.suffix
        self.entries: list[tuple[int, int, int, int]] = []
        """(entry offset, field type, count, value offset) of every tag of every page."""
        self._index: dict[tuple[int, int], int] = {}
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                for tag in page.tags.values():
                    self._index[page.index, tag.code] = len(self.entries)
                    self.entries.append((tag.offset, tag.dtype, tag.count, tag.valueoffset))

    def entry(self, page: int, code: int) -> int:
        """The index in :attr:`entries` of tag ``code`` of directory ``page``."""
        return self._index[page, code]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Seed]:
    """The valid files the examples mutate: generic pyramidal TIFF, Aperio SVS with label and
    macro images, flat stripped TIFF (the fallback reader)."""
    import numpy as np

    folder = tmp_path_factory.mktemp("seeds")
    rgb = np.full((200, 300, 3), 240, np.uint8)
    rgb[50:150, 100:250] = (200, 110, 170)
    paths = {
        "tiff": write_good_slide(folder / "seed.tiff"),
        "svs": write_good_slide(folder / "seed.svs", flavour="svs", associated_images=True),
        "flat": write_flat_image(folder / "seed.tif", rgb, mpp=0.5),
    }
    return {name: Seed(path) for name, path in paths.items()}


# --------------------------------------------------------------------------- mutations

_position = st.integers(0, 2**20)
_index = st.integers(0, 2**16)
mutation = st.one_of(
    st.tuples(st.just("flip"), _position, st.integers(1, 255)),
    st.tuples(st.just("cut"), _position),
    st.tuples(st.just("insert"), _position, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("zero"), _position, st.integers(1, 4096)),
    st.tuples(
        st.just("tag"),
        _index,
        _index,
        st.one_of(st.sampled_from(_TAG_VALUES), st.integers(0, 2**32 - 1)),
    ),
    st.tuples(
        st.just("tag-scale"), _index, _index, st.sampled_from(("+1", "-1", "*2", "/2", "*1000"))
    ),
    st.tuples(
        st.just("entry"),
        _index,
        st.sampled_from(("code", "type", "count")),
        st.one_of(st.sampled_from(_TAG_VALUES), st.integers(0, 2**32 - 1)),
    ),
)


def _write_uint(buf: bytearray, at: int, size: int, value: int) -> None:
    if at >= 0 and at + size <= len(buf):
        buf[at : at + size] = (value % (1 << (8 * size))).to_bytes(size, "little")


def mutate(source: Seed, mutations: list[tuple]) -> bytes:
    """Apply ``mutations``: directory edits first (at the seed's own offsets), then byte edits
    in order."""
    buf = bytearray(source.data)
    structural = [m for m in mutations if m[0] in ("tag", "tag-scale", "entry")]
    for m in structural:
        offset, dtype, count, value_at = source.entries[m[1] % len(source.entries)]
        size = _TYPE_SIZES.get(int(dtype), 1)
        if m[0] == "entry":
            at, width = {"code": (offset, 2), "type": (offset + 2, 2), "count": (offset + 4, 4)}[
                m[2]
            ]
            _write_uint(buf, at, width, m[3])
            continue
        at = value_at + (m[2] % max(count, 1)) * size
        if m[0] == "tag":
            _write_uint(buf, at, size, m[3])
        else:
            old = int.from_bytes(buf[at : at + size], "little") if at + size <= len(buf) else 0
            new = {
                "+1": old + 1,
                "-1": old - 1,
                "*2": old * 2,
                "/2": old // 2,
                "*1000": old * 1000,
            }[m[3]]
            _write_uint(buf, at, size, new)
    for m in mutations:
        if m[0] in ("tag", "tag-scale", "entry") or not buf:
            continue
        pos = m[1] % len(buf)
        if m[0] == "flip":
            buf[pos] ^= m[2]
        elif m[0] == "cut":
            del buf[pos:]
        elif m[0] == "insert":
            buf[pos:pos] = m[2]
        elif m[0] == "zero":
            buf[pos : pos + m[2]] = bytes(min(m[2], len(buf) - pos))
    return bytes(buf)


# --------------------------------------------------------------------------- worker


class Worker:
    """``tests.badinputs.worker`` in a child process, restarted after a crash or a hang."""

    def __init__(self, log_dir: Path, timeout_s: float = TIMEOUT_S) -> None:
        self.log_dir = log_dir
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0

    def _start(self) -> None:
        self.starts += 1
        self.stderr = open(self.log_dir / f"worker-{self.starts}.log", "w")  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.badinputs.worker"],
            cwd=REPO,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            bufsize=1,
        )
        self.fresh = True

    def run(self, path: Path) -> dict[str, str]:
        """The worker's answer for ``path``, or ``crash`` / ``hang`` outcomes."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        timeout = self.timeout_s + (STARTUP_S if self.fresh else 0.0)
        self.fresh = False
        try:
            self.proc.stdin.write(f"{path}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._died()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.stop()
            return {"outcome": "hang", "error": f"no answer within {timeout:.0f} s"}
        line = self.proc.stdout.readline()
        if not line:
            return self._died()
        answer = json.loads(line)
        if answer.pop("restart", False):
            self.proc.wait(timeout=STARTUP_S)
            self.proc = None
        return answer

    def _died(self) -> dict[str, str]:
        assert self.proc is not None
        code = self.proc.wait()
        self.stderr.flush()
        tail = Path(self.stderr.name).read_text(errors="replace")[-2000:]
        self.proc = None
        return {"outcome": "crash", "error": f"worker exited with {code}; stderr tail:\n{tail}"}

    def stop(self) -> None:
        """Kill the child (ours, by pid) and wait for it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory):
    w = Worker(tmp_path_factory.mktemp("worker-logs"))
    yield w
    w.stop()
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(OUTCOMES.items()))
    print(f"\nfuzz: {sum(OUTCOMES.values())} files, worker starts {w.starts}; {summary}")


def check_file(worker: Worker, data: bytes, suffix: str, what: str) -> dict[str, str]:
    """Run ``data`` through the worker; fail naming ``what`` and a saved copy unless the
    outcome is success or a WsiError."""
    folder = Path(os.environ.get("WSI_FUZZ_SAVE", tempfile.gettempdir()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(data)
        answer = worker.run(path)
    outcome = answer["outcome"]
    OUTCOMES[outcome if outcome != "wsi" else answer["error"].split(":", 1)[0]] += 1
    if outcome not in ("ok", "wsi"):
        folder.mkdir(parents=True, exist_ok=True)
        saved = folder / f"wsi-fuzz-{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
        saved.write_bytes(data)
        pytest.fail(f"{outcome} on {what} (file saved as {saved}):\n{answer['error']}")
    return answer


# --------------------------------------------------------------------------- tests


def _fuzz_settings(test):
    test = settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=RANDOM_SEED is None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )(test)
    return seed(int(RANDOM_SEED))(test) if RANDOM_SEED is not None else test


@pytest.mark.timeout(300 + 2 * EXAMPLES)  # WSI_FUZZ_EXAMPLES=5000: a long run
@_fuzz_settings
@given(name=st.sampled_from(SEED_NAMES), mutations=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_slides_raise_only_wsi_errors(seeds, worker, name, mutations):
    source = seeds[name]
    check_file(worker, mutate(source, mutations), source.suffix, f"seed {name} + {mutations}")


@pytest.mark.parametrize("name", SEED_NAMES)
def test_unmutated_seeds_work(seeds, worker, name):
    """The harness itself: every seed passes the whole exercise without an error."""
    answer = check_file(worker, seeds[name].data, seeds[name].suffix, f"seed {name}")
    assert answer == {"outcome": "ok"}


# (what it broke before the fix, seed, [(mutation kind, page, tag code, element, value)])
REGRESSIONS = {
    "tile-length-0": ("ZeroDivisionError in the fast reader", "tiff", [("tag", 0, 323, 0, 0)]),
    "tile-width-pair": ("TypeError in the fast reader", "tiff", [("entry", 0, 322, "count", 2)]),
    "tile-length-373M": (
        "SIGABRT: glib could not allocate a 382 GB tile",
        "svs",
        [("tag", 2, 323, 0, 373_326_185)],
    ),
    "width-x1000": (
        "MemoryError: a 43 GB thumbnail strip",
        "tiff",
        [("tag-scale", 0, 256, 0, "*1000")],
    ),
    "thumbnail-subsampling": (
        "OpenSlideError reading the associated thumbnail",
        "svs",
        [("tag-scale", 1, 530, 1, "*2")],
    ),
    "description-byte-ff": (
        "KeyError reading openslide's properties",
        "svs",
        [("tag", 0, 270, 100, 0xFF)],
    ),
    "macro-height-x1000": (
        "MemoryError reading the associated macro image",
        "svs",
        [("tag-scale", 4, 257, 0, "*1000"), ("tag-scale", 4, 262, 0, "/2")],
    ),
    "wide-level-1": (
        "SIGFPE in openslide_open: level 1 wider than an empty level 0",
        "svs",
        [("tag", 0, 325, i, 0) for i in range(12)] + [("tag", 2, 256, 0, 2560)],
    ),
    "tile-width-1": (
        "SIGFPE in openslide_open: 256 tiles needed, 1 listed",
        "svs",
        [("tag", 0, 325, i, 0) for i in range(12)] + [("tag", 2, 322, 0, 1)],
    ),
}


@pytest.mark.parametrize("name", REGRESSIONS)
def test_fuzz_findings_stay_fixed(seeds, worker, name):
    """Inputs the fuzzer found (a crash or a non-WsiError exception), now a WsiError or fine."""
    was, seed_name, edits = REGRESSIONS[name]
    source = seeds[seed_name]
    mutations = [
        (kind, source.entry(page, code), element, value)
        for kind, page, code, element, value in edits
    ]
    answer = check_file(worker, mutate(source, mutations), source.suffix, f"{name} ({was})")
    expected = {
        "tile-length-373M": "373326185 px tiles",
        "wide-level-1": "larger than level 0",
        "tile-width-1": "needs 256 tiles but lists 1",
    }
    if name in expected:
        assert answer["error"].startswith("SlideOpenError") and expected[name] in answer["error"]


def test_harness_catches_crashes_and_hangs(tmp_path):
    """A worker that segfaults or never answers is reported, and pytest survives both."""
    w = Worker(tmp_path, timeout_s=1.0)
    w.proc = subprocess.Popen(
        [sys.executable, "-c", "import ctypes, sys; sys.stdin.readline(); ctypes.string_at(0)"],
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        bufsize=1,
    )
    w.stderr = open(tmp_path / "crash.log", "w")  # noqa: SIM115
    w.fresh = False
    crashed = w.run(tmp_path / "x.tiff")
    assert crashed["outcome"] == "crash" and "-11" in crashed["error"]
    w.proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=1,
    )
    w.fresh = False
    hung = w.run(tmp_path / "x.tiff")
    assert hung["outcome"] == "hang" and w.proc is None
