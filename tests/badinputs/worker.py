"""A child process that runs the slide API over files named on stdin, for fuzzing.

``python -m tests.badinputs.worker`` reads one file path per line and answers one JSON line
per file: ``{"outcome": "ok"}``, ``{"outcome": "wsi", "error": "SlideOpenError: ..."}``
(an expected :class:`wsi.errors.WsiError`), or ``{"outcome": "bug", "error": traceback}``
(anything else). ``"restart": true`` in an answer means the worker exits after it: its
address space grew past 60 % of the cap, and a fresh process keeps later examples fair.

A crash (segfault, abort) or a hang shows up in the parent as a missing answer, so the
parent (``tests/test_fuzz.py``) survives both. Memory is capped with ``RLIMIT_AS``
(``WSI_FUZZ_MEMORY_MB``, default 3072) so that a full read of a huge declared level fails
fast as a MemoryError (a bug) instead of swapping.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback
import warnings

MEMORY_MB = int(os.environ.get("WSI_FUZZ_MEMORY_MB", "3072"))
TILE_PX = 64
"""Tile side of the grids read (px at 0.5 µm/px)."""


def exercise(path: str) -> list[BaseException]:
    """Open ``path``, tile it, read tiles, patches at every level and thumbnails; return
    the exceptions raised (at most one per pass).

    Once with the metadata's mpp and fast reads, once with ``mpp=0.5`` through openslide
    only, so that tiling is reached even when the mutation destroyed the scale.
    """
    raised = []
    for mpp, fast in ((None, True), (0.5, False)):
        try:
            _one_pass(path, mpp, fast)
        except Exception as exc:  # noqa: BLE001 - sorted by the caller
            raised.append(exc)
    return raised


def _one_pass(path: str, mpp: float | None, fast: bool) -> None:
    import numpy as np

    import wsi

    with wsi.open_slide(path, mpp=mpp, fast_reads=fast) as slide:
        slide.get_thumbnail(96)
        for image in slide.associated_images.values():
            assert image.mode == "RGB", image.mode
        w, h = slide.dimensions
        for level in range(slide.level_count):
            ds = slide.level_downsamples[level]
            for x, y in ((0, 0), (w / 2, h / 2), (w - 10, h - 10), (-50, -50)):
                patch = slide.read_patch(x, y, 64 * ds, 32, level)
                assert patch.shape == (32, 32, 3), patch.shape
        if slide.mpp_or_none is None:
            return
        grid = wsi.tile(slide, mpp=0.5, size=TILE_PX, min_tissue=0)
        picks = np.unique(np.linspace(0, len(grid) - 1, num=min(len(grid), 9)).astype(int))
        for i in picks:
            tile = grid.read(int(i))
            assert tile.shape == (TILE_PX, TILE_PX, 3), tile.shape


def _virtual_memory_mb() -> float:
    """This process's virtual size (MB), what ``RLIMIT_AS`` limits."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    """Serve paths from stdin until it closes."""
    limit = MEMORY_MB << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warnings.simplefilter("ignore")
    from wsi.errors import WsiError

    out = sys.stdout
    for line in sys.stdin:
        raised = exercise(line.rstrip("\n"))
        bugs = [e for e in raised if not isinstance(e, WsiError)]
        if bugs:
            error = "".join(traceback.format_exception(bugs[0]))
            answer = {"outcome": "bug", "error": error}
        elif raised:
            answer = {"outcome": "wsi", "error": f"{type(raised[0]).__name__}: {raised[0]}"}
        else:
            answer = {"outcome": "ok"}
        restart = _virtual_memory_mb() > MEMORY_MB * 0.6
        out.write(json.dumps({**answer, "restart": restart}) + "\n")
        out.flush()
        if restart:  # fragmentation after a large decode: start afresh rather than fail later
            return


if __name__ == "__main__":
    main()
