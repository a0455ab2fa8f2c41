"""Batches of slides: finding them, and the rows a batch run records.

A batch never dies because one slide is bad: each slide's expected failures
(:class:`wsi.errors.WsiError`, OS errors) become a manifest row with status ``failed``
and a one-line error; the others still run. Which slides a run does is decided by
:func:`wsi.pipeline.plan.plan_slides`.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from wsi.io.dicom import group_dicom_series, is_dicom_series_folder
from wsi.io.slide import display_path, slide_id_of
from wsi.store.folder import remove_stale_temporaries
from wsi.store.manifest import Manifest, manifest_row

SLIDE_EXTENSIONS = frozenset(
    {
        ".svs",
        ".tif",
        ".tiff",
        ".ndpi",
        ".vms",
        ".vmu",
        ".scn",
        ".mrxs",
        ".svslide",
        ".bif",
        ".dcm",
        ".jpg",
        ".jpeg",
        ".png",
        ".qptiff",
    }
)
"""File extensions picked up when a folder is given (explicit files are always taken)."""


def find_slides(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files, folders (searched recursively for :data:`SLIDE_EXTENSIONS`) and globs.

    A path that matches nothing is kept as it is, so that it is reported as ``failed``
    (no such file) rather than silently skipped. Order: as given, each folder sorted.
    A folder holding the DICOM instances of one series is one slide (the folder).
    """
    found: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        p = Path(text)
        if p.is_dir() and is_dicom_series_folder(p):
            found.append(p)
        elif p.is_dir() and p.suffix.lower() not in SLIDE_EXTENSIONS:
            found.extend(
                group_dicom_series(
                    sorted(
                        q
                        for q in p.rglob("*")
                        if q.suffix.lower() in SLIDE_EXTENSIONS and not q.name.startswith(".")
                    )
                )
            )
        elif not p.exists() and glob.has_magic(text):
            found.extend(Path(m) for m in sorted(glob.glob(text, recursive=True)))
        else:
            found.append(p)
    unique: dict[str, Path] = {}
    for p in found:
        unique.setdefault(os.path.abspath(p), p)
    return list(unique.values())


def duplicate_id_row(path: Path, first: Path) -> dict[str, Any]:
    """The ``failed`` row of a slide whose id (file name) an earlier slide already has."""
    return manifest_row(
        path,
        "failed",
        error=f"duplicate slide id {slide_id_of(path)!r}: {first} has the same "
        "file name; rename one so outputs do not overwrite each other",
    )


def failure_message(exc: BaseException) -> str:
    """One line for a failed slide: the error's own message for expected failures, the
    exception type too for unexpected ones (bugs: re-run with --debug)."""
    from wsi.errors import WsiError

    if isinstance(exc, WsiError | OSError):
        return " ".join(str(exc).split())
    return f"internal error {type(exc).__name__}: {exc} (re-run with --debug for the traceback)"


def failed_row(
    path: Path, exc: BaseException, started: float, debug: bool = False
) -> dict[str, Any]:
    """The ``failed`` row of a slide whose step raised ``exc`` (``started``: its
    ``time.perf_counter()`` start); with ``debug`` the traceback is printed too."""
    if debug:
        import traceback

        from tqdm.auto import tqdm

        tqdm.write(traceback.format_exc())
    return manifest_row(
        path, "failed", seconds=time.perf_counter() - started, error=failure_message(exc)
    )


def clean_output_folder(out_dir: Path, features_dir: Path | None = None) -> None:
    """Delete temporaries that dead processes of this host left in an output folder."""
    for folder in (out_dir / "patches", features_dir, out_dir / "qc", out_dir):
        if folder is not None:
            remove_stale_temporaries(folder)


class RowRecorder:
    """The rows of one batch run, by slide index: each saved to the manifest (when there is
    one), a failure printed as ``slide_id: failed: message``, counted on the slides bar."""

    def __init__(
        self,
        manifest: Manifest | None,
        total: int,
        *,
        progress: bool = True,
        desc: str = "slides",
        position: int | None = None,
    ) -> None:
        from tqdm.auto import tqdm

        self.manifest = manifest
        self.rows: dict[int, dict[str, Any]] = {}
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit="slide",
            disable=not progress,
            position=position,
            dynamic_ncols=True,
        )

    def __repr__(self) -> str:
        failed = sum(r["status"] == "failed" for r in self.rows.values())
        return f"RowRecorder({len(self.rows)} rows, {failed} failed, manifest {self.manifest is not None})"

    def record(self, index: int, row: dict[str, Any], *, weak: bool = False) -> None:
        """Keep ``row`` as slide ``index``'s; ``weak``: a slide found done (see ``Manifest``)."""
        from tqdm.auto import tqdm

        self.rows[index] = row
        if self.manifest is not None:
            self.manifest.update(row, weak=weak)
        if row["status"] == "failed":
            tqdm.write(f"{row['slide_id']}: failed: {row['error']}")
        self._bar.update(1)

    def working_on(self, path: Path) -> None:
        """Show the slide being processed next to the bar."""
        self._bar.set_postfix_str(display_path(path.name)[:40])

    def ordered(self) -> list[dict[str, Any]]:
        """The rows in slide order."""
        return [self.rows[i] for i in sorted(self.rows)]

    def close(self) -> None:
        """Save what the manifest has not saved yet; close the bar."""
        if self.manifest is not None:
            self.manifest.flush()
        self._bar.close()
