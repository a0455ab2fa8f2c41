"""``wsi heatmap``: attention maps of one slide from a trained MIL head (PNG overlays, top
tiles, QuPath GeoJSON), as a function a notebook can call too."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from models.atomic import write_text_atomic
from wsi.store.tile_geometry import tile_level, tile_size_level0, tile_size_px
from wsi.viz.heatmap import attention_overlay, save_png, tiles_geojson, top_tiles_mosaic

HEATMAP_LONG_SIDE_PX = 2048
TOP_TILES = 16


def heatmap_run(
    checkpoint: str | os.PathLike[str],
    slide_path: str | os.PathLike[str],
    features_h5: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    *,
    slide_mpp: float | None = None,
    top_k: int = TOP_TILES,
) -> list[Path]:
    """Attention heatmaps of one slide: per task a PNG overlay (``OUT`` for the first task,
    ``OUT_<task>.png`` for the others), a GeoJSON of tiles with attention and scores as
    QuPath measurements, and a mosaic of the ``top_k`` most attended tiles per task."""
    import models
    from wsi.io.slide import open_slide
    from wsi.store.h5 import read_tile_file

    trained = models.load_checkpoint(checkpoint)
    tiles = read_tile_file(features_h5)
    if tiles.features is None:
        raise models.CheckpointError(f"{features_h5}: no features dataset; pass a features file")
    encoder = (tiles.features_attrs or {}).get("encoder") or None
    maps: dict[str, np.ndarray] = {}
    frame = models.predict(
        trained,
        [tiles.features],
        ["slide"],
        encoder=encoder,
        on_attention=lambda _, m: maps.update(m),
    )
    out = Path(out_png)
    written: list[Path] = []
    with open_slide(slide_path, mpp=slide_mpp) as slide:
        attrs = tiles.coords_attrs
        size_level0 = tile_size_level0(attrs, slide.mpp_or_none)
        downsample = max(max(slide.dimensions) / HEATMAP_LONG_SIDE_PX, 1.0)
        thumbnail = slide.read_thumbnail(downsample)
        measurements: dict[str, np.ndarray] = {}
        for i, (task, attention) in enumerate(maps.items()):
            row = frame.iloc[0]
            prediction = row.get(f"{task}_pred", row.get(f"{task}_group", row.get(f"{task}_risk")))
            title = f"{slide.slide_id}: {task} attention (prediction: {_short(prediction)})"
            image = attention_overlay(
                thumbnail,
                downsample,
                tiles.coords,
                size_level0,
                attention,
                label=f"attention ({task})",
                title=title,
            )
            path = out if i == 0 else out.with_name(f"{out.stem}_{task}.png")
            written.append(save_png(image, path))
            measurements[f"attention_{task}"] = attention
            if len(attention):
                top = np.argsort(-attention)[:top_k]
                patches = [read_stored_tile(slide, tiles.coords[j], attrs) for j in top]
                mosaic = top_tiles_mosaic(
                    np.stack(patches), attention[top], title=f"top {len(top)} tiles: {task}"
                )
                written.append(save_png(mosaic, out.with_name(f"{out.stem}_{task}_top.png")))
        geojson = tiles_geojson(tiles.coords, size_level0, measurements)
        written.append(write_text_atomic(out.with_suffix(".geojson"), json.dumps(geojson)))
    return written


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float | np.floating) else str(value)


def read_stored_tile(slide: Any, xy: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """The pixels of one stored tile (top-left ``xy`` in level-0 px), read as it was encoded:
    same level-0 footprint, same output side in pixels."""
    size_level0 = tile_size_level0(attrs, slide.mpp_or_none)
    level = tile_level(attrs, slide.level_count)
    return slide.read_patch(float(xy[0]), float(xy[1]), size_level0, tile_size_px(attrs), level)
