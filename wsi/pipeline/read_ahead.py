"""Patch batches read on one background thread while the caller encodes the previous ones.

With no reader processes (a CPU encoder on a small machine, see
:func:`wsi.pipeline.loader.default_workers`), a batch read in the encoding thread leaves the
encoder idle for its ~2 ms of CPU per tile. Reading on a thread overlaps that work with the
encoder: the JPEG decode, the resampling and the blur release the GIL, so the reads run on
whatever share of the cores the encoder's thread pool leaves (between and inside its
operators). The specs are still drawn from their iterable in the caller's thread, in order
(the sampler of :mod:`wsi.pipeline.local_runner` records rows and commits slides as it is
consumed), and the batches come back in spec order.

Opt-in (``wsi.pipeline.local_runner.READ_AHEAD_BATCHES``): on the 2-core machine of
benchmarks/RESULTS.md it measured no better than reading in the encoding thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from wsi.pipeline.loader import BatchSpec, PatchBatch, PatchReader

DEFAULT_BATCHES_AHEAD = 2
"""Batches read ahead of the one being encoded: one is enough to hide a read shorter than an
encode; two absorb a slow one (a slide opening, a cold page cache)."""


class ReadAhead:
    """Iterates :class:`~wsi.pipeline.loader.PatchBatch` over ``specs``, each read on one
    background thread up to ``ahead`` batches before the caller asks for it.

    Args:
        specs: the batches to read, drawn lazily in the iterating thread.
        ahead: batches in flight (read or being read) ahead of the one returned (>= 1).
        pin_memory: page-lock each batch on the reader thread (for a CUDA encoder).
        nice: niceness added to the reader thread (Linux: per thread), so that the encoder's
            threads win a contended core; 0 leaves it as it is.
    """

    def __init__(
        self,
        specs: Iterable[BatchSpec],
        ahead: int = DEFAULT_BATCHES_AHEAD,
        *,
        pin_memory: bool = False,
        nice: int = 0,
    ) -> None:
        if ahead < 1:
            raise ValueError(f"ahead must be at least 1 batch, got {ahead!r}")
        self._specs = specs
        self.ahead = ahead
        self.pin_memory = pin_memory
        self.nice = nice

    def __repr__(self) -> str:
        return f"ReadAhead({self.ahead} batches ahead, nice {self.nice})"

    def __iter__(self) -> Iterator[PatchBatch]:
        reader = PatchReader()
        pending: deque[Future[PatchBatch]] = deque()
        with ThreadPoolExecutor(1, thread_name_prefix="wsi-read", initializer=self._init) as pool:
            try:
                for spec in self._specs:
                    pending.append(pool.submit(self._read, reader, spec))
                    if len(pending) > self.ahead:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()

    def _init(self) -> None:
        if self.nice and hasattr(os, "setpriority"):
            # not permitted: the thread keeps the process's priority
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)

    def _read(self, reader: PatchReader, spec: BatchSpec) -> PatchBatch:
        batch = reader[spec]
        return batch.pin_memory() if self.pin_memory else batch
