"""Quality-control picture of a tiled slide: thumbnail, tissue outline, tile grid, caption.

Nothing here opens a slide: inputs are arrays. Coordinates are level-0 pixels and every
thumbnail comes with its ``downsample`` (level-0 pixels per thumbnail pixel).

The module also holds the drawing primitives that :mod:`wsi.viz.heatmap` shares: fitting a
thumbnail into a maximum size, mapping level-0 tiles to thumbnail pixels and a caption line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsi.errors import InvalidParameterError
from wsi.io.readers import rgba_to_rgb

MAX_SIDE_PX = 2048
"""Longest side of a QC or heatmap picture, caption included (pixels)."""

CAPTION_PX = 24
"""Height of the caption line under a picture (pixels)."""

TISSUE_OUTLINE_RGB = (0, 255, 0)
TILE_GRID_RGB = (0, 96, 255)
_CAPTION_FONT_PX = 14
_CAPTION_MARGIN_PX = 6


@dataclass(frozen=True)
class FittedThumbnail:
    """An RGB thumbnail resized to fit a picture, with its exact scale along each axis.

    ``downsample_x`` / ``downsample_y`` are level-0 pixels per pixel of ``rgb``.
    """

    rgb: np.ndarray
    downsample_x: float
    downsample_y: float

    def __repr__(self) -> str:
        h, w = self.rgb.shape[:2]
        return (
            f"<FittedThumbnail {w}×{h} px, {self.downsample_x:.4g}×{self.downsample_y:.4g} "
            "level-0 px per px>"
        )


def as_rgb(image: np.ndarray | Image.Image) -> np.ndarray:
    """An (H, W, 3) uint8 copy of a grey, RGB or RGBA uint8 image (RGBA composited on white)."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise InvalidParameterError(
            f"expected a uint8 image, got dtype {array.dtype}; "
            "convert it first, e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1]"
        )
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 3:
        return array.copy()
    if array.ndim == 3 and array.shape[2] == 4:
        return rgba_to_rgb(array)
    raise InvalidParameterError(
        f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}"
    )


def fit_thumbnail(
    thumbnail: np.ndarray | Image.Image,
    downsample: float,
    *,
    max_width: int = MAX_SIDE_PX,
    max_height: int = MAX_SIDE_PX,
) -> FittedThumbnail:
    """Shrink a thumbnail (never enlarge) to fit ``max_width`` x ``max_height`` pixels.

    ``downsample`` is level-0 pixels per thumbnail pixel; the result carries the new scale.
    """
    if not np.isfinite(downsample) or downsample <= 0:
        raise InvalidParameterError(
            f"downsample must be > 0 level-0 pixels per thumbnail pixel, got {downsample}"
        )
    rgb = as_rgb(thumbnail)
    height, width = rgb.shape[:2]
    if height == 0 or width == 0:
        raise InvalidParameterError(f"the thumbnail is empty (shape {rgb.shape})")
    scale = min(1.0, max_width / width, max_height / height)
    new_width = max(1, round(width * scale))
    new_height = max(1, round(height * scale))
    if (new_width, new_height) != (width, height):
        resized = Image.fromarray(rgb).resize((new_width, new_height), Image.Resampling.BOX)
        rgb = np.asarray(resized).copy()
    return FittedThumbnail(
        rgb=rgb,
        downsample_x=float(downsample) * width / new_width,
        downsample_y=float(downsample) * height / new_height,
    )


def check_coords(coords: np.ndarray) -> np.ndarray:
    """Tile top-left corners as a float64 (N, 2) ``[x, y]`` array in level-0 pixels."""
    array = np.asarray(coords, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 2)
    if array.ndim != 2 or array.shape[1] != 2:
        raise InvalidParameterError(
            f"coords must have shape (N, 2) with [x, y] level-0 pixels, got {array.shape}"
        )
    if not np.isfinite(array).all():
        raise InvalidParameterError("coords contain NaN or infinite values")
    return array


