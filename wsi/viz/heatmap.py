"""Attention and score maps as pictures and as QuPath detections.

Nothing here opens a slide: inputs are arrays. Coordinates are level-0 pixels, a thumbnail
comes with its ``downsample`` (level-0 pixels per thumbnail pixel) and ``scores[i]``
belongs to the tile whose top-left corner is ``coords[i]``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import matplotlib
import numpy as np
from matplotlib.colors import Colormap
from PIL import Image, ImageDraw
from scipy.stats import rankdata

from models.atomic import write_atomic
from wsi.errors import InvalidParameterError
from wsi.viz.geojson import feature_collection, polygon_feature
from wsi.viz.qc import (
    CAPTION_PX,
    MAX_SIDE_PX,
    as_rgb,
    caption_font,
    check_coords,
    fit_thumbnail,
    tile_boxes,
    with_caption,
)

Normalization = Literal["rank", "minmax"]

COLORBAR_PANEL_PX = 110
"""Width of the white panel right of the thumbnail that holds the colour bar (pixels)."""

_BAR_OFFSET_PX = 12
_BAR_WIDTH_PX = 18
_BAR_MARGIN_PX = 10
_BAR_MIN_HEIGHT_PX = 120
_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
_FIXED_POINT = float(2**32)
_MOSAIC_GAP_PX = 4
_MOSAIC_CAPTION_PX = 18


def normalize_scores(scores: np.ndarray, method: Normalization = "rank") -> np.ndarray:
    """Scores mapped to [0, 1] for a colormap; NaN/±inf stay NaN (such tiles are not drawn).

    ``"rank"``: (rank - 1) / (n - 1), ties averaged, so colours spread evenly whatever the
    score distribution. ``"minmax"``: (s - min) / (max - min). Equal scores map to 0.5.
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    out = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    n = int(finite.sum())
    if n == 0:
        return out
    kept = values[finite]
    if method == "rank":
        out[finite] = (rankdata(kept) - 1.0) / (n - 1) if n > 1 else 0.5
    elif method == "minmax":
        span = kept.max() - kept.min()
        out[finite] = (kept - kept.min()) / span if span > 0 else 0.5
    else:
        raise InvalidParameterError(f"normalize must be 'rank' or 'minmax', got {method!r}")
    return out


