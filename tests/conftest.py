"""Shared fixtures: generated slides with known tissue and mpp, and the real data folder."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

# Tests run tiny tensors on a shared 2-core machine: one BLAS/OpenMP thread per process
# avoids spin-waiting threads (10x slower MIL steps were measured under load).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from wsi.synthetic.slides import Region, write_slide

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def read_manifest(out: Path) -> dict[str, dict[str, str]]:
    """``out/manifest.csv`` as {slide_id: row}."""
    with open(out / "manifest.csv", newline="") as f:
        return {row["slide_id"]: row for row in csv.DictReader(f)}


# The reference layout in µm: a 1024 x 768 µm slide with a 448 x 336 µm tissue block whose
# edges fall on multiples of the 112-µm tile (224 px at 0.5 µm/px): exactly 4 x 3 tiles.
SLIDE_UM = (1024.0, 768.0)
TISSUE_UM = (224.0, 112.0, 448.0, 336.0)  # x, y, width, height
TISSUE_TILES = 12


def write_reference_slide(
    path: Path,
    base_mpp: float,
    *,
    flavour: str = "tiff",
    downsamples=(1, 4, 16),
    texture: float = 0.0,
    write_mpp: bool = True,
) -> Path:
    """The reference layout scanned at ``base_mpp`` µm/px (sizes rounded to pixels)."""
    px = [round(v / base_mpp) for v in TISSUE_UM]
    return write_slide(
        path,
        width=round(SLIDE_UM[0] / base_mpp),
        height=round(SLIDE_UM[1] / base_mpp),
        mpp=base_mpp if write_mpp else None,
        regions=[Region(px[0], px[1], px[2], px[3], texture=texture)],
        flavour=flavour,
        downsamples=downsamples,
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch code on one thread: tiny models are fastest that way on a busy
    machine, and CPU training is bit-identical for one thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def slide_025(tmp_path: Path) -> Path:
    """Reference slide at 0.25 µm/px (40x), generic TIFF."""
    return write_reference_slide(tmp_path / "s025.tiff", 0.25)


@pytest.fixture
def slide_050(tmp_path: Path) -> Path:
    """Reference slide at 0.5 µm/px (20x), Aperio SVS."""
    return write_reference_slide(tmp_path / "s050.svs", 0.5, flavour="svs")


def run_together(procs: list, ready: list[Path], go: Path) -> list[str]:
    """Let child processes that wait for ``go`` start at once (each touches its ``ready``
    file when it has imported everything), then return their outputs."""
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    return [p.communicate(timeout=300)[0] for p in procs]
