"""Synthetic whole-slide images with known tissue, scale and background, for tests and demos.

``write_slide`` writes a pyramidal, tiled, JPEG-compressed TIFF that openslide opens, either
as a generic TIFF (``flavour="tiff"``: mpp in the TIFF resolution tags, unit centimetre) or as
an Aperio SVS (``flavour="svs"``: ``Aperio Image Library`` description with ``AppMag``/``MPP``,
a stripped thumbnail as the second image, optional label and macro images).

Content is rendered analytically, tile by tile, at each level: a level pixel shows what lies
at its centre in level-0 coordinates (tissue regions, holes, pen marks), and the tissue
texture is the exact mean of a smooth level-0 texture over the pixel's footprint, so all
levels agree and the mean of a ``d x d`` block at level 0 equals the pixel of a level with
downsample ``d`` (up to rounding and JPEG). No level is ever held in memory whole, and
tiles of one flat colour (glass) are JPEG-encoded once, so a 100 000 x 80 000 px slide
streams to disk with flat memory.

Coordinates are level-0 pixels; pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Literal

import imagecodecs
import numpy as np
import tifffile

from wsi.errors import InvalidParameterError

__all__ = [
    "GLASS",
    "THUMBNAIL_MAX_SIDE",
    "Painter",
    "PenMark",
    "Region",
    "render",
    "tissue_fraction",
    "write_flat_image",
    "write_slide",
]

RGB = tuple[int, int, int]
Painter = Callable[[int, int, int, int, int], np.ndarray]
"""``painter(x0, y0, width, height, downsample) -> uint8 (height, width, 3)``.

