"""Tissue masks: which parts of a slide hold tissue, found on a low-resolution thumbnail.

The mask is computed at about ``mask_mpp`` µm per mask pixel (8 µm/px by default), so a
100k x 80k px slide at 0.25 µm/px gives a ~3k x 2.5k mask. Tissue is what is coloured
(HSV saturation above an Otsu threshold held within fixed bounds, so that glass alone
never yields tissue) or very dark; pen ink (green, blue, black) is removed by hue and
value rules; the mask is cleaned by closing and opening with radii in µm, fragments below
a minimum area are dropped and holes below a minimum area are filled (larger holes stay
out of the mask).

Coordinates leaving this module are level-0 pixels ``(x, y)``: mask pixel ``(row, col)``
covers level-0 ``[col * downsample, (col + 1) * downsample)`` in x, likewise in y.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Protocol

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import approximate_polygon, find_contours

from wsi.errors import InvalidParameterError, SlideReadError
from wsi.morphology import (
    box_mean,
    close,
    dilate,
    fill_small_holes,
    open_,
    remove_small_objects,
    summed_area_table,
    value_counts,
)
from wsi.options import (
    DEFAULT_CLOSE_RADIUS_UM,
    DEFAULT_MASK_MPP,
    DEFAULT_MAX_MASK_SIDE,
    DEFAULT_MIN_HOLE_AREA_UM2,
    DEFAULT_MIN_TISSUE_AREA_UM2,
    DEFAULT_OPEN_RADIUS_UM,
    TissueOptions,
)
from wsi.options import non_negative as _non_negative
from wsi.options import positive_finite as _positive_finite
from wsi.viz.geojson import feature_collection, polygon_feature

NO_MPP_LONG_SIDE = 2048
"""Long side (mask pixels) of the mask of a slide whose mpp is unknown."""

MIN_SATURATION_THRESHOLD = 0.05
"""Floor on the Otsu saturation threshold: white-balanced glass stays below it."""

MAX_SATURATION_THRESHOLD = 0.15
"""Ceiling on the Otsu threshold, so that pale stroma is kept when a slide is all tissue
(Otsu then splits pink from purple instead of tissue from glass)."""

DARK_VALUE = 0.3
"""Pixels whose brightest channel is below this fraction of white absorb strongly: tissue
(folds, dense stain) unless ``remove_pen``, which treats them as black ink."""

BLUE_PEN_MIN_SATURATION = 0.35
"""Blue-cyan pixels (hue 180°-240°) more saturated than this are blue ink; IHC
counterstain of that hue stays below ~0.3 at thumbnail scale."""

_SMOOTH_RADIUS_UM = 8.0
_PEN_MIN_RADIUS_UM = 24.0
_PEN_MARGIN_UM = 16.0
_GLASS_PERCENTILE = 99.0
_GLASS_MIN_VALUE = 0.6
_GLASS_MAX_SATURATION = 0.08


class ThumbnailSource(Protocol):
    """What :func:`detect_tissue` needs from a slide (``wsi.io.slide.Slide`` provides it)."""

    @property
    def name(self) -> str: ...

    @property
    def dimensions(self) -> tuple[int, int]: ...

    @property
    def mpp_or_none(self) -> float | None: ...

    def read_thumbnail(self, downsample: float) -> np.ndarray: ...


@dataclass(eq=False)
class TissueMask:
    """A boolean tissue mask of a slide at a known downsample.

    ``array`` is ``(h, w)`` bool, True = tissue; ``downsample`` is level-0 pixels per mask
    pixel (same in x and y); ``mpp`` is µm per mask pixel (None when the slide's mpp is
    unknown); ``level0_size`` is the slide's ``(width, height)`` in level-0 pixels.
    The array is stored read-only (a copy of what was given). ``thumbnail`` is the RGB
    image the mask was computed on (same shape), kept for QC pictures; ``params`` the
    detection parameters (for provenance).
    """

    array: np.ndarray
    downsample: float
    mpp: float | None
    level0_size: tuple[int, int]
    thumbnail: np.ndarray | None = field(default=None, repr=False)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        array = np.array(self.array, dtype=bool)
        if array.ndim != 2 or array.size == 0:
            raise InvalidParameterError(
                f"a tissue mask must be a non-empty 2-D array, got shape {array.shape}"
            )
        array.flags.writeable = False
        self.array = array
        self.downsample = _positive_finite(self.downsample, "downsample")
        if self.mpp is not None:
            self.mpp = _positive_finite(self.mpp, "mpp")
        width, height = (int(v) for v in self.level0_size)
        if width <= 0 or height <= 0:
            raise InvalidParameterError(
                f"level0_size must be positive (width, height), got {self.level0_size}"
            )
        self.level0_size = (width, height)

    def __repr__(self) -> str:
        h, w = self.array.shape
        scale = f"{self.mpp:.3g} µm/px, " if self.mpp is not None else ""
        return (
            f"TissueMask({w}x{h} px, {scale}downsample {self.downsample:.4g}, "
            f"tissue {self.tissue_fraction:.1%})"
        )

    def _repr_png_(self) -> bytes:
        """The thumbnail with the tissue outline, as notebooks show it."""
        from wsi.viz.qc import png_bytes, qc_image

        base = (
            self.thumbnail
            if self.thumbnail is not None
            else np.where(self.array[..., None], np.uint8(200), np.uint8(255)).repeat(3, axis=2)
        )
        return png_bytes(
            qc_image(
                base,
                self.downsample,
                tissue_mask=self.array,
                mask_downsample=None,
                coords=np.zeros((0, 2), np.int64),
                tile_size_level0=1.0,
            )
        )

    @property
    def tissue_fraction(self) -> float:
        """Fraction of mask pixels that are tissue, in [0, 1]."""
        return float(np.count_nonzero(self.array)) / self.array.size

    @cached_property
    def _integral(self) -> np.ndarray:
        """Summed-area table, shape ``(h + 1, w + 1)``, zero first row and column."""
        return summed_area_table(self.array)

    def fraction_in_boxes(self, coords: np.ndarray, size_level0: float) -> np.ndarray:
        """Fraction of each square box covered by tissue, ``(N,)`` float32 in [0, 1].

        ``coords`` is ``(N, 2)`` top-left ``[x, y]`` in level-0 pixels and ``size_level0``
        the box side in level-0 pixels. Mask pixels are treated as uniform squares, so
        boxes that cut through a mask pixel get the covered part of it (exact area
        integral of the mask). Parts of a box outside the slide count as non-tissue.
        Vectorised over a summed-area table: no Python loop over the boxes.
        """
        size = _positive_finite(size_level0, "size_level0")
        boxes = np.asarray(coords)
        if boxes.ndim != 2 or boxes.shape[1] != 2:
            raise InvalidParameterError(f"coords must have shape (N, 2), got {boxes.shape}")
        if boxes.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        boxes = boxes.astype(np.float64)
        width, height = self.level0_size
        scale = 1.0 / self.downsample
        x0 = np.clip(boxes[:, 0], 0, width) * scale
        x1 = np.clip(boxes[:, 0] + size, 0, width) * scale
        y0 = np.clip(boxes[:, 1], 0, height) * scale
        y1 = np.clip(boxes[:, 1] + size, 0, height) * scale
        area = (
            self._area_to(x1, y1)
            - self._area_to(x0, y1)
            - self._area_to(x1, y0)
            + self._area_to(x0, y0)
        )
        fraction = area / (size * scale) ** 2
        return np.clip(fraction, 0.0, 1.0).astype(np.float32)

    def _area_to(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Tissue area (mask px²) in ``[0, u) x [0, v)``, ``u``/``v`` in mask pixels.

        The integral of a piecewise-constant image is bilinear inside each pixel, so the
        bilinear interpolation of the summed-area table is exact.
        """
        table = self._integral
        h, w = self.array.shape
        u = np.clip(u, 0, w)
        v = np.clip(v, 0, h)
        iu = np.minimum(np.floor(u).astype(np.intp), w - 1)
        iv = np.minimum(np.floor(v).astype(np.intp), h - 1)
        fu = u - iu
        fv = v - iv
        top = table[iv, iu] * (1 - fu) + table[iv, iu + 1] * fu
        bottom = table[iv + 1, iu] * (1 - fu) + table[iv + 1, iu + 1] * fu
        return top * (1 - fv) + bottom * fv

    def polygons(self, simplify_px: float = 1.0) -> list[list[np.ndarray]]:
        """Tissue outlines in level-0 pixels, one entry per connected tissue component.

        Each entry is ``[exterior, hole, hole, ...]``; each ring is a closed ``(K, 2)``
        float array of ``(x, y)`` level-0 coordinates (first point repeated last), the
        exterior counter-clockwise and holes clockwise as GeoJSON wants (positive/negative
        shoelace area in x, y). ``simplify_px`` is the Douglas-Peucker tolerance in mask
        pixels (0 keeps every contour vertex). Components are 8-connected.
        """
        tolerance = float(simplify_px)
        if not math.isfinite(tolerance) or tolerance < 0:
            raise InvalidParameterError(f"simplify_px must be >= 0, got {simplify_px}")
        labels, _ = ndi.label(self.array, structure=np.ones((3, 3), dtype=bool))
        result = []
        for index, region in enumerate(ndi.find_objects(labels), start=1):
            if region is None:
                continue
            component = np.pad(labels[region] == index, 1).astype(np.uint8)
            offset = np.array([region[0].start - 1, region[1].start - 1], dtype=np.float64)
            rings = [
                self._ring_to_level0(contour + offset, tolerance)
                for contour in find_contours(component, 0.5, fully_connected="high")
            ]
            rings = [ring for ring in rings if len(ring) >= 4]
            if not rings:
                continue
            areas = [_signed_area(ring) for ring in rings]
            outer = int(np.argmax(np.abs(areas)))
            exterior = rings[outer] if areas[outer] > 0 else rings[outer][::-1].copy()
            holes = [
                ring if area < 0 else ring[::-1].copy()
                for i, (ring, area) in enumerate(zip(rings, areas, strict=True))
                if i != outer and area != 0
            ]
            result.append([exterior, *holes])
        return result

    def _ring_to_level0(self, contour_rc: np.ndarray, tolerance: float) -> np.ndarray:
        """A ``(row, col)`` contour in mask pixels -> closed ``(x, y)`` level-0 ring."""
        if tolerance > 0:
            contour_rc = approximate_polygon(contour_rc, tolerance=tolerance)
        xy = (contour_rc[:, ::-1] + 0.5) * self.downsample
        if len(xy) and not np.array_equal(xy[0], xy[-1]):
            xy = np.vstack([xy, xy[:1]])
        return xy

    def to_geojson(self) -> dict[str, Any]:
        """A GeoJSON FeatureCollection of the tissue polygons (level-0 pixels) for QuPath.

        One ``annotation`` feature classified ``Tissue`` per component; holes are the
        interior rings of its polygon.
        """
        features = [
            polygon_feature(rings, object_type="annotation", classification="Tissue")
            for rings in self.polygons()
        ]
        return feature_collection(features)


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed ``(x, y)`` ring: > 0 counter-clockwise (y up)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def tissue_mask_from_rgb(
    rgb: np.ndarray,
    *,
    mpp: float | None = None,
    threshold: float | None = None,
    remove_pen: bool = True,
    min_tissue_area_um2: float = DEFAULT_MIN_TISSUE_AREA_UM2,
    min_hole_area_um2: float = DEFAULT_MIN_HOLE_AREA_UM2,
    close_radius_um: float = DEFAULT_CLOSE_RADIUS_UM,
    open_radius_um: float = DEFAULT_OPEN_RADIUS_UM,
) -> np.ndarray:
    """Tissue mask of an RGB image (a slide thumbnail), ``(h, w)`` bool, True = tissue.

    ``rgb`` is ``(h, w, 3)`` uint8 with background composited to white. ``mpp`` is µm per
    pixel of ``rgb``; when None, µm sizes are converted as if one pixel were
    ``DEFAULT_MASK_MPP`` µm (i.e. areas and radii are in pixels of a typical thumbnail).
    ``threshold`` is the threshold in [0, 1] on HSV saturation (white-balanced, averaged
    over ~24 µm); None picks it by Otsu, clamped to
    ``[MIN_SATURATION_THRESHOLD, MAX_SATURATION_THRESHOLD]``.
    ``remove_pen`` drops green, blue and black ink (turn it off for stains that are
    green or blue by design, e.g. Masson's trichrome). Red ink is not recognised.
    """
    image = np.ascontiguousarray(rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
        raise InvalidParameterError(
            f"rgb must be a non-empty (h, w, 3) uint8 array, got {image.shape} {image.dtype}"
        )
    pixel_um = DEFAULT_MASK_MPP if mpp is None else _positive_finite(mpp, "mpp")
    if threshold is not None:
        threshold = float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise InvalidParameterError(f"threshold must be in [0, 1], got {threshold}")
    min_tissue_px = _non_negative(min_tissue_area_um2, "min_tissue_area_um2") / pixel_um**2
    min_hole_px = _non_negative(min_hole_area_um2, "min_hole_area_um2") / pixel_um**2
    close_px = round(_non_negative(close_radius_um, "close_radius_um") / pixel_um)
    open_px = round(_non_negative(open_radius_um, "open_radius_um") / pixel_um)

    tables = _white_balance_tables(image)
    saturation, dark = _saturation_and_dark(image, tables)
    saturation = box_mean(saturation, round(_SMOOTH_RADIUS_UM / pixel_um))

    pen = np.zeros_like(dark)
    if remove_pen:
        pen = _pen_ink_in_bands(image, tables, saturation, dark)
        if pen.any():
            pen = open_(pen, round(_PEN_MIN_RADIUS_UM / pixel_um))
    if threshold is None:
        usable = ~(pen | dark)
        threshold = _otsu_saturation(saturation[::2, ::2][usable[::2, ::2]])
    raw = ((saturation > threshold) | dark) & ~pen
    if pen.any():
        pen = dilate(pen, round(_PEN_MARGIN_UM / pixel_um))

    mask = close(raw, close_px)
    mask = open_(mask, open_px)
    mask = fill_small_holes(mask, min_hole_px)
    mask &= ~pen
    return remove_small_objects(mask, min_tissue_px)


_BAND_PIXELS = 65_536
"""Pixels per band of rows in the colour steps: a band's float32 planes stay in the CPU's
cache (whole-image planes measured ~1.4x slower, memory-bound, on a busy 2-core machine)."""


def _bands(image: np.ndarray) -> range:
    """First rows of the bands of rows ``image`` is processed in (see :data:`_BAND_PIXELS`)."""
    return range(0, image.shape[0], _band_rows(image))


def _band_rows(image: np.ndarray) -> int:
    return max(1, _BAND_PIXELS // max(image.shape[1], 1))


def _white_balance_tables(image: np.ndarray) -> list[np.ndarray]:
    """Per channel, a 256-entry float32 table: uint8 level -> level / glass level in [0, 1].

    The glass colour is the mean of the brightest 1% of pixels (brightness R + G + B); it is
    divided out only when it looks like glass (bright and nearly grey), so an all-tissue
    image is left alone.
    """
    brightness = np.empty(image.shape[:2], np.uint16)
    rows = _band_rows(image)
    for r0 in _bands(image):
        red, green, blue = cv2.split(image[r0 : r0 + rows])
        total = cv2.add(red, green, dtype=cv2.CV_16U)
        brightness[r0 : r0 + rows] = cv2.add(total, blue, dtype=cv2.CV_16U)
    cumulative = np.cumsum(value_counts(brightness, 766))
    cutoff = int(np.searchsorted(cumulative, cumulative[-1] * _GLASS_PERCENTILE / 100.0))
    brightest = (brightness >= cutoff).view(np.uint8)
    glass = np.array(cv2.mean(image, mask=brightest)[:3]) / 255.0
    glass_saturation = (glass.max() - glass.min()) / max(glass.max(), 1e-6)
    if glass.min() < _GLASS_MIN_VALUE or glass_saturation > _GLASS_MAX_SATURATION:
        glass = np.ones(3)
    levels = np.arange(256, dtype=np.float32)
    return [
        np.minimum(levels * np.float32(1.0 / (255.0 * white)), np.float32(1.0)) for white in glass
    ]


def _balanced_planes(band: np.ndarray, tables: list[np.ndarray]) -> list[np.ndarray]:
    """White-balanced red, green and blue float32 planes of a band of rows."""
    return [cv2.LUT(plane, table) for plane, table in zip(cv2.split(band), tables, strict=True)]


def _saturation_and_dark(
    image: np.ndarray, tables: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation (float32) and ``value < DARK_VALUE`` (bool) of the white-balanced
    image, computed band by band."""
    saturation = np.empty(image.shape[:2], np.float32)
    dark = np.empty(image.shape[:2], bool)
    rows = _band_rows(image)
    for r0 in _bands(image):
        red, green, blue = _balanced_planes(image[r0 : r0 + rows], tables)
        value = cv2.max(cv2.max(red, green), blue)
        chroma = cv2.subtract(value, cv2.min(cv2.min(red, green), blue))
        # chroma is 0 wherever value is: dividing by a floored value equals np.divide(where=)
        saturation[r0 : r0 + rows] = chroma / np.maximum(value, np.float32(1e-30))
        dark[r0 : r0 + rows] = value < DARK_VALUE
    return saturation, dark


def _pen_ink_in_bands(
    image: np.ndarray, tables: list[np.ndarray], saturation: np.ndarray, dark: np.ndarray
) -> np.ndarray:
    """:func:`_pen_ink` of the white-balanced image, band by band (planes re-derived)."""
    pen = np.empty(image.shape[:2], bool)
    rows = _band_rows(image)
    for r0 in _bands(image):
        band = slice(r0, r0 + rows)
        red, green, blue = _balanced_planes(image[band], tables)
        pen[band] = _pen_ink(red, green, blue, saturation[band], dark[band])
    return pen


def _pen_ink(
    red: np.ndarray,
    green: np.ndarray,
    blue: np.ndarray,
    saturation: np.ndarray,
    dark: np.ndarray,
) -> np.ndarray:
    """Pixels of ink colour: green (hue 60°-180°), saturated blue (180°-240°) or black.

    The caller keeps only regions wider than ~50 µm (ink strokes), so that isolated dark
    or bluish pixels in dense tissue are not mistaken for ink.
    """
    green_ink = (saturation > MIN_SATURATION_THRESHOLD) & (green > red) & (green >= blue)
    blue_ink = (saturation > BLUE_PEN_MIN_SATURATION) & (blue > green) & (green >= red)
    return green_ink | blue_ink | dark


def _otsu_saturation(saturation: np.ndarray) -> float:
    """Otsu threshold of saturation values (a 1-in-4 sample), clamped to safe bounds."""
    counts = np.bincount((saturation * 255 + 0.5).astype(np.uint8).ravel(), minlength=256)
    if np.count_nonzero(counts) < 2:
        return MIN_SATURATION_THRESHOLD
    otsu = float(threshold_otsu(hist=(counts, np.arange(256) / 255.0)))
    return min(max(otsu, MIN_SATURATION_THRESHOLD), MAX_SATURATION_THRESHOLD)


def mask_downsample(
    level0_size: tuple[int, int],
    mpp: float | None,
    *,
    mask_mpp: float = DEFAULT_MASK_MPP,
    max_side: int = DEFAULT_MAX_MASK_SIDE,
) -> float:
    """Level-0 pixels per mask pixel for a slide of ``level0_size`` (width, height).

    ``mask_mpp / mpp`` when ``mpp`` (µm/px at level 0) is known, else whatever gives a
    long side of ``NO_MPP_LONG_SIDE``; never below 1 (no upsampling) and never so small
    that the mask's long side exceeds ``max_side`` pixels.
    """
    mask_mpp = _positive_finite(mask_mpp, "mask_mpp")
    if int(max_side) < 1:
        raise InvalidParameterError(f"max_side must be >= 1 pixel, got {max_side}")
    long_side = max(int(v) for v in level0_size)
    if mpp is None:
        downsample = long_side / min(NO_MPP_LONG_SIDE, int(max_side))
    else:
        downsample = mask_mpp / _positive_finite(mpp, "mpp")
    return max(downsample, long_side / int(max_side), 1.0)


def detect_tissue(
    slide: ThumbnailSource, options: TissueOptions | None = None, **changes: Any
) -> TissueMask:
    """Tissue mask of a slide, computed on a thumbnail at ~``mask_mpp`` µm per mask pixel.

    ``options`` (default :class:`TissueOptions`) with ``changes`` to its fields applied, e.g.
    ``detect_tissue(slide, remove_pen=False)``. The downsample is given by
    :func:`mask_downsample`. When the slide's mpp is unknown the mask's long side is ~2048 px
    and µm sizes are converted as if a mask pixel were ``mask_mpp`` µm. The other options
    are those of :func:`tissue_mask_from_rgb`. A slide without tissue gives an all-False
    mask (``tissue_fraction == 0``).
    """
    opts = (options or TissueOptions()).with_changes(**changes)
    opts.check()
    slide_mpp = slide.mpp_or_none
    downsample = mask_downsample(
        slide.dimensions, slide_mpp, mask_mpp=opts.mask_mpp, max_side=opts.max_side
    )
    thumbnail = np.asarray(slide.read_thumbnail(downsample))
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3 or thumbnail.dtype != np.uint8:
        raise SlideReadError(
            f"{slide.name}: thumbnail is {thumbnail.shape} {thumbnail.dtype}, expected "
            "(h, w, 3) uint8; the slide reader is at fault, please report it",
            path=slide.name,
        )
    mask_mpp_actual = None if slide_mpp is None else slide_mpp * downsample
    array = tissue_mask_from_rgb(
        thumbnail,
        mpp=opts.mask_mpp if mask_mpp_actual is None else mask_mpp_actual,
        threshold=opts.threshold,
        remove_pen=opts.remove_pen,
        min_tissue_area_um2=opts.min_tissue_area_um2,
        min_hole_area_um2=opts.min_hole_area_um2,
        close_radius_um=opts.close_radius_um,
        open_radius_um=opts.open_radius_um,
    )
    return TissueMask(
        array=array,
        downsample=downsample,
        mpp=mask_mpp_actual,
        level0_size=tuple(slide.dimensions),
        thumbnail=thumbnail,
        params={"method": "saturation-otsu", "downsample": downsample, **asdict(opts)},
    )
