"""Binary morphology, box means, connected components and summed-area tables of
mask-sized images, over OpenCV.

The tissue mask (:mod:`wsi.tissue`) is a few million pixels; OpenCV's SIMD kernels do each
step here several times faster than scipy.ndimage (the reason this module exists: tiling a
resection slide is mostly this arithmetic). Every function takes and returns plain numpy
arrays; binary masks are ``bool`` (viewed as 0/1 bytes for OpenCV, no copy). Sizes are in
pixels of the array given; borders are stated per function. Tests pin each function to
scipy.ndimage / scikit-image on random images.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

__all__ = [
    "box_mean",
    "close",
    "dilate",
    "disk",
    "erode",
    "fill_small_holes",
    "open_",
    "remove_small_objects",
    "summed_area_table",
    "value_counts",
]


@lru_cache(maxsize=32)
def _disk(radius_px: int) -> np.ndarray:
    y, x = np.ogrid[-radius_px : radius_px + 1, -radius_px : radius_px + 1]
    footprint = (x * x + y * y <= radius_px * radius_px).astype(np.uint8)
    footprint.flags.writeable = False
    return footprint


def disk(radius_px: int) -> np.ndarray:
    """The disk ``dx² + dy² <= r²`` as a ``(2r + 1, 2r + 1)`` uint8 0/1 footprint
    (``skimage.morphology.disk``'s shape, tests pin it)."""
    return _disk(int(radius_px)).copy()


def _bytes(mask: np.ndarray) -> np.ndarray:
    """A bool mask as contiguous 0/1 uint8 (a view when it already is contiguous)."""
    return np.ascontiguousarray(mask, dtype=bool).view(np.uint8)


def dilate(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Binary dilation of ``mask`` (bool) by a disk of ``radius_px``; outside the image
    counts as background (scipy's ``binary_dilation`` with ``border_value=0``)."""
    if radius_px <= 0:
        return mask
    return cv2.dilate(_bytes(mask), _disk(int(radius_px))).view(bool)


def erode(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Binary erosion of ``mask`` (bool) by a disk of ``radius_px``; outside the image
    counts as foreground, so tissue touching the border is not eaten (scipy's
    ``binary_erosion`` with ``border_value=1``)."""
    if radius_px <= 0:
        return mask
    return cv2.erode(_bytes(mask), _disk(int(radius_px))).view(bool)


def open_(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Binary opening (erode, then dilate) by a disk: removes parts narrower than it."""
    return dilate(erode(mask, radius_px), radius_px)


def close(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Binary closing (dilate, then erode) by a disk: bridges gaps narrower than it."""
    return erode(dilate(mask, radius_px), radius_px)


def box_mean(image: np.ndarray, radius_px: int) -> np.ndarray:
    """Mean of float32 ``image`` over the ``(2r + 1)²`` square around each pixel, edges
    repeated (``scipy.ndimage.uniform_filter(image, 2r + 1, mode="nearest")`` to float32
    rounding)."""
    if radius_px <= 0:
        return image
    side = 2 * int(radius_px) + 1
    return cv2.blur(np.asarray(image, np.float32), (side, side), borderType=cv2.BORDER_REPLICATE)


_FLOAT_EXACT = 2**24
"""Counts up to this are exact in the float32 bins of ``cv2.calcHist``."""


def value_counts(image: np.ndarray, length: int) -> np.ndarray:
    """How many pixels of a uint8 or uint16 ``image`` hold each value ``0 .. length - 1``
    (int64, like ``np.bincount(image.ravel(), minlength=length)[:length]``).

    ``cv2.calcHist`` (exact while the image has at most 2²⁴ pixels) is several times faster
    than ``np.bincount``, which first widens the values to int64; bincount past that size.
    """
    if image.size > _FLOAT_EXACT or image.dtype not in (np.uint8, np.uint16):
        return np.bincount(image.ravel(), minlength=length)[:length]
    counts = cv2.calcHist([np.ascontiguousarray(image)], [0], None, [length], [0, length])
    return counts.ravel().astype(np.int64)


def _labels_and_areas(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Component labels (0 = outside ``mask``) and each label's pixel count.

    Labels are uint16 when fewer than 65,535 components (half the memory traffic of int32)
    and counted by :func:`value_counts`. ``connectedComponentsWithStats`` is not used: its
    bounding boxes and centroids cost ~4x the labelling itself.
    """
    image = _bytes(mask)
    try:
        count, labels = cv2.connectedComponents(image, connectivity=connectivity, ltype=cv2.CV_16U)
    except cv2.error:  # 65,535 components or more
        count, labels = cv2.connectedComponents(image, connectivity=connectivity, ltype=cv2.CV_32S)
    return labels, value_counts(labels, count)


def remove_small_objects(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    """``mask`` (bool) without its 8-connected components of fewer than ``min_area_px``
    pixels (``skimage.morphology.remove_small_objects`` with ``connectivity=2``)."""
    if min_area_px <= 1 or not mask.any():
        return mask
    labels, areas = _labels_and_areas(mask, 8)
    keep = areas >= min_area_px
    keep[0] = False
    if keep[1:].all():
        return mask
    return keep[labels]


def fill_small_holes(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    """``mask`` (bool) with its holes filled: 4-connected background regions that do not
    touch the image border and have fewer than ``min_area_px`` pixels (larger holes and
    background reaching the border stay background)."""
    if min_area_px <= 1:
        return mask
    labels, areas = _labels_and_areas(np.logical_not(mask), 4)
    fill = areas < min_area_px
    fill[0] = False  # label 0 is the mask itself
    fill[labels[[0, -1], :]] = False  # background reaching the border is not a hole
    fill[labels[:, [0, -1]]] = False
    if not fill.any():
        return mask
    return mask | fill[labels]


def summed_area_table(mask: np.ndarray) -> np.ndarray:
    """Summed-area table of a bool ``mask``, shape ``(h + 1, w + 1)``, zero first row and
    column; int32 (int64 past 2³¹ pixels): ``table[i, j]`` counts True pixels in
    ``mask[:i, :j]``."""
    if mask.size < 2**31:
        return cv2.integral(_bytes(mask), sdepth=cv2.CV_32S)
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    np.cumsum(mask, axis=0, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    return table
