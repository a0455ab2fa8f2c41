"""A stored tile is re-read (heatmap and subgroup mosaics) and exported at the place and size
it was encoded, from the coords file's attributes alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_reference_slide
from wsi.io.slide import open_slide
from wsi.pipeline.heatmap import read_stored_tile
from wsi.store.h5 import read_tile_file, write_coords
from wsi.store.tile_geometry import first_number, tile_level, tile_size_level0, tile_size_px
from wsi.tiling import tile


@pytest.mark.parametrize(
    ("attrs", "mpp_level0", "side"),
    [
        ({"tile_size_um": 112.0, "patch_size_level0": 449}, 0.25, 448.0),  # ours: exact µm
        ({"tile_size_um": 112.0, "patch_size_level0": 449}, None, 449.0),  # no mpp: stored px
        ({"patch_size": 256, "downsample": [4.0, 4.0]}, 0.25, 1024.0),  # CLAM: size × downsample
        ({}, None, 224.0),
    ],
)
def test_tile_side_in_level0_px(attrs: dict, mpp_level0: float | None, side: float) -> None:
    assert tile_size_level0(attrs, mpp_level0) == pytest.approx(side)


def test_bad_attribute_values_fall_back_instead_of_raising() -> None:
    assert first_number(np.array([np.nan, 1.0])) is None
    assert first_number("text") is None
    assert first_number(np.array([2.5, 2.5])) == 2.5
    assert tile_size_px({"target_patch_size": 0, "patch_size": 256}) == 256
    assert tile_level({"patch_level": 3}, level_count=2) == 1


def test_stored_tile_is_re_read_pixel_for_pixel(tmp_path: Path) -> None:
    slide_path = write_reference_slide(tmp_path / "s.tiff", 0.25)
    with open_slide(slide_path) as slide:
        grid = tile(slide, mpp=0.5, size=64)
        expected = [grid.read(i) for i in (0, len(grid) // 2, len(grid) - 1)]
        path = write_coords(tmp_path / "s.h5", grid.coords, grid.attrs(), {})
        stored = read_tile_file(path, features=False)
        again = [
            read_stored_tile(slide, stored.coords[i], stored.coords_attrs)
            for i in (0, len(grid) // 2, len(grid) - 1)
        ]
    for a, b in zip(expected, again, strict=True):
        assert a.shape == (64, 64, 3)
        assert np.array_equal(a, b)
