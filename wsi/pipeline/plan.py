"""Which slides a batch run does: one planning step for ``wsi tile``, ``wsi embed`` and the
Ray runner alike.

:func:`plan_slides` gives every slide either a row already decided (a second slide with an
id seen before fails; a slide whose output file has the same provenance key is done, found
without loading the model) or a place in :attr:`Plan.todo`. The runners then take each
slide to do under its lock (:func:`slides_in_turn`) and check once more whether it is done:
another process may have finished it in the meantime.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi.errors import FeatureFileError
from wsi.io.slide import slide_id_of
from wsi.pipeline.batch import RowRecorder, duplicate_id_row
from wsi.pipeline.settings import EmbedSettings, tile_key
from wsi.store.folder import FileLock, lock_holder, slide_lock_path, take_slide
from wsi.store.h5 import FeatureBag, read_provenance, read_tile_file
from wsi.store.manifest import manifest_row
from wsi.tiling import TileOptions

Row = dict[str, Any]
DoneCheck = Callable[[Path], "Row | None"]
"""``path`` → the row of a slide whose outputs are already final, or None."""


@dataclass(frozen=True, repr=False)
class Plan:
    """The slides of a run: those to do, and the rows already decided.

    Attributes:
        slides: every slide, in order; rows are keyed by index into it.
        todo: indexes of the slides to process.
        rows: rows decided without processing: duplicate ids (``failed``) and slides
            already done (``ok`` / ``no_tissue``).
        found_done: the indexes in ``rows`` that are done slides (recorded as weak rows:
            they fill a manifest's gap but do not replace another run's row).
    """

    slides: tuple[Path, ...]
    todo: tuple[int, ...]
    rows: dict[int, Row]
    found_done: frozenset[int]

    def __repr__(self) -> str:
        duplicates = len(self.rows) - len(self.found_done)
        return (
            f"Plan({len(self.slides)} slides: {len(self.todo)} to do, "
            f"{len(self.found_done)} done, {duplicates} duplicate ids)"
        )

    def todo_items(self) -> list[tuple[int, Path]]:
        """(index, path) of each slide to do."""
        return [(i, self.slides[i]) for i in self.todo]

    def run(self, recorder: RowRecorder, process: Callable[[list[tuple[int, Path]]], None]) -> None:
        """Record the done rows, ``process`` the slides to do (recording their rows), then
        record the duplicate-id rows: last, so that the failure is the row their id keeps in
        ``manifest.csv``, whichever runner ran the plan. Closes ``recorder``."""
        try:
            for i in sorted(self.found_done):
                recorder.record(i, self.rows[i], weak=True)  # fills a gap only
            if self.todo:
                process(self.todo_items())
            for i in sorted(set(self.rows) - self.found_done):
                recorder.record(i, self.rows[i])
        finally:
            recorder.close()


def plan_slides(slides: Sequence[Path], done: DoneCheck | None = None) -> Plan:
    """Decide what needs doing: duplicate ids fail, ``done(path)`` answers finished slides.

    An error while checking (an unreadable slide) leaves the slide to do: its step reports
    the error on the slide's row.
    """
    seen: dict[str, Path] = {}
    todo: list[int] = []
    rows: dict[int, Row] = {}
    found: set[int] = set()
    for index, path in enumerate(slides):
        sid = slide_id_of(path)
        if sid in seen:
            rows[index] = duplicate_id_row(path, seen[sid])
            continue
        seen[sid] = path
        row = _checked(done, path)
        if row is None:
            todo.append(index)
        else:
            rows[index] = row
            found.add(index)
    return Plan(tuple(slides), tuple(todo), rows, frozenset(found))


def _checked(done: DoneCheck | None, path: Path) -> Row | None:
    if done is None:
        return None
    try:
        return done(path)
    except Exception:  # noqa: BLE001 - e.g. unreadable: the slide's step reports it
        return None


def _done_row(path: Path, provenance: dict[str, Any], n_tiles: int) -> Row:
    tiling = provenance.get("tiling", {})
    return manifest_row(
        path,
        "ok" if n_tiles else "no_tissue",
        n_tiles=n_tiles,
        mpp=tiling.get("mpp_level0"),
        mpp_source=tiling.get("mpp_source"),
    )


def features_done_row(
    out_dir: Path,
    path: Path,
    settings: EmbedSettings,
    key: dict[str, Any] | None = None,
    *,
    weights_key: Any = None,
) -> Row | None:
    """The row of a slide whose ``features/{encoder}/{id}.h5`` has the provenance key
    ``key`` (None: computed from the slide and ``weights_key``), or None (to do: missing,
    damaged, different key or feature width, or ``settings.skip_done`` off)."""
    target = settings.features_path(out_dir, slide_id_of(path))
    if not settings.skip_done or not target.exists():
        return None
    key = key if key is not None else settings.embed_key(path, weights_key)
    try:
        prov = read_provenance(target)
        if prov is None or prov.get("embed_key") != key:
            return None
        bag = FeatureBag(target)
        if settings.expected_feature_dim() not in (None, bag.feature_dim):
            return None
        return _done_row(path, prov, len(bag))
    except FeatureFileError:
        return None  # a damaged file: embed the slide again


def _stored_tile_key(prov: dict[str, Any]) -> dict[str, Any]:
    """The tile key a patches file was written with (``wsi embed`` writes an embed key,
    which holds it)."""
    key = prov.get("tile_key") or prov.get("embed_key") or {}
    return {"slide_quickhash": key.get("slide_quickhash"), "tiling": key.get("tiling")}


def tiles_done_row(out_dir: Path, path: Path, tiling: TileOptions) -> Row | None:
    """The row of a slide whose ``patches/{id}.h5`` has the same :func:`tile_key` (slide
    quickhash + tiling options), or None (to do)."""
    target = out_dir / "patches" / f"{slide_id_of(path)}.h5"
    if not target.exists():
        return None
    try:
        tiles = read_tile_file(target, features=False)
    except FeatureFileError:
        return None  # a damaged file: tile the slide again
    if _stored_tile_key(tiles.provenance) != tile_key(path, tiling):
        return None
    return _done_row(path, tiles.provenance, int(tiles.coords.shape[0]))


def slides_in_turn(
    out_dir: Path,
    items: Iterable[tuple[int, Path]],
    features_dir: Path | None = None,
    stop: threading.Event | None = None,
) -> Iterator[tuple[int, Path, FileLock]]:
    """Each (index, path) with its slide's lock taken. A slide another process holds is left
    for the end and waited for. Stops early when ``stop`` is set; the caller releases each
    lock once the slide's files and manifest row are final."""
    deferred: list[tuple[int, Path]] = []
    for index, path in items:
        if stop is not None and stop.is_set():
            return
        lock = take_slide(out_dir, slide_id_of(path), features_dir)
        if lock is None:
            deferred.append((index, path))  # another process has it: come back later
            continue
        yield index, path, lock
    for index, path in deferred:
        lock = wait_for_slide(out_dir, path, features_dir, stop)
        if lock is None:
            return
        yield index, path, lock


def wait_for_slide(
    out_dir: Path,
    path: Path,
    features_dir: Path | None = None,
    stop: threading.Event | None = None,
) -> FileLock | None:
    """Wait until the process working on ``path`` lets go of it; None when ``stop`` is set."""
    from tqdm.auto import tqdm

    sid = slide_id_of(path)
    holder = lock_holder(slide_lock_path(out_dir, sid)) or {}
    tqdm.write(
        f"{sid}: being processed by {holder.get('host', '?')} pid "
        f"{holder.get('pid', '?')}; waiting for it"
    )
    while stop is None or not stop.is_set():
        lock = take_slide(out_dir, sid, features_dir, wait=True, timeout_s=1.0)
        if lock is not None:
            return lock
    return None
