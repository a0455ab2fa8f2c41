"""``manifest.csv`` of an output folder: one row per slide (status, tiles, mpp, error),
kept across re-runs and shared by concurrent runs."""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.atomic import atomic_path
from wsi.io.slide import display_path, slide_id_of
from wsi.store.folder import FileLock

MANIFEST_COLUMNS = (
    "slide_id",
    "path",
    "status",
    "n_tiles",
    "mpp",
    "mpp_source",
    "seconds",
    "error",
)
STATUSES = ("ok", "no_tissue", "failed")


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
        self.columns = list(MANIFEST_COLUMNS) + [
            c for c in extra_columns if c not in MANIFEST_COLUMNS
        ]
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
            with atomic_path(self.path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
                writer.writeheader()
                for row in merged.values():
                    writer.writerow({c: row.get(c, "") for c in self.columns})
        self.rows = merged
        self._strong.clear()
        self._weak.clear()
        self._pending = False
        self._last_save = time.monotonic()
