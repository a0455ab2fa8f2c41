"""Patch batches read in DataLoader worker processes, across slide boundaries.

The sampler yields :class:`BatchSpec` objects (not integers): the DataLoader sends each to
a worker, which opens the slide itself (kept open for later batches), reads and resizes
the patches and returns a uint8 batch. Because the sampler is consumed lazily as the
loader prefetches, the next slide's batches are requested while the current slide's last
ones are still being encoded: the encoder never waits between slides.

On a CPU the workers can be *encoding lanes* instead (:class:`EncodingReader`): each worker
reads a batch and encodes it itself with its share of the torch threads, and only the
features come back. Two single-threaded lanes encode more tiles per second than one
two-threaded encoder (no synchronisation between threads inside each operation), and
each lane's reads fill the gaps of the other's encoding.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from wsi.io.slide import Slide
from wsi.tiling import TileGrid

_OPEN_SLIDES_PER_WORKER = 4


@dataclass(frozen=True)
class BatchSpec:
    """Which tiles to read: rows ``start .. start+len(coords)`` of slide ``slide_index``."""

    slide_index: int
    path: str
    slide_mpp: float | None
    start: int
    coords: np.ndarray
    size_level0: float
    size: int
    level: int

    @classmethod
    def batches(cls, slide_index: int, grid: TileGrid, batch_size: int) -> Iterator[BatchSpec]:
        """The specs covering every tile of ``grid`` in order, ``batch_size`` tiles each."""
        override = grid.slide._mpp_override
        for start in range(0, len(grid), batch_size):
            yield cls(
                slide_index=slide_index,
                path=str(grid.slide.path),
                slide_mpp=override,
                start=start,
                coords=grid.coords[start : start + batch_size],
                size_level0=grid.size_level0,
                size=grid.size,
                level=grid.level,
            )


@dataclass
class PatchBatch:
    """A read batch: uint8 patches (B, size, size, 3), or the error that stopped the read.

    ``failed`` marks tiles that could not be decoded (their patch is black); ``tile_error``
    is the first such error. A whole-batch ``error`` (the slide could not be opened, or an
    encoding lane failed on the batch) leaves ``patches`` None. From an encoding lane,
    ``features`` holds the float32 rows (B, D) and ``patches`` is None.
    """

    spec: BatchSpec
    patches: torch.Tensor | None
    error: str | None = None
    failed: np.ndarray | None = None
    tile_error: str | None = None
    features: np.ndarray | None = None

    def pin_memory(self) -> PatchBatch:
        """Page-locked patches for fast host-to-GPU copies (called by the DataLoader)."""
        if self.patches is not None:
            self.patches = self.patches.pin_memory()
        return self


class PatchReader(Dataset):
    """Reads the patches of a :class:`BatchSpec`; each process keeps a few slides open."""

    def __init__(self) -> None:
        self._open: OrderedDict[tuple[str, float | None], Slide] = OrderedDict()

    def _slide(self, path: str, mpp: float | None) -> Slide:
        key = (path, mpp)
        if key not in self._open:
            self._open[key] = Slide(Path(path), mpp=mpp)
            if len(self._open) > _OPEN_SLIDES_PER_WORKER:
                self._open.popitem(last=False)[1].close()
        self._open.move_to_end(key)
        return self._open[key]

    def __getitem__(self, spec: BatchSpec) -> PatchBatch:  # type: ignore[override]
        from wsi.pipeline.batch import failure_message

        try:
            slide = self._slide(spec.path, spec.slide_mpp)
        except Exception as exc:  # noqa: BLE001 - reported per slide by the consumer
            return PatchBatch(spec, None, failure_message(exc))
        out = np.zeros((len(spec.coords), spec.size, spec.size, 3), np.uint8)
        failed = np.zeros(len(spec.coords), bool)
        tile_error = None
        for i, (x, y) in enumerate(spec.coords):
            try:
                out[i] = slide.read_patch(
                    float(x), float(y), spec.size_level0, spec.size, spec.level
                )
            except Exception as exc:  # noqa: BLE001 - a corrupt tile is counted, not fatal
                failed[i] = True
                tile_error = tile_error or failure_message(exc)
        return PatchBatch(spec, torch.from_numpy(out), failed=failed, tile_error=tile_error)

    def __len__(self) -> int:
        raise TypeError("PatchReader is indexed by BatchSpec from a sampler; it has no length")


class EncodingReader(PatchReader):
    """An encoding lane: reads a :class:`BatchSpec`'s patches and encodes them in the same
    worker process; the batch comes back with ``features`` and without its pixels.

    ``encoder``: a CPU ``Encoder`` (inherited by fork, or pickled to a spawned worker, which
    then rebuilds its frozen graph). An encoder misconfiguration (``ModelsError``) stops the
    run; any other error fails the batch's slide, as it would in the main process.
    """

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.encoder = encoder

    def __getitem__(self, spec: BatchSpec) -> PatchBatch:  # type: ignore[override]
        from models.errors import ModelsError
        from wsi.pipeline.batch import failure_message

        batch = super().__getitem__(spec)
        if batch.patches is None:
            return batch
        try:
            batch.features = self.encoder(batch.patches).numpy()
        except ModelsError:
            raise
        except Exception as exc:  # noqa: BLE001 - the consumer fails the slide
            batch.error = failure_message(exc)
        batch.patches = None
        return batch


class SpecSampler(Sampler):
    """Yields the specs of an iterable, consumed lazily by the DataLoader as it prefetches."""

    def __init__(self, specs: Iterable[BatchSpec]) -> None:
        self._specs = specs

    def __iter__(self) -> Iterator[BatchSpec]:
        return iter(self._specs)


def _keep_batch(item: PatchBatch) -> PatchBatch:
    return item


def _worker_init(threads: int, _: int) -> None:
    from wsi.io.fastread import set_decode_threads

    torch.set_num_threads(threads)
    set_decode_threads(1)  # the worker processes already fill the cores


def default_workers(device_type: str, cores: int | None = None) -> int:
    """Reader processes for an encoder on ``device_type`` ("cpu", "cuda", "mps").

    A CPU encoder is the bottleneck (a patch read costs ~1/15 of its encode) and every
    reader process takes a core from it, so small machines read in-process (0 workers)
    and larger ones use one reader per 8 cores. A GPU encoder needs the CPU to keep up:
    one reader per core but one, at most 8.
    """
    cores = cores or os.cpu_count() or 2
    if device_type == "cpu":
        return 0 if cores <= 4 else max(1, cores // 8)
    return max(1, min(8, cores - 1))


def _build_graph(encoder: Any) -> None:
    """Run ``encoder`` once on two white tiles (builds its frozen CPU graph). An error other
    than a ``ModelsError`` is left for the lanes to meet per batch, where it fails the
    slide as it would in this process."""
    from models.errors import ModelsError

    side = int(getattr(encoder, "input_size", 224))
    try:
        encoder(np.full((2, side, side, 3), 255, np.uint8))
    except ModelsError:
        raise
    except Exception:  # noqa: BLE001, S110 - reported per slide by the lanes
        pass


LIGHT_ENCODER_PARAMETERS = 10_000_000
"""Encoders up to this many parameters get encoding lanes by default on a CPU. Light CNNs
(EfficientNet-Lite0: 4.7 M) spend much of each operation synchronising threads, so two
one-thread lanes encode faster than one two-thread encoder; larger models parallelise well
inside each operation (ResNet-50 already keeps its two threads busy) and a second lane
would only add its activations to the run's memory."""