def attention_overlay(
    thumbnail: np.ndarray | Image.Image,
    downsample: float,
    coords: np.ndarray,
    tile_size_level0: float,
    scores: np.ndarray,
    *,
    cmap: str = "inferno",
    alpha: float = 0.5,
    normalize: Normalization = "rank",
    label: str = "attention",
    title: str | None = None,
) -> Image.Image:
    """The thumbnail with each tile filled in its score's colour, a colour bar and a legend line.

    ``downsample``: level-0 pixels per thumbnail pixel; ``coords``: (N, 2) tile top-left
    ``[x, y]`` in level-0 pixels; ``tile_size_level0``: tile side in level-0 pixels;
    ``scores``: (N,). Scores are normalised (see :func:`normalize_scores`); where tiles
    overlap their normalised scores are averaged. Tile pixels become
    ``round((1 - alpha) * thumbnail + alpha * cmap(value))``; pixels outside tiles and
    tiles with a NaN score keep the thumbnail. The colour bar's ticks are the scores at
    those colours. The thumbnail sits at the picture's top-left corner, shrunk only when
    the picture would exceed ``MAX_SIDE_PX``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InvalidParameterError(f"alpha must be in [0, 1], got {alpha}")
    colormap = _colormap(cmap)
    xy = check_coords(coords)
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.shape[0] != xy.shape[0]:
        raise InvalidParameterError(
            f"got {values.shape[0]} scores for {xy.shape[0]} tiles; pass one score per coords row"
        )
    normalized = normalize_scores(values, normalize)

    fitted = fit_thumbnail(
        thumbnail,
        downsample,
        max_width=MAX_SIDE_PX - COLORBAR_PANEL_PX,
        max_height=MAX_SIDE_PX - CAPTION_PX,
    )
    rgb = fitted.rgb
    height, width = rgb.shape[:2]
    drawn = np.isfinite(normalized)
    boxes = tile_boxes(xy[drawn], tile_size_level0, fitted.downsample_x, fitted.downsample_y)
    mean, covered = _mean_over_tiles(boxes, normalized[drawn], height, width)
    colours = colormap(mean[covered], bytes=True)[:, :3].astype(np.float64)
    blended = (1.0 - alpha) * rgb[covered].astype(np.float64) + alpha * colours
    rgb[covered] = np.rint(blended).astype(np.uint8)

    finite_scores = values[np.isfinite(values)]
    panel = _with_colorbar(rgb, colormap, _tick_scores(finite_scores, normalize))
    if normalize == "rank":
        meaning = "colour = rank of score, bar ticks = score quantiles"
    else:
        meaning = "colour = score scaled min to max, bar ticks = scores"
    parts = [title] if title else []
    parts.append(f"{label}: {meaning}")
    parts.append(f"{int(drawn.sum()):,} of {len(values):,} tiles drawn")
    return with_caption(panel, "  ·  ".join(parts))


def tiles_geojson(
    coords: np.ndarray,
    tile_size_level0: float,
    measurements: Mapping[str, np.ndarray],
    *,
    classification: str | None = None,
) -> dict[str, Any]:
    """A FeatureCollection with one QuPath ``detection`` square per tile, in level-0 pixels.

    ``measurements`` maps a name (e.g. ``"attention_tumour_type"``) to N numbers; tile i
    carries ``value[i]`` for each name (a NaN or infinite value is left out of that tile,
    since JSON has no NaN). The result holds only Python types: ``json.dumps`` works.
    """
    if not np.isfinite(tile_size_level0) or tile_size_level0 <= 0:
        raise InvalidParameterError(
            f"tile_size_level0 must be > 0 level-0 pixels, got {tile_size_level0}"
        )
    xy = check_coords(coords)
    columns = {}
    for name, column in measurements.items():
        try:
            values = np.asarray(column, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as error:
            raise InvalidParameterError(
                f"measurement {name!r} must be numeric (QuPath shows numbers): {error}"
            ) from error
        if values.shape[0] != xy.shape[0]:
            raise InvalidParameterError(
                f"measurement {name!r} has {values.shape[0]} values for {xy.shape[0]} tiles; "
                "pass one value per coords row"
            )
        columns[str(name)] = values.tolist()
    size = float(tile_size_level0)
    features = []
    for i, (x, y) in enumerate(xy.tolist()):
        square = [(x, y), (x + size, y), (x + size, y + size), (x, y + size)]
        tile_measurements = {
            name: value for name, values in columns.items() if math.isfinite(value := values[i])
        }
        features.append(
            polygon_feature(
                [square],
                object_type="detection",
                classification=classification,
                measurements=tile_measurements,
            )
        )
    return feature_collection(features)


def top_tiles_mosaic(
    patches: Sequence[np.ndarray] | np.ndarray,
    scores: np.ndarray,
    *,
    columns: int = 8,
    captions: Sequence[str] | None = None,
    title: str | None = None,
) -> Image.Image:
    """A grid of tile images, highest score first (row by row), each captioned with its score.

    ``patches``: K uint8 images (H, W, 3) or one (K, H, W, 3) array; a patch whose size
    differs from the first one's is resized to it. ``captions`` (K labels, e.g. tile ids)
    are shown before the score (shortened so the score stays visible). NaN scores come last. The grid has ``min(columns, K)``
    columns and ``ceil(K / columns)`` rows of cells, ``4`` px apart, each an ``H``-high
    tile over an 18-px caption.
    """
    if columns < 1:
        raise InvalidParameterError(f"columns must be >= 1, got {columns}")
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    count = len(patches)
    if values.shape[0] != count:
        raise InvalidParameterError(f"got {values.shape[0]} scores for {count} patches")
    if captions is not None and len(captions) != count:
        raise InvalidParameterError(f"got {len(captions)} captions for {count} patches")
    if count == 0:
        return with_caption(np.full((64, 256, 3), 255, np.uint8), title or "no tiles")

    tiles = [as_rgb(patch) for patch in patches]
    tile_h, tile_w = tiles[0].shape[:2]
    order = np.argsort(np.where(np.isnan(values), np.inf, -values), kind="stable")
    n_cols = min(columns, count)
    n_rows = -(-count // n_cols)
    cell_w = tile_w + _MOSAIC_GAP_PX
    cell_h = tile_h + _MOSAIC_CAPTION_PX + _MOSAIC_GAP_PX
    canvas = Image.new(
        "RGB", (n_cols * cell_w + _MOSAIC_GAP_PX, n_rows * cell_h + _MOSAIC_GAP_PX), "white"
    )
    draw = ImageDraw.Draw(canvas)
    font = caption_font(12)
    for position, index in enumerate(order.tolist()):
        left = _MOSAIC_GAP_PX + (position % n_cols) * cell_w
        top = _MOSAIC_GAP_PX + (position // n_cols) * cell_h
        tile = Image.fromarray(tiles[index])
        if tile.size != (tile_w, tile_h):
            tile = tile.resize((tile_w, tile_h), Image.Resampling.BILINEAR)
        canvas.paste(tile, (left, top))
        text = f"{values[index]:.3g}"
        if captions is not None:
            room = tile_w - font.getlength(f"  {text}")
            text = f"{_fit_text(str(captions[index]), font, room)}  {text}"
        text = _fit_text(text, font, tile_w)
        draw.text((left, top + tile_h + 2), text, fill="black", font=font)
    legend = f"top {count} tiles by score, highest first"
    return with_caption(canvas, f"{title}  ·  {legend}" if title else legend)


def save_png(image: Image.Image | np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` as PNG atomically (temporary name in the same folder, then rename).

    Parent folders are created. A crash never leaves a half-written file under ``path``.
    """
    picture = image if isinstance(image, Image.Image) else Image.fromarray(as_rgb(image))
    return write_atomic(path, lambda tmp: picture.save(tmp, format="PNG", compress_level=1))


