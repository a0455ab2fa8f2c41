"""Slides → features: one slide in a notebook, or whole archives into feature files.

``embed_archive`` builds an :class:`~wsi.pipeline.settings.EmbedSettings`, plans the run
(:func:`wsi.pipeline.plan.plan_slides`: a slide whose feature file already exists with the
same provenance key — slide quickhash, tiling options, encoder and weights — is skipped
without being opened, and the model is not even loaded when nothing is left to do) and
hands the plan to the local runner (:mod:`wsi.pipeline.local_runner`) or the Ray runner
(:mod:`wsi.pipeline.ray_runner`). Both run :func:`wsi.pipeline.slide_step.embed_slide`'s
work per slide and write the same files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from models.defaults import DEFAULT_ENCODER
from wsi.io.slide import Slide
from wsi.pipeline.batch import find_slides
from wsi.pipeline.loader import BatchSpec, encoding_lanes, patch_loader
from wsi.pipeline.local_runner import run_local
from wsi.pipeline.plan import Plan, features_done_row, plan_slides
from wsi.pipeline.ray_runner import RayOptions, import_ray, run_on_ray
from wsi.pipeline.settings import EmbedSettings, encoder_dirname, resolve_encoder
from wsi.store.manifest import Manifest
from wsi.tiling import TileGrid, TileOptions

__all__ = [
    "EmbedSettings",
    "RayOptions",
    "embed",
    "embed_archive",
    "encoder_dirname",
    "plan_embedding",
    "run_embedding",
]


def embed(
    slide: Slide,
    grid: TileGrid,
    encoder: Any = DEFAULT_ENCODER,
    *,
    weights: str | os.PathLike[str] | None = None,
    batch_size: int = EmbedSettings.batch_size,
    workers: int | None = None,
    lanes: int | None = None,
    device: str | None = None,
    precision: str = EmbedSettings.precision,
    progress: bool = False,
) -> np.ndarray:
    """Features of every tile of ``grid``: float32 (N, D), row i for ``grid.coords[i]``.

    ``encoder`` is a name (see :func:`models.load_encoder`) or an ``Encoder`` object;
    ``workers`` > 0 reads patches in that many processes and encodes here; ``lanes``:
    processes that read and encode (None: 2 for a light CPU encoder unless ``workers`` is
    given; see :func:`wsi.pipeline.loader.encoding_lanes`).
    """
    from tqdm.auto import tqdm

    enc = resolve_encoder(encoder, weights, device, precision)
    out = np.empty((len(grid), enc.feature_dim), np.float32)
    specs = BatchSpec.batches(0, grid, batch_size)
    n_lanes = encoding_lanes(lanes, workers, enc)
    if n_lanes:
        loader = patch_loader(specs, n_lanes, encoder=enc)
    else:
        loader = patch_loader(specs, workers or 0, pin_memory=enc.device.type == "cuda")
    with tqdm(total=len(grid), desc=slide.slide_id, unit="tile", disable=not progress) as bar:
        for batch in loader:
            if batch.error is not None or batch.tile_error is not None:
                from wsi.errors import SlideReadError

                raise SlideReadError(batch.error or batch.tile_error, slide.path)
            rows = batch.features if batch.features is not None else enc(batch.patches).numpy()
            out[batch.spec.start : batch.spec.start + rows.shape[0]] = rows
            bar.update(rows.shape[0])
    return out


def embed_archive(
    slides: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    encoder: Any = DEFAULT_ENCODER,
    weights: str | os.PathLike[str] | None = None,
    tiling: TileOptions | None = None,
    batch_size: int = EmbedSettings.batch_size,
    workers: int | None = None,
    lanes: int | None = None,
    device: str | None = None,
    precision: str = EmbedSettings.precision,
    progress: bool = EmbedSettings.progress,
    debug: bool = EmbedSettings.debug,
    skip_done: bool = EmbedSettings.skip_done,
    max_failed_fraction: float = EmbedSettings.max_failed_fraction,
    backend: str = "local",
    ray: RayOptions | None = None,
    stain: str | None = None,
) -> list[dict[str, Any]]:
    """Tile and embed every slide into ``out_dir``; return one manifest row per slide.

    Writes ``patches/{id}.h5``, ``features/{encoder}/{id}.h5``, ``qc/{id}.png|geojson`` and
    ``manifest.csv``. ``slides`` are files, folders or globs. Slides already embedded with
    the same provenance are skipped; a failed slide gets a ``failed`` row and the rest go
    on. ``lanes``: processes that each read and encode batches on a CPU (None: 2 for a light
    encoder on a CPU unless ``workers`` or ``stain`` is given, see :func:`wsi.pipeline.loader.encoding_lanes`;
    0: encode in this process). ``workers``: reader processes feeding an encoder in this
    process (None: :func:`wsi.pipeline.loader.default_workers` for the encoder's device).
    Tiles that cannot be decoded (a corrupt JPEG tile) are left out and counted in the
    manifest's ``failed_tiles``; a slide with more than ``max_failed_fraction`` of them fails.

    ``backend="ray"`` runs one Ray task per slide on a cluster (``ray``: address, retries,
    CPUs/GPUs per task; see :mod:`wsi.pipeline.ray_runner`); the files written are the same.
    Several runs may share one output folder: each slide is processed under a lock.
    The keywords make an :class:`EmbedSettings`; :func:`run_embedding` takes one directly.
    """
    settings = EmbedSettings(
        tiling=tiling or TileOptions(),
        encoder=encoder,
        weights=weights,
        batch_size=batch_size,
        device=device,
        precision=precision,
        workers=workers,
        lanes=lanes,
        skip_done=skip_done,
        max_failed_fraction=max_failed_fraction,
        progress=progress,
        debug=debug,
        stain=stain,
    )
    return run_embedding(slides, out_dir, settings, backend=backend, ray=ray)


def plan_embedding(
    slides: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    settings: EmbedSettings,
) -> Plan:
    """Which slides an embedding run into ``out_dir`` would do (files, folders or globs):
    duplicate ids fail, slides embedded with the same settings are done."""
    out = Path(out_dir)
    paths = find_slides([slides] if isinstance(slides, str | os.PathLike) else slides)
    if not settings.skip_done:
        return plan_slides(paths)
    weights_key = settings.weights_key()
    return plan_slides(
        paths, lambda p: features_done_row(out, p, settings, weights_key=weights_key)
    )


def run_embedding(
    slides: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    settings: EmbedSettings,
    *,
    backend: str = "local",
    ray: RayOptions | None = None,
) -> list[dict[str, Any]]:
    """:func:`embed_archive` with its options in one :class:`EmbedSettings`; one manifest
    row per slide."""
    from wsi.errors import InvalidParameterError

    settings.check()
    if backend not in ("local", "ray"):
        raise InvalidParameterError(f"backend must be 'local' or 'ray', got {backend!r}")
    if backend == "ray":
        import_ray()
    settings.check_encoder()
    out = Path(out_dir)
    plan = plan_embedding(slides, out, settings)
    manifest = Manifest(out / "manifest.csv")
    if backend == "ray":
        return run_on_ray(plan, out, settings, ray or RayOptions(), manifest)
    return run_local(plan, out, settings, manifest)
