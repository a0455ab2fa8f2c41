"""The local runner of ``wsi embed``: a plan's slides tiled, read and encoded on this machine.

Three stages run at once: a thread tiles the next slides (under each slide's lock: tissue,
grid, ``patches/`` and ``qc/`` files), DataLoader worker processes read and resize patches
(each opens the slide itself), and the calling thread encodes batches and streams the rows
into ``features/{encoder}/{slide_id}.h5``. With encoding lanes (the default on a CPU, see
:func:`wsi.pipeline.loader.encoding_lanes`) the worker processes encode what they read and
the calling thread only writes the rows. The tiling thread hands the encoder either a
:class:`_Decided` row (done under the lock, or failed) or a :class:`_SlideJob`; a slide's
features go final only after its QC files, and its lock is released only after its
manifest row is recorded.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi.pipeline.batch import RowRecorder, clean_output_folder, failed_row, failure_message
from wsi.pipeline.loader import BatchSpec, PatchBatch, patch_loader
from wsi.pipeline.plan import Plan, features_done_row, slides_in_turn
from wsi.pipeline.settings import EmbedSettings
from wsi.pipeline.tile import provenance, tile_slide, write_qc
from wsi.store.folder import FileLock
from wsi.store.h5 import FeatureWriter, write_coords
from wsi.store.manifest import Manifest, manifest_row
from wsi.tiling import TileGrid

_LOOKAHEAD_SLIDES = 2
Row = dict[str, Any]


@dataclass
class _SlideJob:
    """A tiled slide waiting for (or in) encoding."""

    index: int
    path: Path
    slide_id: str
    coords: np.ndarray
    tissue_fraction: np.ndarray
    attrs: dict[str, Any]
    provenance: dict[str, Any]
    mpp: float
    mpp_source: str | None
    started: float
    grid: TileGrid = field(repr=False)
    writer: FeatureWriter | None = None
    rows_done: int = 0
    failed: bool = False
    bad_tiles: np.ndarray | None = None
    tile_error: str | None = None
    lock: FileLock | None = None
    qc_done: threading.Event = field(default_factory=threading.Event)
    """Set once ``qc/`` is written (by the tiling thread, while the slide is encoded)."""
    qc_error: str | None = None
    stain: Any = None
    """The slide's Macenko fit (``models.stain.StainFit``) when stain normalisation is on."""

    @property
    def n_tiles(self) -> int:
        return int(self.coords.shape[0])

    def row(self, status: str, seconds: float, **extra: Any) -> Row:
        """This slide's manifest row."""
        return manifest_row(
            self.path,
            status,
            n_tiles=extra.pop("n_tiles", self.n_tiles),
            mpp=self.mpp,
            mpp_source=self.mpp_source,
            seconds=seconds,
            **extra,
        )

    def release(self) -> None:
        """Let other processes at the slide: after its files and manifest row are final."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


@dataclass(frozen=True)
class _Decided:
    """A slide the tiling thread settled without encoding: done already, or failed."""

    index: int
    row: Row
    lock: FileLock
    weak: bool = False


class LocalRunner:
    """Tiles, reads and encodes slides of one output folder in this process (see the module
    docstring); rows go to ``recorder``. ``encoder``: an encoder already loaded (else loaded
    from ``settings`` on the first batch, not at all when every slide is done)."""

    def __init__(
        self, out_dir: Path, settings: EmbedSettings, recorder: RowRecorder, encoder: Any = None
    ) -> None:
        self.out, self.settings, self.recorder = Path(out_dir), settings, recorder
        self.features_dir = settings.features_dir(self.out)
        self.jobs: dict[int, _SlideJob] = {}
        self._encoder = encoder
        self._weights_key = settings.weights_key()
        self._tile_bar: Any = None
        self._current = -1
        self._events: queue.Queue = queue.Queue(maxsize=_LOOKAHEAD_SLIDES)
        self._stop = threading.Event()
        self._tiling_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"LocalRunner({self.out}, {self.settings!r}, {len(self.jobs)} slides in flight)"

    @property
    def encoder(self) -> Any:
        """The encoder, loaded on first use."""
        if self._encoder is None:
            self._encoder = self.settings.load_encoder()
        return self._encoder

    # stage 1: tiling thread -------------------------------------------------------------
    def _put(self, event: _Decided | _SlideJob | None) -> None:
        while not self._stop.is_set():
            try:
                self._events.put(event, timeout=0.2)
                return
            except queue.Full:
                continue

    def _tile_all(self, items: list[tuple[int, Path]]) -> None:
        try:
            for index, path, lock in slides_in_turn(self.out, items, self.features_dir, self._stop):
                self._prepare(index, path, lock)
        except BaseException as exc:  # e.g. an output folder without flock: the run stops
            self._tiling_error = exc
        finally:
            self._put(None)

    def _prepare(self, index: int, path: Path, lock: FileLock) -> None:
        """Under the slide's lock: a done row, a failed row or a tiled job for the encoder."""
        start = time.perf_counter()
        try:
            key = self.settings.embed_key(path, self._weights_key)
            done = features_done_row(self.out, path, self.settings, key)
            if done is not None:
                self._put(_Decided(index, done, lock, weak=True))
                return
            self._tile_one(index, path, key, start, lock)
        except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the batch
            self._put(_Decided(index, failed_row(path, exc, start, self.settings.debug), lock))

    def _tile_one(
        self, index: int, path: Path, key: dict[str, Any], start: float, lock: FileLock
    ) -> None:
        """Tile, hand the job to the encoder, then draw the QC picture meanwhile."""
        slide, mask, grid = tile_slide(path, self.settings.tiling)
        with slide:
            prov = provenance(slide, grid, quickhash=key["slide_quickhash"], embed_key=key)
            write_coords(
                self.out / "patches" / f"{slide.slide_id}.h5",
                grid.coords,
                grid.attrs(),
                prov,
                tissue_fraction=grid.tissue_fraction,
            )
            job = _SlideJob(
                index=index,
                path=path,
                slide_id=slide.slide_id,
                coords=grid.coords,
                tissue_fraction=grid.tissue_fraction,
                attrs=grid.attrs(),
                provenance=prov,
                mpp=slide.mpp,
                mpp_source=slide.mpp_source,
                started=start,
                grid=grid,
                lock=lock,
            )
            self._put(job)
            try:
                write_qc(self.out, slide, mask, grid)
            except Exception as exc:  # noqa: BLE001 - the slide fails at its commit
                job.qc_error = failure_message(exc)
            finally:
                job.qc_done.set()

    # stage 2: the sampler, consumed lazily by the DataLoader in this thread --------------
    def _specs(self, items: list[tuple[int, Path]]) -> Iterator[BatchSpec]:
        # Started on the first request, after the loader has forked its workers, so no
        # worker is forked while this thread holds a lock.
        thread = threading.Thread(
            target=self._tile_all, args=(items,), name="wsi-tiling", daemon=True
        )
        thread.start()
        while (event := self._events.get()) is not None:
            if isinstance(event, _Decided):
                self.recorder.record(event.index, event.row, weak=event.weak)
                event.lock.release()
                continue
            self.jobs[event.index] = event
            if event.n_tiles == 0:
                self._open_writer(event)
                self._commit(event)
                continue
            yield from BatchSpec.batches(event.index, event.grid, self.settings.batch_size)
        if self._tiling_error is not None:
            raise self._tiling_error

    # stage 3: encode and write ----------------------------------------------------------
    def _open_writer(self, job: _SlideJob) -> None:
        enc = self.encoder
        prov = dict(job.provenance)
        prov["encoder"] = enc.provenance()
        prov["features_dtype"] = "float32"
        if job.stain is not None:
            prov["stain"] = job.stain.as_dict()
        job.writer = FeatureWriter(
            self.settings.features_path(self.out, job.slide_id),
            job.coords,
            job.attrs,
            prov,
            enc.feature_dim,
            {"encoder": self.settings.encoder_name, "weights_sha256": enc.weights_sha256 or ""},
            tissue_fraction=job.tissue_fraction,
        )

    def _show(self, job: _SlideJob) -> None:
        """Move the tile bar to ``job`` when it is a later slide (lanes return batches as
        they finish: the last ones of a slide may come after the next slide's first)."""
        if job.index > self._current and self._tile_bar is not None:
            self._current = job.index
            self._tile_bar.set_description(job.slide_id[:30], refresh=False)
            self._tile_bar.reset(total=job.n_tiles)

    def _encode(self, job: _SlideJob, batch: PatchBatch) -> None:
        """Encode one batch into the slide's feature file; note its undecodable tiles."""
        if batch.error is not None:
            raise RuntimeError(batch.error)
        patches = (
            self._stain_normalised(job, batch.patches) if self.settings.stain else (batch.patches)
        )
        if job.writer is None:
            self._open_writer(job)
        assert job.writer is not None
        rows = batch.features if batch.features is not None else self.encoder(patches).numpy()
        job.writer.write(batch.spec.start, rows)
        job.rows_done += rows.shape[0]
        if batch.failed is not None and batch.failed.any():
            if job.bad_tiles is None:
                job.bad_tiles = np.zeros(job.n_tiles, bool)
            job.bad_tiles[batch.spec.start : batch.spec.start + len(batch.failed)] = batch.failed
            job.tile_error = job.tile_error or batch.tile_error
        if self._tile_bar is not None and job.index == self._current:
            self._tile_bar.update(rows.shape[0])

    def _stain_normalised(self, job: _SlideJob, patches: Any) -> Any:
        """``patches`` Macenko-normalised on the encoder's device, the slide's stains fitted
        on its first batch (tissue tiles)."""
        import torch

        from models.stain import fit_macenko, normalise_macenko

        tiles = torch.as_tensor(patches)
        if job.stain is None:
            job.stain = fit_macenko(tiles)
        return normalise_macenko(tiles.to(self.encoder.device), job.stain)

    def _consume(self, batch: PatchBatch) -> None:
        job = self.jobs[batch.spec.slide_index]
        if job.failed:
            return
        self._show(job)
        try:
            self._encode(job, batch)
        except Exception as exc:  # noqa: BLE001 - the slide fails, the batch goes on
            from models.errors import ModelsError

            if isinstance(exc, ModelsError):
                raise
            self._fail(job, batch.error or failure_message(exc))
            return
        if job.rows_done == job.n_tiles:
            self._commit(job)

    def _fail(self, job: _SlideJob, message: str) -> None:
        job.failed = True
        if job.writer is not None:
            job.writer.abort()
        self.recorder.record(
            job.index, job.row("failed", time.perf_counter() - job.started, error=message)
        )
        job.release()

    def _final_row(self, job: _SlideJob) -> tuple[Row, bool]:
        """The row of a fully encoded slide, and whether its features are kept."""
        n_bad = 0 if job.bad_tiles is None else int(job.bad_tiles.sum())
        seconds = time.perf_counter() - job.started
        limit = self.settings.max_failed_fraction
        if job.qc_error is not None:
            return job.row("failed", seconds, error=job.qc_error), False
        if n_bad > limit * job.n_tiles:
            return job.row(
                "failed",
                seconds,
                failed_tiles=n_bad,
                error=f"{n_bad} of {job.n_tiles} tiles could not be decoded (more than "
                f"{limit:.0%}); first: {job.tile_error}",
            ), False
        kept = job.n_tiles - n_bad
        return job.row(
            "ok" if kept else "no_tissue",
            seconds,
            n_tiles=kept,
            failed_tiles=n_bad,
            error=f"skipped {n_bad} undecodable tiles; first: {job.tile_error}" if n_bad else "",
        ), True

    def _commit(self, job: _SlideJob) -> None:
        assert job.writer is not None
        while not job.qc_done.wait(0.2):  # the features go final only after the QC files
            if self._stop.is_set():
                return
        row, keep = self._final_row(job)
        if keep:
            job.writer.commit(drop=job.bad_tiles)
        else:
            job.writer.abort()
        self.recorder.record(job.index, row)
        job.release()
        del self.jobs[job.index]

    def _loader(self, items: list[tuple[int, Path]]) -> Any:
        """The batches of ``items``: read by reader processes (or here) for this thread to
        encode, or read and encoded by encoding lanes."""
        if self.settings.may_use_lanes(self._encoder):  # the encoder decides: load it now
            lanes = self.settings.encoding_lanes(self.encoder)
            if lanes:
                return patch_loader(self._specs(items), lanes, encoder=self.encoder)
        pin = self.settings.encoder_device(self._encoder).type == "cuda"
        workers = self.settings.reader_workers(self._encoder)
        return patch_loader(self._specs(items), workers, pin_memory=pin)

    def run(self, items: Iterable[tuple[int, Path]]) -> None:
        """Process the (index, path) slides; each one's row goes to the recorder."""
        from tqdm.auto import tqdm

        self._tile_bar = tqdm(
            desc="tiles",
            unit="tile",
            disable=not self.settings.progress,
            position=1,
            leave=False,
            dynamic_ncols=True,
        )
        loader = self._loader(list(items))
        try:
            for batch in loader:
                self._consume(batch)
        finally:
            self._stop.set()
            for job in self.jobs.values():
                if job.writer is not None:
                    job.writer.abort()
                job.release()
            self._tile_bar.close()


def run_local(
    plan: Plan, out_dir: Path, settings: EmbedSettings, manifest: Manifest | None
) -> list[Row]:
    """Run a plan in this process; return one row per slide (in order), each also saved to
    ``manifest``."""
    clean_output_folder(out_dir, settings.features_dir(out_dir))
    recorder = RowRecorder(manifest, len(plan.slides), progress=settings.progress, position=0)
    plan.run(recorder, LocalRunner(out_dir, settings, recorder).run)
    return recorder.ordered()
