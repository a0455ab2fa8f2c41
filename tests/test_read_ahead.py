"""Batches read on a thread ahead of the encoder: same pixels, same order, specs drawn by the
caller, bounded look-ahead, errors per batch; and an archive embedded with and without it
gives identical features."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest

from tests import tiny_encoders
from tests.conftest import TISSUE_TILES, write_reference_slide
from wsi.io.slide import Slide
from wsi.options import TileOptions
from wsi.pipeline import local_runner
from wsi.pipeline.embed import embed_archive
from wsi.pipeline.loader import BatchSpec, PatchReader
from wsi.pipeline.read_ahead import ReadAhead
from wsi.tiling import tile


@pytest.fixture
def grid(slide_025):
    with Slide(slide_025) as slide:
        yield tile(slide, 0.5, 224)


def test_batches_match_in_thread_reads_in_spec_order(grid):
    specs = list(BatchSpec.batches(0, grid, 5))
    expected = [PatchReader()[spec] for spec in specs]
    got = list(ReadAhead(specs, ahead=2))
    assert [b.spec.start for b in got] == list(range(0, TISSUE_TILES, 5))
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.error is None and not mine.failed.any()
        assert mine.patches.shape == (len(mine.spec.coords), 224, 224, 3)
        assert np.array_equal(mine.patches.numpy(), theirs.patches.numpy())


def test_specs_are_drawn_in_the_caller_thread_at_most_ahead_plus_one_early(grid):
    drawn: list[tuple[int, int]] = []  # (spec start, batches returned so far)
    returned = 0

    def specs():
        for spec in BatchSpec.batches(0, grid, 2):
            assert threading.current_thread() is threading.main_thread()
            drawn.append((spec.start, returned))
            yield spec

    for _ in ReadAhead(specs(), ahead=2):
        returned += 1
    assert returned == 6
    # spec k is drawn only once batch k - 3 has been returned: 3 in flight at most
    assert all(start // 2 - done <= 3 for start, done in drawn), drawn


def test_a_missing_slide_is_an_error_in_its_batch_not_an_exception(grid, tmp_path):
    good = next(BatchSpec.batches(0, grid, 4))
    bad = BatchSpec(
        1,
        str(tmp_path / "gone.tiff"),
        None,
        0,
        good.coords,
        good.size_level0,
        good.size,
        good.level,
    )
    first, second = ReadAhead([bad, good], ahead=1)
    assert first.patches is None and "gone.tiff" in first.error
    assert second.error is None and second.patches.shape[0] == 4


def test_an_error_in_the_specs_reaches_the_caller(grid):
    def specs():
        yield from BatchSpec.batches(0, grid, 4)
        raise RuntimeError("tiling failed")

    with pytest.raises(RuntimeError, match="tiling failed"):
        list(ReadAhead(specs()))


def test_ahead_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        ReadAhead([], ahead=0)


def test_archive_features_identical_with_and_without_read_ahead(tmp_path, monkeypatch):
    slides = tmp_path / "slides"
    slides.mkdir()
    for i, mpp in enumerate((0.25, 0.5)):
        write_reference_slide(slides / f"s{i}.tiff", mpp, texture=0.5)
    features = {}
    for ahead in (0, 2):
        monkeypatch.setattr(local_runner, "READ_AHEAD_BATCHES", ahead)
        out = tmp_path / f"out{ahead}"
        rows = embed_archive(
            [slides],
            out,
            encoder=tiny_encoders.tiny_encoder(),
            batch_size=5,
            tiling=TileOptions(0.5, 224),
            progress=False,
        )
        assert [row["status"] for row in rows] == ["ok", "ok"]
        features[ahead] = []
        for i in range(2):
            with h5py.File(out / "features" / "tiny" / f"s{i}.h5") as f:
                features[ahead].append(f["features"][:])
    for off, on in zip(features[0], features[2], strict=True):
        assert off.shape == (TISSUE_TILES, tiny_encoders.TINY_DIM)
        assert np.array_equal(off, on)
        assert np.ptp(off) > 0  # the tiles differ: a real comparison