Renders the level-0 window whose top-left is ``(x0, y0)`` at an integer ``downsample``:
output pixel ``(row, col)`` covers level-0 ``[x0 + col*d, x0 + (col+1)*d) x
[y0 + row*d, y0 + (row+1)*d)``. It must accept any window, including ones that extend
past the slide's edges (edge tiles are padded to the full tile size). ``write_slide``
calls it from worker threads, several windows at a time: make it a pure function of its
arguments.
"""

GLASS: RGB = (243, 243, 241)
"""The default background: bright, nearly neutral glass."""

THUMBNAIL_MAX_SIDE = 1024
"""Longest side (px) of the SVS thumbnail image, as Aperio scanners write it."""

_TEXTURE_COMPONENTS = 6
_TEXTURE_WAVELENGTHS_PX = (3.0, 48.0)
_APERIO_HEADER = "Aperio Image Library v12.0.15"
_LABEL_SIZE_PX = 256
_WORKERS = min(4, os.cpu_count() or 1)
_TILES_AHEAD = 8 * _WORKERS
_MACRO_MAX_SIDE = 512
# tifffile keywords: JPEG in YCbCr with 2x2 chroma subsampling; no tifffile JSON metadata.
_JPEG = {"compression": "jpeg", "photometric": "rgb", "subsampling": (2, 2)}
_PLAIN = {"metadata": None, "software": "wsi.synthetic.slides"}
# Uncompressed pixels bound the JPEG file: past ~4 GiB (less headroom), offsets need BigTIFF.
_BIGTIFF_ABOVE_BYTES = 2**32 - 2**26


@dataclass(frozen=True)
class Region:
    """A tissue region (or a hole in tissue) in level-0 pixels.

    ``shape="rect"`` covers ``[x, x + width) x [y, y + height)``; ``"ellipse"`` is the
    ellipse inscribed in that box. ``texture`` is the standard deviation, in 8-bit grey
    levels at level 0, of a deterministic texture added to ``color`` (0 = flat colour).
    ``hole=True`` paints glass instead of tissue. Later regions paint over earlier ones.
    """

    x: int
    y: int
    width: int
    height: int
    shape: Literal["rect", "ellipse"] = "rect"
    color: RGB = (200, 110, 170)
    texture: float = 12.0
    hole: bool = False

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise InvalidParameterError(
                f"Region width and height must be > 0 px, got {self.width} x {self.height}"
            )
        if self.shape not in ("rect", "ellipse"):
            raise InvalidParameterError(
                f"Region shape must be 'rect' or 'ellipse', got {self.shape!r}"
            )
        if self.texture < 0:
            raise InvalidParameterError(f"Region texture must be >= 0, got {self.texture}")

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(x_min, y_min, x_max, y_max)`` in level-0 pixels, max exclusive."""
        return (self.x, self.y, self.x + self.width, self.y + self.height)

    def mask(self, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
        """Whether each point of the grid ``cx`` (columns) x ``cy`` (rows) is inside."""
        if self.shape == "rect":
            return np.ones((cy.size, cx.size), dtype=bool)
        ax, ay = self.width / 2, self.height / 2
        dx = ((cx - (self.x + ax)) / ax) ** 2
        dy = ((cy - (self.y + ay)) / ay) ** 2
        return dy[:, None] + dx[None, :] < 1.0


@dataclass(frozen=True)
class PenMark:
    """A straight ink stroke from ``(x0, y0)`` to ``(x1, y1)``, ``width`` px thick (level 0).

    Pen marks are painted on top of tissue and glass, in flat ``color`` (green, blue, black…).
    """

    x0: int
    y0: int
    x1: int
    y1: int
    width: int
    color: RGB = (40, 120, 60)

    def __post_init__(self) -> None:
        if self.width <= 0:
            raise InvalidParameterError(f"PenMark width must be > 0 px, got {self.width}")

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(x_min, y_min, x_max, y_max)`` in level-0 pixels, max exclusive."""
        r = self.width / 2
        return (
            min(self.x0, self.x1) - r,
            min(self.y0, self.y1) - r,
            max(self.x0, self.x1) + r,
            max(self.y0, self.y1) + r,
        )

    def mask(self, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
        """Whether each point of the grid ``cx`` x ``cy`` lies within ``width/2`` of the stroke."""
        vx, vy = self.x1 - self.x0, self.y1 - self.y0
        px = cx[None, :] - self.x0
        py = cy[:, None] - self.y0
        length2 = vx * vx + vy * vy
        t = np.clip((px * vx + py * vy) / length2, 0.0, 1.0) if length2 else 0.0
        return (px - t * vx) ** 2 + (py - t * vy) ** 2 < (self.width / 2) ** 2


@lru_cache(maxsize=64)
def _texture_components(seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Angular frequencies (rad/px) and phases, (2, K) for x and y, and the unit-std scale."""
    rng = np.random.default_rng(seed)
    lo, hi = np.log(_TEXTURE_WAVELENGTHS_PX)
    omega = 2 * np.pi / np.exp(rng.uniform(lo, hi, size=(2, _TEXTURE_COMPONENTS)))
    phase = rng.uniform(0.0, 2 * np.pi, size=(2, _TEXTURE_COMPONENTS))
    # Level-0 variance of each product term: (sinc attenuation of a 1-px box)^2 / 4.
    atten = np.sinc(omega / (2 * np.pi)) ** 2
    return omega, phase, float(1.0 / np.sqrt(np.sum(atten[0] * atten[1]) / 4))


def _texture_window(seed: int, x0: int, y0: int, w: int, h: int, d: int) -> np.ndarray:
    """Unit-std texture, float32 (h, w): exact mean over each pixel's level-0 footprint.

    The texture is a sum of separable sinusoid products with seeded wavelengths (3-48 px)
    and phases, so its box mean over any footprint is analytic and levels agree exactly.
    """
    omega, phase, scale = _texture_components(seed)

    def box_means(start: int, n: int, om: np.ndarray, ph: np.ndarray) -> np.ndarray:
        a = (start + np.arange(n, dtype=np.float64) * d)[None, :]
        om, ph = om[:, None], ph[:, None]
        return (np.cos(om * a + ph) - np.cos(om * (a + d) + ph)) / (om * d)

    along_x = box_means(x0, w, omega[0], phase[0])
    along_y = box_means(y0, h, omega[1], phase[1])
    return (scale * along_y.T @ along_x).astype(np.float32)


def _window_slices(
    bbox: tuple[float, float, float, float], cx: np.ndarray, cy: np.ndarray
) -> tuple[slice, slice] | None:
    """Rows and columns of the window whose pixel centres fall inside ``bbox``, or None."""
    c0, c1 = np.searchsorted(cx, [bbox[0], bbox[2]])
    r0, r1 = np.searchsorted(cy, [bbox[1], bbox[3]])
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(int(r0), int(r1)), slice(int(c0), int(c1))


def _pixel_centres(x0: int, y0: int, w: int, h: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    cx = x0 + (np.arange(w, dtype=np.float64) + 0.5) * d
    cy = y0 + (np.arange(h, dtype=np.float64) + 0.5) * d
    return cx, cy


@lru_cache(maxsize=8)
def _glass_tile(background: RGB, h: int, w: int) -> np.ndarray:
    """A read-only (h, w, 3) uint8 tile of one colour, shared by every empty window."""
    tile = np.empty((h, w, 3), dtype=np.uint8)
    tile[:] = background
    tile.flags.writeable = False
    return tile


def _packed(color: Sequence[int]) -> int:
    """An RGB colour packed into one uint32, R in the lowest byte."""
    r, g, b = (int(c) for c in color)
    return r | g << 8 | b << 16


def _unpacked(canvas: np.ndarray) -> np.ndarray:
    """Packed uint32 pixels (h, w) back to uint8 RGB (h, w, 3)."""
    rgb = np.empty((*canvas.shape, 3), dtype=np.uint8)
    for channel in range(3):
        rgb[..., channel] = canvas >> (8 * channel)
    return rgb


def _shades(color: RGB, offsets: np.ndarray) -> np.ndarray:
    """Packed ``clip(color + offset)`` for integer grey-level offsets, via a lookup table."""
    lo = int(offsets.min())
    levels = np.arange(lo, int(offsets.max()) + 1)[:, None] + np.asarray(color)[None, :]
    rgb = np.clip(levels, 0, 255).astype(np.uint32)
    table = rgb[:, 0] | rgb[:, 1] << 8 | rgb[:, 2] << 16
    return np.take(table, offsets - lo)


def _paint_regions(
    regions: Sequence[Region],
    background: RGB,
    seed: int,
    x0: int,
    y0: int,
    w: int,
    h: int,
    d: int,
) -> np.ndarray:
    """The region painter: glass, then each region in order (holes paint glass).

    Paints on packed uint32 pixels, so masked writes move one word per pixel.
    """
    cx, cy = _pixel_centres(x0, y0, w, h, d)
    windows = [(region, _window_slices(region.bbox, cx, cy)) for region in regions]
    if all(window is None for _, window in windows):
        return _glass_tile(background, h, w)
    canvas = np.full((h, w), _packed(background), dtype=np.uint32)
    texture = None
    for region, window in windows:
        if window is None:
            continue
        rows, cols = window
        if region.hole or region.texture == 0:
            value = _packed(background if region.hole else region.color)
        else:
            if texture is None:
                texture = _texture_window(seed, x0, y0, w, h, d)
            offsets = np.rint(region.texture * texture[rows, cols]).astype(np.intp)
            value = _shades(region.color, offsets)
        if region.shape == "rect":
            canvas[rows, cols] = value
        else:
            np.copyto(canvas[rows, cols], value, where=region.mask(cx[cols], cy[rows]))
    return _unpacked(canvas)


def _paint(
    painter: Painter, pen_marks: Sequence[PenMark], x0: int, y0: int, w: int, h: int, d: int
) -> np.ndarray:
    """The one rendering path: the painter's window, then pen marks on top."""
    out = np.asarray(painter(x0, y0, w, h, d))
    if out.shape != (h, w, 3) or out.dtype != np.uint8:
        raise InvalidParameterError(
            f"painter({x0}, {y0}, {w}, {h}, {d}) returned {out.dtype} {out.shape}; "
            f"it must return uint8 of shape ({h}, {w}, 3)"
        )
    cx, cy = _pixel_centres(x0, y0, w, h, d)
    strokes = [(m, window) for m in pen_marks if (window := _window_slices(m.bbox, cx, cy))]
    if strokes:
        out = out.copy()  # the painter's array may be shared (a cached glass tile)
    for mark, (rows, cols) in strokes:
        out[rows, cols][mark.mask(cx[cols], cy[rows])] = mark.color
    return out


def render(
    x0: int,
    y0: int,
    width: int,
    height: int,
    downsample: int = 1,
    *,
    regions: Sequence[Region] = (),
    pen_marks: Sequence[PenMark] = (),
    background: RGB = GLASS,
    seed: int = 0,
) -> np.ndarray:
    """What ``write_slide`` writes (before JPEG) for a level-0 window, uint8 (height, width, 3).

    ``(x0, y0)`` is the window's top-left in level-0 pixels; ``width``/``height`` are output
    pixels at ``downsample`` (each covers ``downsample`` x ``downsample`` level-0 pixels).
    """
    painter = partial(_paint_regions, tuple(regions), tuple(background), seed)
    return np.array(_paint(painter, pen_marks, x0, y0, width, height, downsample))


def tissue_fraction(
    regions: Sequence[Region],
    x: int,
    y: int,
    width: int,
    height: int,
    *,
    pen_marks: Sequence[PenMark] = (),
) -> float:
    """Exact fraction of the level-0 box ``[x, x+width) x [y, y+height)`` that is tissue.

    A pixel is tissue when the last region covering its centre is not a hole and no pen
    mark covers it. Rasterises the box at level 0, so keep boxes tile-sized (≲ 4096² px).
    """
    if width <= 0 or height <= 0:
        raise InvalidParameterError(f"box must be > 0 px, got {width} x {height}")
    cx, cy = _pixel_centres(x, y, width, height, 1)
    tissue = np.zeros((height, width), dtype=bool)

    def paint(shape: Region | PenMark, value: bool) -> None:
        window = _window_slices(shape.bbox, cx, cy)
        if window is not None:
            rows, cols = window
            tissue[rows, cols][shape.mask(cx[cols], cy[rows])] = value

    for region in regions:
        paint(region, not region.hole)
    for mark in pen_marks:
        paint(mark, False)
    return float(tissue.mean())


def _level_sizes(width: int, height: int, downsamples: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(downsample, level_width, level_height)`` for each usable downsample."""
    if not downsamples or downsamples[0] != 1:
        raise InvalidParameterError(f"downsamples must start with 1, got {tuple(downsamples)}")
    if any(int(b) != b or b <= a for a, b in zip(downsamples, downsamples[1:], strict=False)):
        raise InvalidParameterError(
            f"downsamples must be strictly increasing integers, got {tuple(downsamples)}"
        )
    return [
        (int(d), math.ceil(width / d), math.ceil(height / d))
        for d in downsamples
        if d <= min(width, height)
    ]


def _check_parameters(
    width: int,
    height: int,
    mpp: float | None,
    flavour: str,
    tile_size: int,
    jpeg_quality: int,
    objective_power: float | None,
    regions: Sequence[Region],
    painter: Painter | None,
) -> None:
    if width <= 0 or height <= 0:
        raise InvalidParameterError(f"slide size must be > 0 px, got {width} x {height}")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise InvalidParameterError(f"mpp must be > 0 µm/px or None, got {mpp}")
    if flavour not in ("tiff", "svs"):
        raise InvalidParameterError(f"flavour must be 'tiff' or 'svs', got {flavour!r}")
    if tile_size < 16 or tile_size % 16:
        raise InvalidParameterError(
            f"tile_size must be a positive multiple of 16 px (JPEG 2x2 blocks), got {tile_size}"
        )
    if not 1 <= jpeg_quality <= 100:
        raise InvalidParameterError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if objective_power is not None:
        if flavour != "svs":
            raise InvalidParameterError(
                "a generic TIFF has no objective-power field; use flavour='svs' to write AppMag"
            )
        if not (math.isfinite(objective_power) and objective_power > 0):
            raise InvalidParameterError(f"objective_power must be > 0, got {objective_power}")
    if painter is not None and regions:
        raise InvalidParameterError("pass either regions or painter, not both")


class _TileEncoder:
    """JPEG-encodes tiles the way tifffile's ``compression='jpeg'`` does (YCbCr, 2x2).

    Tiles of a single colour are encoded once and their bytes reused.
    """

    def __init__(self, quality: int) -> None:
        self.quality = quality
        self._flat: dict[bytes, bytes] = {}

    def __call__(self, rgb: np.ndarray) -> bytes:
        flat = np.ascontiguousarray(rgb).reshape(-1)
        if not np.array_equal(flat[3:], flat[:-3]):  # every pixel equals its left neighbour
            return self._encode(rgb)
        key = flat[:3].tobytes()
        if key not in self._flat:
            self._flat[key] = self._encode(rgb)
        return self._flat[key]

    def _encode(self, rgb: np.ndarray) -> bytes:
        return bytes(
            imagecodecs.jpeg_encode(
                rgb,
                level=self.quality,
                colorspace="RGB",
                outcolorspace="YCBCR",
                subsampling=(2, 2),
            )
        )


def _tiles(
    paint: Callable[[int, int, int, int, int], np.ndarray],
    encode: _TileEncoder,
    level: tuple[int, int, int],
    tile_size: int,
    pool: ThreadPoolExecutor,
) -> Iterator[bytes]:
    """Encoded tiles of one level, row-major, rendered on demand a few tiles ahead."""
    d, level_w, level_h = level

    def tile(x: int, y: int) -> bytes:
        return encode(paint(x * d, y * d, tile_size, tile_size, d))

    ahead: deque[Future[bytes]] = deque()
    for ty in range(0, level_h, tile_size):
        for tx in range(0, level_w, tile_size):
            ahead.append(pool.submit(tile, tx, ty))
            if len(ahead) > _TILES_AHEAD:
                yield ahead.popleft().result()
    while ahead:
        yield ahead.popleft().result()


def _aperio_description(summary: str, mpp: float | None, objective_power: float | None) -> str:
    """An Aperio ImageDescription: header line, then ``summary|AppMag = …|MPP = …``."""
    fields = [summary]
    if objective_power is not None:
        fields.append(f"AppMag = {objective_power:g}")
    if mpp is not None:
        fields.append(f"MPP = {mpp:.6g}")
    fields.append("ScanScope ID = WSI-TESTING")
    return f"{_APERIO_HEADER}\r\n" + "|".join(fields)


def _resolution_tags(mpp: float | None, downsample: float) -> dict:
    """tifffile keywords for the resolution of a level: pixels per cm, or unit none."""
    if mpp is None:
        return {"resolution": (1, 1), "resolutionunit": "NONE"}
    pixels_per_cm = 1e4 / (mpp * downsample)
    return {"resolution": (pixels_per_cm, pixels_per_cm), "resolutionunit": "CENTIMETER"}


def _label_image() -> np.ndarray:
    """A white label with a black bar pattern (a stand-in for a barcode), uint8 RGB."""
    bars = (np.arange(_LABEL_SIZE_PX) // 8) % 3 == 0
    label = np.full((_LABEL_SIZE_PX, _LABEL_SIZE_PX, 3), 255, np.uint8)
    label[32:128, bars] = 0
    return label


def _write_label_and_macro(
    tif: tifffile.TiffWriter, paint: Painter, width: int, height: int
) -> None:
    """Aperio's associated images: ``label`` (LZW) then ``macro`` (JPEG), both stripped."""
    tif.write(
        _label_image(),
        compression="lzw",
        photometric="rgb",
        subfiletype=1,
        description=f"{_APERIO_HEADER}\r\nlabel {_LABEL_SIZE_PX}x{_LABEL_SIZE_PX}",
        **_PLAIN,
    )
    d = max(1, math.ceil(max(width, height) / _MACRO_MAX_SIDE))
    w, h = math.ceil(width / d), math.ceil(height / d)
    tif.write(
        paint(0, 0, w, h, d),
        subfiletype=9,
        description=f"{_APERIO_HEADER}\r\nmacro {w}x{h}",
        **_JPEG,
        **_PLAIN,
    )


def write_slide(
    path: str | Path,
    *,
    width: int,
    height: int,
    mpp: float | None = 0.25,
    regions: Sequence[Region] = (),
    pen_marks: Sequence[PenMark] = (),
    flavour: Literal["tiff", "svs"] = "tiff",
    tile_size: int = 256,
    downsamples: Sequence[int] = (1, 4, 16),
    jpeg_quality: int = 90,
    objective_power: float | None = None,
    background: RGB = GLASS,
    painter: Painter | None = None,
    seed: int = 0,
    associated_images: bool = False,
) -> Path:
    """Write a pyramidal, tiled, JPEG TIFF slide of ``width`` x ``height`` level-0 pixels.

    Levels: one per downsample whose level is at least 1 px on each side (level size =
    ``ceil(width / d) x ceil(height / d)``), all tiled ``tile_size``. ``mpp`` (µm/px at
    level 0) goes to the resolution tags (unit cm) and, for ``"svs"``, to ``MPP`` in the
    description; ``mpp=None`` writes no physical scale at all. ``objective_power`` (svs
    only) writes ``AppMag``. Content comes from ``regions`` over ``background`` glass, or
    from ``painter`` (see ``Painter``) instead; ``pen_marks`` are drawn on top of either.
    ``seed`` fixes the tissue texture. ``associated_images`` (svs only) adds a ``label``
    and a ``macro`` image after the pyramid. BigTIFF is used when the pixels exceed 4 GiB
    uncompressed. Returns the path; on any error no file is left behind.
    """
    _check_parameters(
        width, height, mpp, flavour, tile_size, jpeg_quality, objective_power, regions, painter
    )
    if associated_images and flavour != "svs":
        raise InvalidParameterError("associated_images needs flavour='svs'")
    levels = _level_sizes(width, height, downsamples)
    source = painter or partial(_paint_regions, tuple(regions), tuple(background), seed)
    paint = partial(_paint, source, tuple(pen_marks))
    encode = _TileEncoder(jpeg_quality)
    svs = flavour == "svs"
    bigtiff = sum(w * h * 3 for _, w, h in levels) >= _BIGTIFF_ABOVE_BYTES
    full = f"{width}x{height} [0,0 {width}x{height}] ({tile_size}x{tile_size})"
    path = Path(path)
    try:
        with (
            ThreadPoolExecutor(_WORKERS) as pool,
            tifffile.TiffWriter(path, bigtiff=bigtiff) as tif,
        ):
            for level in levels:
                d, level_w, level_h = level
                reduced = "" if d == 1 else f" -> {level_w}x{level_h}"
                summary = f"{full}{reduced} JPEG/RGB Q={jpeg_quality}"
                tif.write(
                    _tiles(paint, encode, level, tile_size, pool),
                    shape=(level_h, level_w, 3),
                    dtype=np.uint8,
                    tile=(tile_size, tile_size),
                    subfiletype=0 if d == 1 else 1,
                    description=_aperio_description(summary, mpp, objective_power) if svs else None,
                    **_JPEG,
                    **_resolution_tags(mpp, d),
                    **_PLAIN,
                )
                if svs and d == 1:  # Aperio: the thumbnail is the second image, stripped
                    thumb_d = max(1, math.ceil(max(width, height) / THUMBNAIL_MAX_SIDE))
                    thumb_w, thumb_h = math.ceil(width / thumb_d), math.ceil(height / thumb_d)
                    summary = f"{width}x{height} -> {thumb_w}x{thumb_h} - "
                    tif.write(
                        paint(0, 0, thumb_w, thumb_h, thumb_d),
                        rowsperstrip=16,
                        description=_aperio_description(summary, mpp, objective_power),
                        **_JPEG,
                        **_resolution_tags(mpp, thumb_d),
                        **_PLAIN,
                    )
            if associated_images:
                _write_label_and_macro(tif, paint, width, height)
    except BaseException:
        path.unlink(missing_ok=True)  # never leave a half-written slide behind
        raise
    return path


def write_flat_image(path: str | Path, rgb: np.ndarray, mpp: float | None = None) -> Path:
    """Write ``rgb`` (uint8, (H, W, 3)) as a flat, strip-based, uncompressed TIFF.

    openslide rejects such files (not tiled), which exercises the fallback reader. ``mpp``
    (µm/px) goes to the resolution tags in pixels per centimetre; None writes unit none.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InvalidParameterError(f"rgb must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise InvalidParameterError(f"mpp must be > 0 µm/px or None, got {mpp}")
    if mpp is None:
        scale = {"resolution": (1, 1), "resolutionunit": "NONE"}
    else:
        scale = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    path = Path(path)
    tifffile.imwrite(
        path,
        rgb,
        photometric="rgb",
        compression=None,
        metadata=None,
        software="wsi.synthetic.slides",
        **scale,
    )
    return path
