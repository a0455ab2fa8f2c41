"""Tumour micro-environment maps over a slide thumbnail: tissue roles, a density per tile and
grid-cell calls, each with a legend. Nothing here opens a slide or knows roles: inputs are
arrays, names and colours (level-0 pixel coordinates; a thumbnail comes with its
``downsample``, level-0 pixels per thumbnail pixel).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from wsi.viz.heatmap import attention_overlay
from wsi.viz.qc import (
    CAPTION_PX,
    MAX_SIDE_PX,
    caption_font,
    check_coords,
    fit_thumbnail,
    tile_boxes,
    with_caption,
)

LEGEND_PANEL_PX = 170
"""Width of the white panel right of the thumbnail that holds the legend (pixels)."""

RGB = tuple[int, int, int]


def _legend(rgb: np.ndarray, entries: Sequence[tuple[str, RGB]]) -> Image.Image:
    """``rgb`` with a white panel on its right listing each (name, colour)."""
    height = max(rgb.shape[0], 16 + 20 * len(entries))
    canvas = Image.new("RGB", (rgb.shape[1] + LEGEND_PANEL_PX, height), "white")
    canvas.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = caption_font(12)
    for k, (name, colour) in enumerate(entries):
        x, y = rgb.shape[1] + 10, 8 + 20 * k
        draw.rectangle([x, y, x + 14, y + 14], fill=tuple(colour), outline="black")
        draw.text((x + 20, y + 7), name, fill="black", font=font, anchor="lm")
    return canvas


def _fill(rgb: np.ndarray, boxes: np.ndarray, colours: np.ndarray, alpha: float) -> None:
    """Blend each box of ``rgb`` (in place) with its colour."""
    height, width = rgb.shape[:2]
    for (x0, y0, x1, y1), colour in zip(boxes.tolist(), colours, strict=True):
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x1 > x0 and y1 > y0:
            patch = rgb[y0:y1, x0:x1].astype(np.float64)
            rgb[y0:y1, x0:x1] = np.rint((1 - alpha) * patch + alpha * colour).astype(np.uint8)


def category_map(
    thumbnail: np.ndarray | Image.Image,
    downsample: float,
    coords: np.ndarray,
    size_level0: float,
    categories: Sequence[str],
    colours: Mapping[str, RGB],
    *,
    alpha: float = 0.55,
    title: str = "",
    outline: bool = False,
) -> Image.Image:
    """The thumbnail with each square (top-left ``coords[i]``, side ``size_level0`` level-0
    pixels) filled in ``colours[categories[i]]`` (an empty category or one without a colour
    is left as it is), a legend of the categories present and a caption. ``outline``: also
    draw each square's border (for grid cells larger than tiles)."""
    fitted = fit_thumbnail(
        thumbnail,
        downsample,
        max_width=MAX_SIDE_PX - LEGEND_PANEL_PX,
        max_height=MAX_SIDE_PX - CAPTION_PX,
    )
    rgb = fitted.rgb
    names = np.asarray([str(c) for c in categories], dtype=object)
    drawn = np.array([n in colours for n in names], bool)
    boxes = tile_boxes(
        check_coords(coords)[drawn], size_level0, fitted.downsample_x, fitted.downsample_y
    )
    palette = np.array([colours[n] for n in names[drawn]], np.float64).reshape(-1, 3)
    _fill(rgb, boxes, palette, alpha)
    picture = Image.fromarray(rgb)
    if outline:
        draw = ImageDraw.Draw(picture)
        for (x0, y0, x1, y1), colour in zip(
            boxes.tolist(), palette.astype(int).tolist(), strict=True
        ):
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=tuple(colour), width=2)
    present = [n for n in colours if n in set(names[drawn])]
    counts = {n: int((names == n).sum()) for n in present}
    entries = [(f"{n} ({counts[n]})", colours[n]) for n in present]
    return with_caption(_legend(np.asarray(picture), entries), title)


def density_map(
    thumbnail: np.ndarray | Image.Image,
    downsample: float,
    coords: np.ndarray,
    size_level0: float,
    values: np.ndarray,
    *,
    label: str = "lymphocytes per mm²",
    title: str | None = None,
) -> Image.Image:
    """Each tile in the colour of its value (scaled min to max; the colour bar's ticks are
    values), for a density per tile; NaN tiles keep the thumbnail."""
    return attention_overlay(
        thumbnail,
        downsample,
        coords,
        size_level0,
        values,
        cmap="viridis",
        alpha=0.6,
        normalize="minmax",
        label=label,
        title=title,
    )
