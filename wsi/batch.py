"""Batches of slides: finding them, the manifest, and running one job per slide.

A batch never dies because one slide is bad: each slide's expected failures
(:class:`wsi.errors.WsiError`, OS errors) become a manifest row with status ``failed``
and a one-line error; the others still run.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from wsi.outputs import temporary_path
from wsi.slide import display_path, slide_id_of

SLIDE_EXTENSIONS = frozenset(
    {
        ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide",
        ".bif", ".dcm", ".jpg", ".jpeg", ".png", ".qptiff",
    }
)
"""File extensions picked up when a folder is given (explicit files are always taken)."""

MANIFEST_COLUMNS = (
    "slide_id", "path", "status", "n_tiles", "mpp", "mpp_source", "seconds", "error",
)
STATUSES = ("ok", "no_tissue", "failed")


def find_slides(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files, folders (searched recursively for :data:`SLIDE_EXTENSIONS`) and globs.

    A path that matches nothing is kept as it is, so that it is reported as ``failed``
    (no such file) rather than silently skipped. Order: as given, each folder sorted.
    """
    found: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        p = Path(text)
        if p.is_dir() and p.suffix.lower() not in SLIDE_EXTENSIONS:
            found.extend(
                sorted(q for q in p.rglob("*") if q.suffix.lower() in SLIDE_EXTENSIONS
                       and not q.name.startswith("."))
            )
        elif not p.exists() and glob.has_magic(text):
            found.extend(Path(m) for m in sorted(glob.glob(text, recursive=True)))
        else:
            found.append(p)
    unique: dict[str, Path] = {}
    for p in found:
        unique.setdefault(os.path.abspath(p), p)
    return list(unique.values())


def manifest_row(
    path: Path,
    status: str,
    *,
    n_tiles: int = 0,
    mpp: float | None = None,
    mpp_source: str | None = None,
    seconds: float = 0.0,
    error: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """One manifest row (see DESIGN.md: slide_id, path, status, n_tiles, mpp, …)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    return {
        "slide_id": slide_id_of(path),
        "path": display_path(path),
        "status": status,
        "n_tiles": int(n_tiles),
        "mpp": "" if mpp is None or not math.isfinite(mpp) else f"{mpp:.6g}",
        "mpp_source": mpp_source or "",
        "seconds": f"{seconds:.2f}",
        "error": " ".join(str(error).split()),
        **extra,
    }


class Manifest:
    """``manifest.csv`` of an output folder: one row per slide, kept across re-runs and
    shared by concurrent runs.

    Every save merges with what is on disk under a lock (``.locks/manifest.csv.lock``):
    rows this process wrote since its last save replace the disk's, the others (another
    process's work) are kept. A row from processing a slide is saved at once (a killed run loses
    nothing); a ``weak`` row (a slide found already done) only fills a gap or replaces a
    ``failed`` row, and is saved at most every ``save_interval_s`` (re-runs over 100k done
    slides would otherwise rewrite the file 100k times); :meth:`flush` saves what is left.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        extra_columns: Sequence[str] = (),
        save_interval_s: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self.columns = list(MANIFEST_COLUMNS) + [c for c in extra_columns if c not in MANIFEST_COLUMNS]
        self.save_interval_s = save_interval_s
        self.rows: dict[str, dict[str, Any]] = self._read()
        self._strong: set[str] = set()
        self._weak: set[str] = set()
        self._pending = False
        self._last_save = -math.inf

    def _read(self) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return rows
        with open(self.path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row.get("slide_id"):
                    rows[row["slide_id"]] = row
                    self._add_columns(row)
        return rows

    def _add_columns(self, row: Mapping[str, Any]) -> None:
        for key in row:
            if key and key not in self.columns:
                self.columns.append(key)

    def update(self, row: Mapping[str, Any], *, weak: bool = False) -> None:
        """Insert or replace the row of ``row['slide_id']`` and save (see the class doc)."""
        sid = str(row["slide_id"])
        self._add_columns(row)
        if weak and sid in self.rows and self.rows[sid].get("status") != "failed":
            return
        self.rows[sid] = dict(row)
        (self._weak if weak else self._strong).add(sid)
        self._pending = True
        if not weak or time.monotonic() - self._last_save >= self.save_interval_s:
            self.save()

    def flush(self) -> None:
        """Save rows not saved yet."""
        if self._pending:
            self.save()

    def save(self) -> None:
        """Merge with the file on disk under the manifest lock, then write the CSV under a
        temporary name and rename it into place."""
        from wsi.outputs import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock.acquire(self.path.parent / ".locks" / f"{self.path.name}.lock")
        assert lock is not None
        with lock:
            merged = self._read()
            for sid in self._strong:
                merged[sid] = self.rows[sid]
            for sid in self._weak - self._strong:
                if merged.get(sid, {}).get("status", "failed") == "failed":
                    merged[sid] = self.rows[sid]
            tmp = temporary_path(self.path)
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
                writer.writeheader()
                for row in merged.values():
                    writer.writerow({c: row.get(c, "") for c in self.columns})
            os.replace(tmp, self.path)
        self.rows = merged
        self._strong.clear()
        self._weak.clear()
        self._pending = False
        self._last_save = time.monotonic()


def duplicate_id_row(path: Path, first: Path) -> dict[str, Any]:
    """The ``failed`` row of a slide whose id (file name) an earlier slide already has."""
    return manifest_row(
        path, "failed", error=f"duplicate slide id {slide_id_of(path)!r}: {first} has the same "
        "file name; rename one so outputs do not overwrite each other",
    )


def failure_message(exc: BaseException) -> str:
    """One line for a failed slide: the error's own message for expected failures, the
    exception type too for unexpected ones (bugs: re-run with --debug)."""
    from wsi.errors import WsiError

    if isinstance(exc, WsiError | OSError):
        return " ".join(str(exc).split())
    return f"internal error {type(exc).__name__}: {exc} (re-run with --debug for the traceback)"


def run_batch(
    slides: Sequence[Path],
    job: Any,
    manifest: Manifest,
    *,
    progress: bool = True,
    debug: bool = False,
    desc: str = "slides",
) -> list[dict[str, Any]]:
    """Run ``job(path) -> manifest row`` on each slide, recording every outcome.

    An exception becomes a ``failed`` row with a one-line error, printed as
    ``slide_id: failed: message``; with ``debug`` the traceback is printed too.
    KeyboardInterrupt stops the batch.
    """
    import traceback

    from tqdm.auto import tqdm

    rows = []
    seen: dict[str, Path] = {}
    bar = tqdm(slides, desc=desc, unit="slide", disable=not progress, dynamic_ncols=True)
    for path in bar:
        bar.set_postfix_str(path.name[:40])
        start = time.perf_counter()
        sid = slide_id_of(path)
        if sid in seen:
            row = duplicate_id_row(path, seen[sid])
        else:
            seen[sid] = path
            try:
                row = job(path)
            except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the batch
                row = manifest_row(
                    path, "failed", seconds=time.perf_counter() - start, error=failure_message(exc)
                )
                if debug:
                    tqdm.write(traceback.format_exc())
        if row["status"] == "failed":
            tqdm.write(f"{row['slide_id']}: failed: {row['error']}")
        manifest.update(row)
        rows.append(row)
    return rows
