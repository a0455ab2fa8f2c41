"""Tile one slide into files: ``patches/{id}.h5``, ``qc/{id}.png`` and ``qc/{id}.geojson``.

The step behind ``wsi tile`` and the first half of ``wsi embed``. ``tile_archive`` runs the
same plan as ``wsi embed`` (:mod:`wsi.pipeline.plan`: duplicate ids, slides already tiled
with the same key skipped) and tiles each slide under its lock.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from models.atomic import write_text_atomic
from models.version import library_version
from wsi.errors import SlideReadError
from wsi.io.slide import Slide, open_slide
from wsi.pipeline.batch import RowRecorder, clean_output_folder, failed_row
from wsi.pipeline.plan import plan_slides, slides_in_turn, tiles_done_row
from wsi.pipeline.settings import tile_key
from wsi.store.h5 import write_coords
from wsi.store.manifest import Manifest, manifest_row
from wsi.tiling import TileGrid, TileOptions, tile
from wsi.tissue import TissueMask, detect_tissue
from wsi.viz.heatmap import save_png
from wsi.viz.qc import qc_image

QC_LONG_SIDE_PX = 1536
"""Long side of the QC picture's thumbnail, when the mask's own thumbnail is smaller."""


def provenance(
    slide: Slide, grid: TileGrid, quickhash: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The provenance JSON of a slide's tile files (``quickhash``: when already computed)."""
    return {
        "library": "wsi",
        "version": library_version(),
        "slide_path": str(slide.path.resolve()),
        "slide_quickhash": quickhash or slide.quickhash(),
        "slide_backend": slide.backend,
        "patch_backend": slide.patch_backend,
        "tiling": grid.params(),
        "tissue": grid.mask.params if grid.mask is not None else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def tile_slide(path: Path, options: TileOptions) -> tuple[Slide, TissueMask, TileGrid]:
    """Open, detect tissue and tile one slide."""
    slide = open_slide(path, mpp=options.slide_mpp)
    slide.mpp  # noqa: B018 - fail early with the clear "no mpp" message
    mask = detect_tissue(slide, options.tissue)
    grid = tile(
        slide,
        options.mpp,
        options.size,
        options.overlap,
        options.min_tissue,
        mask,
        mpp_tolerance=options.mpp_tolerance,
    )
    return slide, mask, grid


def write_qc(out_dir: Path, slide: Slide, mask: TissueMask, grid: TileGrid) -> None:
    """``qc/{id}.png`` (thumbnail, tissue outline, tile grid) and ``qc/{id}.geojson``."""
    qc_dir = out_dir / "qc"
    qc_dir.mkdir(parents=True, exist_ok=True)
    sid = slide.slide_id
    title = f"{sid} (slide {slide.mpp:.4g} um/px from {slide.mpp_source}; tiles {grid.size} px)"
    thumbnail, downsample = mask.thumbnail, mask.downsample
    if thumbnail is None or max(thumbnail.shape[:2]) < QC_LONG_SIDE_PX:
        # small slides: the mask's thumbnail is too coarse to judge tiles by eye
        finer = max(max(slide.dimensions) / QC_LONG_SIDE_PX, 1.0)
        try:
            thumbnail, downsample = slide.read_thumbnail(finer), finer
        except SlideReadError:
            if thumbnail is None:
                raise  # a corrupt tile at the finer level: keep the mask's own thumbnail
    image = qc_image(
        thumbnail,
        downsample,
        tissue_mask=mask.array,
        mask_downsample=mask.downsample,
        coords=grid.coords,
        tile_size_level0=grid.size_level0,
        title=title,
        mpp=grid.achieved_mpp,
    )
    save_png(image, qc_dir / f"{sid}.png")
    write_text_atomic(qc_dir / f"{sid}.geojson", json.dumps(mask.to_geojson()))


def patch_slide(path: Path, out_dir: Path, options: TileOptions) -> dict[str, Any]:
    """Tile one slide and write its QC pictures, then its coords file (last: a slide is
    tiled exactly when ``patches/{id}.h5`` exists); return its manifest row. No lock: see
    :func:`tile_archive`."""
    start = time.perf_counter()
    slide, mask, grid = tile_slide(path, options)
    with slide:
        quickhash = slide.quickhash()
        key = tile_key(path, options, quickhash)
        write_qc(out_dir, slide, mask, grid)
        write_coords(
            out_dir / "patches" / f"{slide.slide_id}.h5",
            grid.coords,
            grid.attrs(),
            provenance(slide, grid, quickhash=quickhash, tile_key=key),
            tissue_fraction=grid.tissue_fraction,
        )
        return manifest_row(
            path,
            "ok" if len(grid) else "no_tissue",
            n_tiles=len(grid),
            mpp=slide.mpp,
            mpp_source=slide.mpp_source,
            seconds=time.perf_counter() - start,
        )


def _tile_locked(
    path: Path, out_dir: Path, options: TileOptions, skip_done: bool, debug: bool
) -> tuple[dict[str, Any], bool]:
    """Under the slide's lock: (its row, whether it was found done)."""
    start = time.perf_counter()
    try:
        done = tiles_done_row(out_dir, path, options) if skip_done else None
    except Exception:  # noqa: BLE001 - unreadable: tiling it reports why
        done = None
    if done is not None:
        return done, True
    try:
        return patch_slide(path, out_dir, options), False
    except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the batch
        return failed_row(path, exc, start, debug), False


def tile_archive(
    slides: Sequence[Path],
    out_dir: str | os.PathLike[str],
    options: TileOptions | None = None,
    *,
    skip_done: bool = True,
    progress: bool = True,
    debug: bool = False,
) -> list[dict[str, Any]]:
    """Tile many slides into ``out_dir`` (patches/, qc/, manifest.csv); one row per slide.

    Each slide is tiled under its lock (several runs may share ``out_dir``); with
    ``skip_done`` a slide whose ``patches/{id}.h5`` has the same key (slide quickhash and
    ``options``) is not tiled again.
    """
    options = options or TileOptions()
    options.check()
    out = Path(out_dir)
    plan = plan_slides(
        list(slides), (lambda p: tiles_done_row(out, p, options)) if skip_done else None
    )
    clean_output_folder(out)
    recorder = RowRecorder(Manifest(out / "manifest.csv"), len(plan.slides), progress=progress)

    def process(items: list[tuple[int, Path]]) -> None:
        for index, path, lock in slides_in_turn(out, items):
            with lock:  # released once the files and the manifest row are final
                recorder.working_on(path)
                row, weak = _tile_locked(path, out, options, skip_done, debug)
                recorder.record(index, row, weak=weak)

    plan.run(recorder, process)
    return recorder.ordered()
