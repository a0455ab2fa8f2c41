"""Cost of nuclei detection per tile ÷ reading + encoding that tile (EfficientNet-Lite0, CPU).

    python benchmarks/tme.py [--repeats 5] [--batch-size 32]

On the real CRC tiles in ../shared/data/crc_val_he_7k_32 (224 px at 0.5 µm/px; random
pink-and-purple noise when the folder is absent). Each repeat times, one after the other,
``wsi.tme.detect_nuclei`` over every tile and reading (PNG decode) + encoding the same tiles
in batches; the medians of the alternating runs are printed with their ratio, so load from
other processes hits both alike. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from models.encoders import load_encoder
from wsi.tme import detect_nuclei

TILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "crc_val_he_7k_32"
MPP = 0.5


def read_tiles(paths: list[Path], n: int) -> list[np.ndarray]:
    """uint8 (224, 224, 3) tiles: decoded from ``paths`` (cycled to ``n``) or synthetic."""
    if not paths:
        rng = np.random.default_rng(0)
        return [rng.integers(60, 240, (224, 224, 3), np.uint8) for _ in range(n)]
    from PIL import Image

    tiles = []
    for i in range(n):
        with Image.open(paths[i % len(paths)]) as image:
            tiles.append(np.asarray(image.convert("RGB")))
    return tiles


def time_nuclei(tiles: list[np.ndarray]) -> float:
    """Seconds per tile of detect_nuclei."""
    start = time.perf_counter()
    for rgb in tiles:
        detect_nuclei(rgb, mpp=MPP)
    return (time.perf_counter() - start) / len(tiles)


def time_read_encode(encoder, paths: list[Path], n: int, batch_size: int) -> float:
    """Seconds per tile of decoding the tiles and encoding them in batches."""
    start = time.perf_counter()
    for first in range(0, n, batch_size):
        count = min(batch_size, n - first)
        batch = read_tiles(paths[first:] + paths[:first], count) if paths else read_tiles([], count)
        encoder(np.stack(batch))
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tiles", type=int, default=64, help="tiles per timed run")
    args = parser.parse_args()

    paths = sorted(TILES.glob("*.png"))
    tiles = read_tiles(paths, args.tiles)
    encoder = load_encoder("efficientnet_lite0", None, "cpu")
    encoder(np.stack(tiles[: args.batch_size]))  # warm-up: allocator, kernel choice
    detect_nuclei(tiles[0], mpp=MPP)             # warm-up: scikit-image imports
    nuclei, read_encode = [], []
    for _ in range(args.repeats):
        nuclei.append(time_nuclei(tiles))
        read_encode.append(time_read_encode(encoder, paths, args.tiles, args.batch_size))
    ours, base = statistics.median(nuclei), statistics.median(read_encode)
    source = f"{len(paths)} real CRC tiles" if paths else "synthetic tiles"
    print(f"{source}, {args.tiles} tiles per run, {args.repeats} alternating runs")
    print(f"detect_nuclei           {1000 * ours:7.1f} ms/tile")
    print(f"read + encode (batch {args.batch_size}) {1000 * base:7.1f} ms/tile")
    print(f"nuclei ÷ (read + encode) = {ours / base:.2f}")


if __name__ == "__main__":
    main()