def _colormap(name: str) -> Colormap:
    try:
        return matplotlib.colormaps[name]
    except KeyError as error:
        raise InvalidParameterError(
            f"unknown colormap {name!r}; use a matplotlib name such as 'inferno', 'viridis', "
            "'magma' or 'RdBu_r'"
        ) from error


def _mean_over_tiles(
    boxes: np.ndarray, values: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean of the values of the boxes covering it, and where any box does.

    Summed-area (2-D difference) arrays in 32-bit fixed point: exact and O(N + H·W).
    """
    x0 = np.clip(boxes[:, 0], 0, width)
    x1 = np.clip(boxes[:, 2], 0, width)
    y0 = np.clip(boxes[:, 1], 0, height)
    y1 = np.clip(boxes[:, 3], 0, height)
    keep = (x1 > x0) & (y1 > y0)
    x0, x1, y0, y1 = x0[keep], x1[keep], y0[keep], y1[keep]
    weights = np.rint(values[keep] * _FIXED_POINT)
    stride = width + 1
    size = (height + 1) * stride
    corners = ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1))
    sums = np.zeros(size, dtype=np.int64)
    counts = np.zeros(size, dtype=np.int64)
    for rows, cols, sign in corners:
        flat = rows * stride + cols
        sums += sign * np.bincount(flat, weights=weights, minlength=size).astype(np.int64)
        counts += sign * np.bincount(flat, minlength=size)
    sums = sums.reshape(height + 1, stride).cumsum(axis=0).cumsum(axis=1)[:height, :width]
    counts = counts.reshape(height + 1, stride).cumsum(axis=0).cumsum(axis=1)[:height, :width]
    covered = counts > 0
    mean = np.zeros((height, width), dtype=np.float64)
    mean[covered] = sums[covered] / counts[covered] / _FIXED_POINT
    return mean, covered


def _tick_scores(finite_scores: np.ndarray, normalize: Normalization) -> list[float]:
    """The score shown at each tick of the colour bar (empty when nothing is scored)."""
    if finite_scores.size == 0:
        return []
    if normalize == "rank":
        return [float(v) for v in np.quantile(finite_scores, _TICKS)]
    low, high = float(finite_scores.min()), float(finite_scores.max())
    return [low + t * (high - low) for t in _TICKS]


def _with_colorbar(rgb: np.ndarray, colormap: Colormap, tick_scores: list[float]) -> Image.Image:
    """``rgb`` at the top-left of a white canvas with a vertical colour bar (top = 1) to its right."""
    height, width = rgb.shape[:2]
    bar_height = max(_BAR_MIN_HEIGHT_PX, height - 2 * _BAR_MARGIN_PX)
    canvas_height = max(height, bar_height + 2 * _BAR_MARGIN_PX)
    canvas = np.full((canvas_height, width + COLORBAR_PANEL_PX, 3), 255, dtype=np.uint8)
    canvas[:height, :width] = rgb
    levels = np.linspace(1.0, 0.0, bar_height)
    gradient = colormap(levels, bytes=True)[:, :3]
    bar_left = width + _BAR_OFFSET_PX
    bar_top = _BAR_MARGIN_PX
    canvas[bar_top : bar_top + bar_height, bar_left : bar_left + _BAR_WIDTH_PX] = gradient[
        :, None, :
    ]
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    font = caption_font(12)
    text_left = bar_left + _BAR_WIDTH_PX + 4
    for tick, score in zip(_TICKS, tick_scores, strict=False):
        y = bar_top + round((1.0 - tick) * (bar_height - 1))
        draw.line([(bar_left + _BAR_WIDTH_PX, y), (text_left - 1, y)], fill="black")
        draw.text((text_left, y), f"{score:.3g}", fill="black", font=font, anchor="lm")
    return image


def _fit_text(text: str, font: Any, max_width: float) -> str:
    """``text`` cut with an ellipsis so that it fits ``max_width`` pixels (if it can)."""
    if font.getlength(text) <= max_width:
        return text
    while text and font.getlength(text + "...") > max_width:
        text = text[:-1]
    return text + "..."
