"""Slides → features: one slide in a notebook, or whole archives into feature files.

``embed_archive`` runs three stages at once: a thread tiles the next slides (tissue,
grid, ``patches/`` and ``qc/`` files), DataLoader worker processes read and resize patches
(each opens the slide itself), and the main thread encodes batches and streams the rows
into ``features/{encoder}/{slide_id}.h5``. A slide whose feature file already exists with
the same provenance key (slide quickhash, tiling options, encoder and weights) is skipped
without being opened, and the model is not even loaded when nothing is left to do.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi.errors import FeatureFileError
from wsi.io.slide import Slide, quickhash, slide_id_of
from wsi.pipeline.batch import duplicate_id_row, failure_message, find_slides
from wsi.pipeline.loader import BatchSpec, PatchBatch, default_workers, patch_loader
from wsi.pipeline.ray_runner import RayOptions, import_ray, run_on_ray
from wsi.pipeline.tile import provenance, tile_slide, write_qc
from wsi.store.folder import (
    FileLock,
    lock_holder,
    remove_stale_temporaries,
    slide_lock_path,
    take_slide,
)
from wsi.store.h5 import (
    FeatureBag,
    FeatureWriter,
    read_provenance,
    write_coords,
)
from wsi.store.manifest import Manifest, manifest_row
from wsi.tiling import TileGrid, TileOptions

DEFAULT_ENCODER = "efficientnet_lite0"
_LOOKAHEAD_SLIDES = 2


def encoder_dirname(name: str) -> str:
    """The folder name of an encoder's features: ``timm:resnet18`` → ``timm-resnet18``."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-")


def _resolve_encoder(encoder: Any, weights: Any, device: Any, precision: str) -> Any:
    from models.encoders import Encoder, load_encoder

    if isinstance(encoder, Encoder):
        return encoder
    return load_encoder(encoder, weights=weights, device=device, precision=precision)


def _workers_for(encoder: Any, device: str | None) -> int:
    from models.encoders import resolve_device

    on = getattr(encoder, "device", None) or resolve_device(device)
    return default_workers(on.type)


def _check_encoder_name(name: str) -> None:
    """Fail fast on an unknown encoder name, without building the model."""
    from models.encoders import known_encoders, load_encoder

    if name in known_encoders() or name.startswith(("timm:", "hf-hub:")):
        return
    load_encoder(name)  # raises UnknownEncoderError listing the known names