def tile_boxes(
    coords: np.ndarray, tile_size_level0: float, downsample_x: float, downsample_y: float
) -> np.ndarray:
    """Tiles as int64 (N, 4) ``[x0, y0, x1, y1]`` thumbnail pixels, half-open, unclipped.

    Each edge is the level-0 edge divided by the downsample, rounded half up, and every
    tile keeps at least one pixel, so tiles that touch at level 0 touch in the picture.
    """
    if not np.isfinite(tile_size_level0) or tile_size_level0 <= 0:
        raise InvalidParameterError(
            f"tile_size_level0 must be > 0 level-0 pixels, got {tile_size_level0}"
        )
    xy = check_coords(coords)
    x0 = np.floor(xy[:, 0] / downsample_x + 0.5)
    y0 = np.floor(xy[:, 1] / downsample_y + 0.5)
    x1 = np.maximum(x0 + 1, np.floor((xy[:, 0] + tile_size_level0) / downsample_x + 0.5))
    y1 = np.maximum(y0 + 1, np.floor((xy[:, 1] + tile_size_level0) / downsample_y + 0.5))
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)


def caption_font(size_px: int = _CAPTION_FONT_PX) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's built-in font at ``size_px`` (the bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size_px)
    except (OSError, ImportError):
        return ImageFont.load_default()


