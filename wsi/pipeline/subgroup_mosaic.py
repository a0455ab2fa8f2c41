"""Representative tiles of each subgroup as a mosaic, when the slide files can be read."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from wsi.pipeline.batch import find_slides
from wsi.pipeline.heatmap import read_stored_tile
from wsi.store.h5 import read_tile_file
from wsi.viz.heatmap import save_png, top_tiles_mosaic

SLIDES_PER_GROUP = 3
"""The slides nearest each group's centre whose tiles are shown."""

TILES_PER_SLIDE = 3
"""Tiles per shown slide: those most similar (cosine) to the slide's mean feature."""


def _representative(features: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the ``n`` rows closest in angle to the mean row."""
    mean = features.mean(axis=0)
    norms = np.linalg.norm(features, axis=1) * np.linalg.norm(mean)
    similarity = features @ mean / np.where(norms > 0, norms, 1.0)
    top = np.argsort(-similarity)[:n]
    return top, similarity[top]


def group_mosaics(
    assignments: pd.DataFrame,
    features_dir: str | os.PathLike[str],
    slides: Sequence[str | os.PathLike[str]],
    out_dir: Path,
) -> list[Path]:
    """``mosaic_group_<g>.png`` per group: the tiles most like their slide's mean, from the
    slides nearest the group centre. Slides without a file among ``slides`` are skipped; a
    group with none gets no picture."""
    from wsi.io.slide import open_slide

    paths = {p.name.rsplit(".", 1)[0]: p for p in find_slides(slides) if p.is_file()}
    written = []
    for group, members in assignments.sort_values("distance").groupby("group"):
        patches, scores, captions = [], [], []
        for sid in [s for s in members["slide_id"] if s in paths][:SLIDES_PER_GROUP]:
            tiles = read_tile_file(Path(features_dir) / f"{sid}.h5")
            if tiles.features is None or len(tiles.features) == 0:
                continue
            top, similarity = _representative(tiles.features, TILES_PER_SLIDE)
            with open_slide(paths[sid]) as slide:
                patches += [
                    read_stored_tile(slide, tiles.coords[j], tiles.coords_attrs) for j in top
                ]
            scores += similarity.tolist()
            captions += [sid] * len(top)
        if patches:
            mosaic = top_tiles_mosaic(
                patches,
                np.array(scores),
                columns=TILES_PER_SLIDE,
                captions=captions,
                title=f"group {group}: tiles like their slide's mean",
            )
            written.append(save_png(mosaic, out_dir / f"mosaic_group_{group}.png"))
    return written
