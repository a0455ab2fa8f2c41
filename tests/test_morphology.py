"""Tests of wsi/morphology.py: each OpenCV-backed operation equals scipy.ndimage /
scikit-image on random masks and images (the libraries the tissue mask used before)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import morphology as skm

from wsi.morphology import (
    box_mean,
    close,
    dilate,
    disk,
    erode,
    fill_small_holes,
    open_,
    remove_small_objects,
    summed_area_table,
    value_counts,
)


def _blobs(seed: int, shape=(83, 121), density=0.45) -> np.ndarray:
    """A random bool mask with blobs, specks and holes of many sizes."""
    noise = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return ndi.uniform_filter(noise, 5) > density + 0.02 * (seed % 3)


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 5, 8])
def test_disk_is_skimage_disk(radius):
    assert np.array_equal(disk(radius), skm.disk(radius))


@pytest.mark.parametrize("radius", [1, 2, 3, 6])
@pytest.mark.parametrize("seed", [0, 1])
def test_dilate_erode_open_close_match_scipy(radius, seed):
    mask = _blobs(seed)
    footprint = skm.disk(radius).astype(bool)
    expected_dilated = ndi.binary_dilation(mask, footprint, border_value=0)
    expected_eroded = ndi.binary_erosion(mask, footprint, border_value=1)
    assert np.array_equal(dilate(mask, radius), expected_dilated)
    assert np.array_equal(erode(mask, radius), expected_eroded)
    expected_opened = ndi.binary_dilation(expected_eroded, footprint, border_value=0)
    expected_closed = ndi.binary_erosion(expected_dilated, footprint, border_value=1)
    assert np.array_equal(open_(mask, radius), expected_opened)
    assert np.array_equal(close(mask, radius), expected_closed)
    # the operations did something: the test would notice a no-op
    assert expected_dilated.sum() > mask.sum() > expected_eroded.sum()


def test_radius_zero_is_the_identity():
    mask = _blobs(3)
    for op in (dilate, erode, open_, close):
        assert np.array_equal(op(mask, 0), mask)


@pytest.mark.parametrize("min_area", [2, 10, 40, 200])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_remove_small_objects_matches_skimage(min_area, seed):
    mask = _blobs(seed)
    expected = skm.remove_small_objects(mask, max_size=min_area - 1, connectivity=2)
    got = remove_small_objects(mask, min_area)
    assert got.dtype == bool and np.array_equal(got, expected)
    if min_area == 40:
        assert got.sum() < mask.sum()  # some components were small enough to go


def _filled_reference(mask: np.ndarray, min_area: float) -> np.ndarray:
    """Holes (4-connected background not touching the border) below ``min_area`` filled,
    by scipy's labelling."""
    labels, _ = ndi.label(~mask)
    fill = np.bincount(labels.ravel()) < min_area
    fill[0] = False
    fill[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
    return mask | fill[labels]


@pytest.mark.parametrize("min_area", [2, 10, 40, 400])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fill_small_holes_matches_scipy_labels(min_area, seed):
    mask = _blobs(seed, density=0.5)
    got = fill_small_holes(mask, min_area)
    assert got.dtype == bool and np.array_equal(got, _filled_reference(mask, min_area))


def test_fill_small_holes_keeps_background_that_reaches_the_border():
    mask = np.ones((20, 30), bool)
    mask[5:8, 5:8] = False  # a 9-px hole: filled
    mask[0:3, 10:12] = False  # a 6-px notch on the top edge: not a hole
    mask[12:15, 27:30] = False  # a 9-px notch on the right edge: not a hole
    got = fill_small_holes(mask, 50)
    assert got[5:8, 5:8].all()
    assert not got[0:3, 10:12].any() and not got[12:15, 27:30].any()
    assert got.sum() == mask.sum() + 9


@pytest.mark.parametrize("radius", [1, 2, 4, 5])
def test_box_mean_matches_scipy_uniform_filter(radius):
    image = np.random.default_rng(radius).random((37, 53), dtype=np.float32)
    expected = ndi.uniform_filter(image, size=2 * radius + 1, mode="nearest")
    got = box_mean(image, radius)
    assert got.dtype == np.float32 and got.shape == image.shape
    assert np.abs(got - expected).max() < 1e-6


def test_summed_area_table_counts_true_pixels():
    mask = _blobs(4)
    table = summed_area_table(mask)
    assert table.shape == (84, 122) and table.dtype == np.int32
    assert not table[0].any() and not table[:, 0].any()
    assert np.array_equal(table[1:, 1:], mask.cumsum(0).cumsum(1))


@pytest.mark.parametrize("dtype, length", [(np.uint8, 256), (np.uint16, 766), (np.uint16, 5)])
def test_value_counts_equal_bincount(dtype, length):
    values = np.random.default_rng(length).integers(0, length, (61, 97)).astype(dtype)
    values[0, :7] = length - 1  # the last bin is counted too
    got = value_counts(values, length)
    assert got.dtype == np.int64 and got.shape == (length,)
    assert np.array_equal(got, np.bincount(values.ravel(), minlength=length))


def test_more_components_than_uint16_labels_hold():
    mask = np.zeros((520, 520), bool)
    mask[::2, ::2] = True  # 67,600 isolated pixels: past 65,535 uint16 labels
    assert not remove_small_objects(mask, 2).any()
    assert np.array_equal(remove_small_objects(mask, 1), mask)
    holes = ~mask
    holes[0], holes[-1], holes[:, 0], holes[:, -1] = True, True, True, True
    filled = fill_small_holes(holes, 2)  # every isolated background pixel inside is a hole
    assert filled[1:-1, 1:-1].all() and not holes[2:-2:2, 2:-2:2].any()