def with_caption(image: np.ndarray | Image.Image, text: str) -> Image.Image:
    """``image`` on a white canvas with one line of ``text`` under it (``CAPTION_PX`` high).

    The canvas is widened for a caption longer than the image, up to ``MAX_SIDE_PX``.
    """
    top = Image.fromarray(as_rgb(image))
    font = caption_font()
    text_width = int(np.ceil(font.getlength(text))) + 2 * _CAPTION_MARGIN_PX
    width = max(top.width, min(text_width, MAX_SIDE_PX))
    canvas = Image.new("RGB", (width, top.height + CAPTION_PX), "white")
    canvas.paste(top, (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text(
        (_CAPTION_MARGIN_PX, top.height + CAPTION_PX // 2),
        text,
        fill="black",
        font=font,
        anchor="lm",
    )
    return canvas


def qc_image(
    thumbnail: np.ndarray | Image.Image,
    downsample: float,
    *,
    tissue_mask: np.ndarray | None,
    mask_downsample: float | None,
    coords: np.ndarray,
    tile_size_level0: float,
    title: str | None = None,
    mpp: float | None = None,
) -> Image.Image:
    """The thumbnail with the tissue outline (green, 2 px), the tile grid (blue, 1 px) and a caption.

    ``downsample``: level-0 pixels per thumbnail pixel. ``tissue_mask``: boolean (nonzero =
    tissue) at ``mask_downsample`` level-0 pixels per mask pixel; ``mask_downsample=None``
    means the mask covers the same region as the thumbnail. ``coords``: (N, 2) tile top-left
    ``[x, y]`` in level-0 pixels, ``tile_size_level0``: tile side in level-0 pixels.
    ``title`` (e.g. the slide id) and ``mpp`` (the tiles' µm/px) go into the caption.
    The picture is at most ``MAX_SIDE_PX`` on its long side; the thumbnail sits at its
    top-left corner, so without shrinking thumbnail pixel (x, y) is picture pixel (x, y).
    """
    fitted = fit_thumbnail(
        thumbnail, downsample, max_width=MAX_SIDE_PX, max_height=MAX_SIDE_PX - CAPTION_PX
    )
    rgb = fitted.rgb
    height, width = rgb.shape[:2]
    boxes = tile_boxes(coords, tile_size_level0, fitted.downsample_x, fitted.downsample_y)
    rgb[_grid_lines(boxes, height, width)] = TILE_GRID_RGB
    if tissue_mask is not None:
        mask = _mask_on_picture(tissue_mask, mask_downsample, downsample, thumbnail, fitted)
        rgb[_outline(mask)] = TISSUE_OUTLINE_RGB
    parts = [title] if title else []
    parts.append(f"{len(boxes):,} tiles")
    if mpp is not None:
        parts.append(f"{mpp:g} um/px")
    parts.append(f"tile {tile_size_level0:g} px at level 0")
    if tissue_mask is None:
        parts.append("no tissue mask")
    return with_caption(rgb, "  ·  ".join(parts))


def _grid_lines(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean (H, W) image of the 1-px outlines of all boxes (edges x0..x1, y0..y1 inclusive)."""
    x0, y0, x1, y1 = boxes.T
    horizontal = _runs(np.concatenate([y0, y1]), np.tile(x0, 2), np.tile(x1, 2), height, width)
    vertical = _runs(np.concatenate([x0, x1]), np.tile(y0, 2), np.tile(y1, 2), width, height)
    return horizontal | vertical.T


def _runs(
    line: np.ndarray, start: np.ndarray, stop: np.ndarray, n_lines: int, length: int
) -> np.ndarray:
    """Boolean (n_lines, length): on each ``line``, pixels ``start..stop`` inclusive set.

    Vectorised with a difference array, so 100k tiles cost a few bincounts, not 100k draws.
    """
    keep = (line >= 0) & (line < n_lines) & (stop >= 0) & (start < length)
    line, start, stop = line[keep], start[keep], stop[keep]
    start = np.clip(start, 0, length - 1)
    stop = np.clip(stop, 0, length - 1)
    row_offset = line * (length + 1)
    size = n_lines * (length + 1)
    diff = np.bincount(row_offset + start, minlength=size) - np.bincount(
        row_offset + stop + 1, minlength=size
    )
    return diff.reshape(n_lines, length + 1).cumsum(axis=1)[:, :length] > 0


def _mask_on_picture(
    tissue_mask: np.ndarray,
    mask_downsample: float | None,
    downsample: float,
    thumbnail: np.ndarray | Image.Image,
    fitted: FittedThumbnail,
) -> np.ndarray:
    """The tissue mask sampled (nearest) at the picture's pixel centres; outside it is glass."""
    mask = np.asarray(tissue_mask).astype(bool)
    if mask.ndim != 2:
        raise InvalidParameterError(f"tissue_mask must be 2-D, got shape {mask.shape}")
    if mask_downsample is None:
        mask_downsample = downsample * np.asarray(thumbnail).shape[1] / max(mask.shape[1], 1)
    if not np.isfinite(mask_downsample) or mask_downsample <= 0:
        raise InvalidParameterError(
            f"mask_downsample must be > 0 level-0 pixels per mask pixel, got {mask_downsample}"
        )
    height, width = fitted.rgb.shape[:2]
    cols = np.floor((np.arange(width) + 0.5) * fitted.downsample_x / mask_downsample)
    rows = np.floor((np.arange(height) + 0.5) * fitted.downsample_y / mask_downsample)
    cols, rows = cols.astype(np.int64), rows.astype(np.int64)
    inside_c, inside_r = cols < mask.shape[1], rows < mask.shape[0]
    sampled = np.zeros((height, width), dtype=bool)
    sampled[np.ix_(inside_r, inside_c)] = mask[np.ix_(rows[inside_r], cols[inside_c])]
    return sampled


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour on the other side of the mask edge: a 2-px line (1 in, 1 out).

    The picture border is not an edge (the mask is extended by replication there).
    """
    padded = np.pad(mask, 1, mode="edge")
    outline = np.zeros_like(mask)
    for neighbour in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
        outline |= neighbour != mask
    return outline


def png_bytes(image: Image.Image, max_side_px: int = 768) -> bytes:
    """``image`` as PNG bytes, shrunk to ``max_side_px`` at most (notebook ``_repr_png_``)."""
    import io

    picture = image.copy()
    picture.thumbnail((max_side_px, max_side_px))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