def embed(
    slide: Slide,
    grid: TileGrid,
    encoder: Any = DEFAULT_ENCODER,
    *,
    weights: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str | None = None,
    precision: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Features of every tile of ``grid``: float32 (N, D), row i for ``grid.coords[i]``.

    ``encoder`` is a name (see :func:`models.load_encoder`) or an ``Encoder`` object;
    ``workers`` > 0 reads patches in that many processes.
    """
    from tqdm.auto import tqdm

    enc = _resolve_encoder(encoder, weights, device, precision)
    out = np.empty((len(grid), enc.feature_dim), np.float32)
    loader = patch_loader(
        BatchSpec.batches(0, grid, batch_size), workers, pin_memory=enc.device.type == "cuda"
    )
    with tqdm(total=len(grid), desc=slide.slide_id, unit="tile", disable=not progress) as bar:
        for batch in loader:
            if batch.error is not None or batch.tile_error is not None:
                from wsi.errors import SlideReadError

                raise SlideReadError(batch.error or batch.tile_error, slide.path)
            rows = enc(batch.patches)
            out[batch.spec.start : batch.spec.start + rows.shape[0]] = rows.numpy()
            bar.update(rows.shape[0])
    return out


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

    @property
    def n_tiles(self) -> int:
        return int(self.coords.shape[0])


class _ArchiveRun:
    """State of one ``embed_archive`` call (see the module docstring for the stages)."""

    def __init__(
        self,
        slides: list[Path],
        out: Path,
        encoder: Any,
        weights: str | os.PathLike[str] | None,
        options: TileOptions,
        batch_size: int,
        workers: int,
        device: str | None,
        precision: str,
        progress: bool,
        debug: bool,
        skip_done: bool,
        max_failed_fraction: float,
        task_of_driver: bool = False,
        loaded_encoder: Any = None,
    ) -> None:
        self.slides, self.out, self.options = slides, out, options
        self.max_failed_fraction = max_failed_fraction
        self.encoder_arg, self.weights = encoder, weights
        self.encoder_name = encoder if isinstance(encoder, str) else encoder.name
        self.batch_size, self.workers = batch_size, workers
        self.device, self.precision = device, precision
        self.progress, self.debug, self.skip_done = progress, debug, skip_done
        self.features_dir = out / "features" / encoder_dirname(self.encoder_name)
        # One slide task of a distributed run: the driver writes the manifest and cleans
        # the folders (a task scanning a 100k-file folder per slide would not scale).
        self.task_of_driver = task_of_driver
        self.manifest = None if task_of_driver else Manifest(out / "manifest.csv")
        self.jobs: dict[int, _SlideJob] = {}
        self.rows: dict[int, dict[str, Any]] = {}
        self._encoder: Any = loaded_encoder
        self._slide_bar: Any = None
        self._tile_bar: Any = None
        self._current = -1
        self._events: queue.Queue = queue.Queue(maxsize=_LOOKAHEAD_SLIDES)
        self._stop = threading.Event()
        self._weights_key = (
            {"path": str(Path(weights).resolve()), "quickhash": quickhash(weights)}
            if weights is not None and Path(weights).is_file()
            else str(weights) if weights is not None else None
        )

    # keys and skip-done -----------------------------------------------------------------
    def embed_key(self, path: Path) -> dict[str, Any]:
        """What decides a slide's features: if unchanged, the file is reused."""
        return {
            "slide_quickhash": quickhash(path),
            "tiling": asdict(self.options),
            "encoder": self.encoder_name,
            "weights": self._weights_key,
        }

    def features_path(self, slide_id: str) -> Path:
        return self.features_dir / f"{slide_id}.h5"

    def done_row(self, path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
        target = self.features_path(slide_id_of(path))
        if not self.skip_done or not target.exists():
            return None
        try:
            prov = read_provenance(target)
            if prov is None or prov.get("embed_key") != key:
                return None
            n = len(FeatureBag(target))
        except FeatureFileError:
            return None  # a damaged file: embed the slide again
        tiling = prov.get("tiling", {})
        return manifest_row(
            path,
            "ok" if n else "no_tissue",
            n_tiles=n,
            mpp=tiling.get("mpp_level0"),
            mpp_source=tiling.get("mpp_source"),
        )

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            self._encoder = _resolve_encoder(
                self.encoder_arg, self.weights, self.device, self.precision
            )
        return self._encoder

    # stage 1: tiling thread -------------------------------------------------------------
    def _put(self, event: tuple[str, Any]) -> None:
        while not self._stop.is_set():
            try:
                self._events.put(event, timeout=0.2)
                return
            except queue.Full:
                continue

    def _tile_all(self) -> None:
        seen: dict[str, Path] = {}
        deferred: list[tuple[int, Path]] = []
        try:
            for index, path in enumerate(self.slides):
                if self._stop.is_set():
                    return
                sid = slide_id_of(path)
                if sid in seen:
                    self._put(("row", (index, duplicate_id_row(path, seen[sid]), None, False)))
                    continue
                seen[sid] = path
                lock = take_slide(self.out, sid, self.features_dir)
                if lock is None:
                    deferred.append((index, path))  # another process has it: come back later
                    continue
                self._prepare(index, path, lock)
            for index, path in deferred:
                lock = self._wait_for(path)
                if lock is None:
                    return
                self._prepare(index, path, lock)
        finally:
            self._put(("end", None))

    def _wait_for(self, path: Path) -> FileLock | None:
        """Wait until the process working on ``path`` lets go of it (None: run stopped)."""
        from tqdm.auto import tqdm

        sid = slide_id_of(path)
        holder = lock_holder(slide_lock_path(self.out, sid)) or {}
        tqdm.write(f"{sid}: being processed by {holder.get('host', '?')} pid "
                   f"{holder.get('pid', '?')}; waiting for it")
        while not self._stop.is_set():
            lock = take_slide(self.out, sid, self.features_dir, wait=True, timeout_s=1.0)
            if lock is not None:
                return lock
        return None

    def _prepare(self, index: int, path: Path, lock: FileLock) -> None:
        """Under the slide's lock: a done row, a failed row or a tiled job for the encoder."""
        start = time.perf_counter()
        try:
            key = self.embed_key(path)
            done = self.done_row(path, key)
            if done is not None:
                self._put(("row", (index, done, lock, True)))
                return
            self._tile_one(index, path, key, start, lock)
        except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the batch
            if self.debug:
                import traceback

                traceback.print_exc()
            self._put(("row", (index, manifest_row(
                path, "failed", seconds=time.perf_counter() - start,
                error=failure_message(exc)), lock, False)))

    def _tile_one(
        self, index: int, path: Path, key: dict[str, Any], start: float, lock: FileLock
    ) -> None:
        """Tile, hand the job to the encoder, then draw the QC picture meanwhile."""
        slide, mask, grid = tile_slide(path, self.options)
        with slide:
            prov = provenance(slide, grid, quickhash=key["slide_quickhash"], embed_key=key)
            write_coords(
                self.out / "patches" / f"{slide.slide_id}.h5",
                grid.coords, grid.attrs(), prov, tissue_fraction=grid.tissue_fraction,
            )
            job = _SlideJob(
                index=index, path=path, slide_id=slide.slide_id, coords=grid.coords,
                tissue_fraction=grid.tissue_fraction, attrs=grid.attrs(), provenance=prov,
                mpp=slide.mpp, mpp_source=slide.mpp_source, started=start, grid=grid, lock=lock,
            )
            self._put(("job", job))
            try:
                write_qc(self.out, slide, mask, grid)
            except Exception as exc:  # noqa: BLE001 - the slide fails at its commit
                job.qc_error = failure_message(exc)
            finally:
                job.qc_done.set()

    # stage 2: the sampler, consumed lazily by the DataLoader in this thread --------------
    def _specs(self) -> Iterator[BatchSpec]:
        # Started on the first request, after the loader has forked its workers, so no
        # worker is forked while this thread holds a lock.
        thread = threading.Thread(target=self._tile_all, name="wsi-tiling", daemon=True)
        thread.start()
        while True:
            kind, payload = self._events.get()
            if kind == "end":
                return
            if kind == "row":
                index, row, lock, weak = payload
                self._record(index, row, weak=weak)
                if lock is not None:
                    lock.release()
                continue
            job: _SlideJob = payload
            self.jobs[job.index] = job
            if job.n_tiles == 0:
                self._open_writer(job)
                self._commit(job)
                continue
            yield from BatchSpec.batches(job.index, job.grid, self.batch_size)

    # stage 3: encode and write ----------------------------------------------------------
    def _open_writer(self, job: _SlideJob) -> None:
        enc = self.encoder
        prov = dict(job.provenance)
        prov["encoder"] = enc.provenance()
        prov["features_dtype"] = "float32"
        job.writer = FeatureWriter(
            self.features_path(job.slide_id), job.coords, job.attrs, prov, enc.feature_dim,
            {"encoder": self.encoder_name, "weights_sha256": enc.weights_sha256 or ""},
            tissue_fraction=job.tissue_fraction,
        )

    def _consume(self, batch: PatchBatch) -> None:
        job = self.jobs[batch.spec.slide_index]
        if job.failed:
            return
        if self._current != job.index and self._tile_bar is not None:
            self._current = job.index
            self._tile_bar.reset(total=job.n_tiles)
            self._tile_bar.set_description(job.slide_id[:30])
        try:
            if batch.error is not None:
                raise RuntimeError(batch.error)
            if job.writer is None:
                self._open_writer(job)
            assert job.writer is not None
            rows = self.encoder(batch.patches).numpy()
            job.writer.write(batch.spec.start, rows)
            job.rows_done += rows.shape[0]
            if batch.failed is not None and batch.failed.any():
                if job.bad_tiles is None:
                    job.bad_tiles = np.zeros(job.n_tiles, bool)
                job.bad_tiles[batch.spec.start : batch.spec.start + len(batch.failed)] = batch.failed
                job.tile_error = job.tile_error or batch.tile_error
            if self._tile_bar is not None:
                self._tile_bar.update(rows.shape[0])
        except Exception as exc:  # noqa: BLE001 - the slide fails, the batch goes on
            from models.errors import ModelsError

            if isinstance(exc, ModelsError):
                raise
            job.failed = True
            if job.writer is not None:
                job.writer.abort()
            message = batch.error or failure_message(exc)
            self._record(job.index, manifest_row(
                job.path, "failed", n_tiles=job.n_tiles, mpp=job.mpp, mpp_source=job.mpp_source,
                seconds=time.perf_counter() - job.started, error=message))
            self._release(job)
            return
        if job.rows_done == job.n_tiles:
            self._commit(job)

    def _commit(self, job: _SlideJob) -> None:
        assert job.writer is not None
        while not job.qc_done.wait(0.2):  # the features go final only after the QC files
            if self._stop.is_set():
                return
        n_bad = 0 if job.bad_tiles is None else int(job.bad_tiles.sum())
        seconds = time.perf_counter() - job.started
        if job.qc_error is not None:
            job.writer.abort()
            row = manifest_row(
                job.path, "failed", n_tiles=job.n_tiles, mpp=job.mpp, mpp_source=job.mpp_source,
                seconds=seconds, error=job.qc_error)
        elif n_bad > self.max_failed_fraction * job.n_tiles:
            job.writer.abort()
            row = manifest_row(
                job.path, "failed", n_tiles=job.n_tiles, mpp=job.mpp, mpp_source=job.mpp_source,
                seconds=seconds, failed_tiles=n_bad,
                error=f"{n_bad} of {job.n_tiles} tiles could not be decoded (more than "
                f"{self.max_failed_fraction:.0%}); first: {job.tile_error}")
        else:
            job.writer.commit(drop=job.bad_tiles)
            kept = job.n_tiles - n_bad
            row = manifest_row(
                job.path, "ok" if kept else "no_tissue", n_tiles=kept, mpp=job.mpp,
                mpp_source=job.mpp_source, seconds=seconds, failed_tiles=n_bad,
                error=f"skipped {n_bad} undecodable tiles; first: {job.tile_error}" if n_bad else "")
        self._record(job.index, row)
        self._release(job)
        del self.jobs[job.index]

    @staticmethod
    def _release(job: _SlideJob) -> None:
        """Let other processes at the slide: after its files and manifest row are final."""
        if job.lock is not None:
            job.lock.release()
            job.lock = None

    def _record(self, index: int, row: dict[str, Any], weak: bool = False) -> None:
        from tqdm.auto import tqdm

        self.rows[index] = row
        if self.manifest is not None:
            self.manifest.update(row, weak=weak)
        if row["status"] == "failed":
            tqdm.write(f"{row['slide_id']}: failed: {row['error']}")
        if self._slide_bar is not None:
            self._slide_bar.update(1)

    def clean_folders(self) -> None:
        """Delete temporaries that dead processes of this host left in the output folders."""
        for folder in (self.out / "patches", self.features_dir, self.out / "qc", self.out):
            remove_stale_temporaries(folder)

    def run(self) -> list[dict[str, Any]]:
        from tqdm.auto import tqdm

        if not self.task_of_driver:
            self.clean_folders()
        self._slide_bar = tqdm(total=len(self.slides), desc="slides", unit="slide",
                               disable=not self.progress, position=0, dynamic_ncols=True)
        self._tile_bar = tqdm(desc="tiles", unit="tile", disable=not self.progress,
                              position=1, leave=False, dynamic_ncols=True)
        from models.encoders import resolve_device

        on_device = getattr(self.encoder_arg, "device", None) or resolve_device(self.device)
        pin = on_device.type == "cuda"
        loader = patch_loader(self._specs(), self.workers, pin_memory=pin)
        try:
            for batch in loader:
                self._consume(batch)
        finally:
            self._stop.set()
            for job in self.jobs.values():
                if job.writer is not None:
                    job.writer.abort()
                self._release(job)
            if self.manifest is not None:
                self.manifest.flush()
            self._slide_bar.close()
            self._tile_bar.close()
        return [self.rows[i] for i in sorted(self.rows)]


def embed_archive(
    slides: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    encoder: Any = DEFAULT_ENCODER,
    weights: str | os.PathLike[str] | None = None,
    tiling: TileOptions | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    progress: bool = True,
    debug: bool = False,
    skip_done: bool = True,
    max_failed_fraction: float = 0.05,
    backend: str = "local",
    ray: RayOptions | None = None,
) -> list[dict[str, Any]]:
    """Tile and embed every slide into ``out_dir``; return one manifest row per slide.

    Writes ``patches/{id}.h5``, ``features/{encoder}/{id}.h5``, ``qc/{id}.png|geojson`` and
    ``manifest.csv``. ``slides`` are files, folders or globs. Slides already embedded with
    the same provenance are skipped; a failed slide gets a ``failed`` row and the rest go
    on. ``workers``: reader processes (None: :func:`wsi.pipeline.loader.default_workers` for the
    encoder's device — 0 on a small CPU machine, where reading in-process is fastest).
    Tiles that cannot be decoded (a corrupt JPEG tile) are left out and counted in the
    manifest's ``failed_tiles``; a slide with more than ``max_failed_fraction`` of them fails.

    ``backend="ray"`` runs one Ray task per slide on a cluster (``ray``: address, retries,
    CPUs/GPUs per task; see :mod:`wsi.pipeline.ray_runner`); the files written are the same.
    Several runs may share one output folder: each slide is processed under a lock.
    """
    from wsi.errors import InvalidParameterError

    options = tiling or TileOptions()
    options.check()
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise InvalidParameterError(f"batch size must be a positive integer, got {batch_size!r}")
    if backend not in ("local", "ray"):
        raise InvalidParameterError(f"backend must be 'local' or 'ray', got {backend!r}")
    if backend == "ray":
        import_ray()
    if isinstance(encoder, str):
        _check_encoder_name(encoder)
    paths = find_slides(slides if not isinstance(slides, str | os.PathLike) else [slides])
    run = _ArchiveRun(
        paths, Path(out_dir), encoder, weights, options, batch_size,
        _workers_for(encoder, device) if workers is None else workers, device, precision,
        progress, debug,
        skip_done, max_failed_fraction,
    )
    if backend == "ray":
        return run_on_ray(run, ray or RayOptions())
    return run.run()