def default_lanes(device_type: str, parameters: int, cores: int | None = None) -> int:
    """Encoding lanes for an encoder of ``parameters`` on ``device_type``: 2 for a light
    encoder (:data:`LIGHT_ENCODER_PARAMETERS`) on a CPU with at least 2 cores (each lane
    gets half of the torch threads), else 0 (encode in the calling process).

    Measured on a 2-core machine with EfficientNet-Lite0 (``benchmarks/embedding.py``):
    two one-thread lanes that also read their patches beat reading in the main process
    before a two-thread encoder (``benchmarks/RESULTS.md``).
    """
    cores = cores or os.cpu_count() or 1
    light = parameters <= LIGHT_ENCODER_PARAMETERS
    return 2 if device_type == "cpu" and cores >= 2 and light else 0


def encoding_lanes(
    lanes: int | None, workers: int | None, encoder: Any, *, stain: bool = False
) -> int:
    """The lanes a run with ``encoder`` (loaded) uses: ``lanes`` when given, else
    :func:`default_lanes` unless reader processes (``workers``) were asked for or stains are
    normalised (fitted per slide in the main process). Raises
    :class:`~wsi.errors.InvalidParameterError` for lanes that cannot work: on a GPU, beside
    reader processes, or with stain normalisation."""
    from wsi.errors import InvalidParameterError

    device_type = encoder.device.type
    if lanes is None:
        if workers is not None or stain:
            return 0
        return default_lanes(device_type, sum(p.numel() for p in encoder.module.parameters()))
    if not (isinstance(lanes, int) and lanes >= 0):
        raise InvalidParameterError(f"lanes must be an integer ≥ 0, got {lanes!r}")
    if lanes and device_type != "cpu":
        raise InvalidParameterError(
            f"encoding lanes are for a CPU encoder, not {device_type}: use workers= (reader "
            "processes) to feed a GPU"
        )
    if lanes and workers:
        raise InvalidParameterError(
            f"choose encoding lanes ({lanes}) or reader processes (workers={workers}), not both"
        )
    if lanes and stain:
        raise InvalidParameterError(
            "stain normalisation fits each slide in the main process: use lanes=0 with it"
        )
    return lanes


LANE_PREFETCH = 2
"""Batches queued per encoding lane: one being encoded, one waiting. A new batch goes to
whichever lane returns one, so lanes that run at different speeds (one shares its core with
this process's tiling and writing) finish together; a deeper queue would leave more work
stuck behind the slower lane at the end of the run."""


def patch_loader(
    specs: Iterable[BatchSpec],
    workers: int,
    *,
    pin_memory: bool = False,
    prefetch: int = 4,
    encoder: Any = None,
) -> DataLoader:
    """A DataLoader of :class:`PatchBatch` over ``specs`` with ``workers`` reader processes
    (0 reads in this process). Reader batches come back in spec order.

    With an ``encoder``, the ``workers`` (at least 1) are encoding lanes
    (:class:`EncodingReader`), each with an equal share of this process's torch threads;
    the encoder runs once here first, so that forked lanes inherit its CPU graph. Lanes
    hold :data:`LANE_PREFETCH` batches each and their batches come back as they are done,
    not in spec order, so that a lane slowed down by other work on its core hands its share
    to the others instead of ending the run late.
    """
    threads, in_order = 1, True
    if encoder is not None:
        workers = max(1, workers)
        threads = max(1, torch.get_num_threads() // workers)
        prefetch, in_order = min(prefetch, LANE_PREFETCH), False
        _build_graph(encoder)
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs = {
            "prefetch_factor": prefetch,
            "worker_init_fn": partial(_worker_init, threads),
            "in_order": in_order,
        }
    return DataLoader(
        PatchReader() if encoder is None else EncodingReader(encoder),
        sampler=SpecSampler(specs),
        batch_size=None,
        collate_fn=_keep_batch,
        num_workers=workers,
        pin_memory=pin_memory,
        **kwargs,
    )
