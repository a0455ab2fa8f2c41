"""Nuclei counts per tile of a feature file's grid: each tile's pixels read once, in
DataLoader worker processes that also run the detection (the CPU-heavy part of a TME
profile), batch by batch, so memory holds a few batches of pixels whatever the slide's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader

from wsi.pipeline.loader import BatchSpec, PatchReader, SpecSampler
from wsi.tme.nuclei import NucleusParams, detect_nuclei

COUNT_COLUMNS = ("n_nuclei", "n_lymphocytes", "mean_nuclear_area_um2")
"""What :func:`count_nuclei` gives per tile."""


@dataclass(frozen=True)
class TileGeometry:
    """Where a feature file's tiles lie: read ``size`` px patches of ``size_level0`` level-0
    px at pyramid ``level``; ``mpp``: µm per pixel of the patches read."""

    path: str
    slide_mpp: float | None
    coords: np.ndarray
    size_level0: float
    size: int
    level: int
    mpp: float

    def specs(self, batch_size: int) -> Iterator[BatchSpec]:
        """The read requests covering every tile, ``batch_size`` each."""
        for start in range(0, len(self.coords), batch_size):
            yield BatchSpec(
                0,
                self.path,
                self.slide_mpp,
                start,
                self.coords[start : start + batch_size],
                self.size_level0,
                self.size,
                self.level,
            )


@dataclass
class CountBatch:
    """Counts of rows ``start ..`` (``counts``: (B, 3) float64 in :data:`COUNT_COLUMNS`
    order), or the error that stopped the read; ``failed`` marks undecodable tiles."""

    start: int
    counts: np.ndarray | None
    error: str | None = None
    failed: np.ndarray | None = None


class NucleiCounter(PatchReader):
    """Reads a batch of patches and counts their nuclei (in the worker that read them)."""

    def __init__(self, mpp: float, params: NucleusParams | None = None) -> None:
        super().__init__()
        self.mpp, self.params = mpp, params

    def __getitem__(self, spec: BatchSpec) -> CountBatch:  # type: ignore[override]
        batch = super().__getitem__(spec)
        if batch.patches is None:
            return CountBatch(spec.start, None, batch.error)
        counts = np.full((len(spec.coords), 3), np.nan)
        for i, rgb in enumerate(batch.patches.numpy()):
            if batch.failed is not None and batch.failed[i]:
                continue
            nuclei = detect_nuclei(rgb, mpp=self.mpp, params=self.params)
            area = nuclei["area_um2"].mean() if len(nuclei) else np.nan
            counts[i] = (len(nuclei), int(nuclei["lymphocyte"].sum()), area)
        return CountBatch(spec.start, counts, failed=batch.failed)


def _keep(item: CountBatch) -> CountBatch:
    return item


def _one_thread(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def count_nuclei(
    geometry: TileGeometry,
    *,
    workers: int = 0,
    batch_size: int = 32,
    params: NucleusParams | None = None,
    progress: bool = False,
    desc: str = "nuclei",
) -> np.ndarray:
    """(N, 3) float64 per tile: nuclei, lymphocyte-like nuclei and mean nuclear area (µm²;
    NaN without nuclei); an undecodable tile's row is NaN. ``workers`` reader/detector
    processes (0: in this process). Raises ``RuntimeError`` when the slide cannot be read."""
    from tqdm.auto import tqdm

    kwargs = {"prefetch_factor": 2, "worker_init_fn": _one_thread} if workers > 0 else {}
    loader = DataLoader(
        NucleiCounter(geometry.mpp, params),
        sampler=SpecSampler(geometry.specs(batch_size)),
        batch_size=None,
        collate_fn=_keep,
        num_workers=workers,
        **kwargs,
    )
    out = np.full((len(geometry.coords), 3), np.nan)
    with tqdm(total=len(out), desc=desc, unit="tile", disable=not progress, leave=False) as bar:
        for batch in loader:
            if batch.counts is None:
                raise RuntimeError(batch.error)
            out[batch.start : batch.start + len(batch.counts)] = batch.counts
            bar.update(len(batch.counts))
    return out
