"""Cost of nuclei detection per tile ÷ reading + encoding that tile (EfficientNet-Lite0, CPU),
and how much faster classifying tiles from a feature file is than embedding them.

    python benchmarks/tme.py [--repeats 5] [--batch-size 32]

On the real CRC tiles in ../shared/data/crc_val_he_7k_32 (224 px at 0.5 µm/px; random
pink-and-purple noise when the folder is absent). Each repeat times, one after the other,
``wsi.tme.detect_nuclei`` over every tile and reading (PNG decode) + encoding the same tiles
in batches; the medians of the alternating runs are printed with their ratio, so load from
other processes hits both alike. Not a test: numbers depend on the machine.

The tile classifier (``wsi.tme.classify_feature_file``: read the HDF5 features, probe,
table) is timed per tile on a feature file of ``--slide-tiles`` rows made of those tiles'
features; the issue asks for ≥ 100× faster than reading + encoding.

Memory of a TME profile: ``wsi.tme.slide_profile``'s peak traced memory on 10k- and 100k-tile
tables (linear in tiles: the table itself, no pixels), and ``count_nuclei``'s over 128 vs 512
tiles read from a mosaic slide (flat: pixels stream through in batches of 32).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from models.encoders import load_encoder
from wsi.tme import detect_nuclei
from wsi.tme.classifier import classify_feature_file, fit_tile_classifier

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


def feature_file(encoder, tiles: list[np.ndarray], paths: list[Path], rows: int, folder: Path):
    """A classifier fitted on the tiles' features and a feature file of ``rows`` tiles."""
    from wsi.store.h5 import FeatureWriter

    features = encoder(np.stack(tiles)).numpy()
    labels = [p.name.split("-")[0] for p in paths] if paths else ["TUM", "STR"] * len(tiles)
    labels = [labels[i % len(labels)] for i in range(len(tiles))]
    classifier = fit_tile_classifier(
        features,
        labels,
        encoder=encoder.name,
        weights_sha256=encoder.weights_sha256,
        tile_mpp=MPP,
        tile_size=tiles[0].shape[0],
    )
    coords = np.stack([np.arange(rows) % 400, np.arange(rows) // 400], axis=1) * 224
    attrs = {"patch_size": 224, "patch_level": 0, "achieved_mpp": MPP, "target_mpp": MPP}
    path = folder / "slide.h5"
    with FeatureWriter(
        path,
        coords,
        attrs,
        {},
        features.shape[1],
        {"encoder": encoder.name, "weights_sha256": encoder.weights_sha256},
    ) as w:
        w.write(0, features[np.arange(rows) % len(features)])
        w.commit()
    return classifier, path


def time_classify(classifier, path: Path, rows: int) -> float:
    """Seconds per tile of classify_feature_file."""
    start = time.perf_counter()
    classify_feature_file(classifier, path)
    return (time.perf_counter() - start) / rows


def profile_memory(n_tiles: int) -> tuple[float, float]:
    """(peak traced MB, seconds) of ``wsi.tme.slide_profile`` on a synthetic square slide of
    ``n_tiles`` tiles of 112 µm (a tumour disc, random roles and lymphocyte counts)."""
    import tracemalloc

    import pandas as pd

    from wsi.tme.profile import slide_profile

    side = int(np.sqrt(n_tiles))
    iy, ix = np.divmod(np.arange(side * side), side)
    rng = np.random.default_rng(0)
    disc = np.hypot(ix - side / 2, iy - side / 2) < side / 4
    table = pd.DataFrame(
        {
            "x_um": ix * 112.0,
            "y_um": iy * 112.0,
            "role": np.where(disc, "tumour", rng.choice(["stroma", "immune", "fat"], side * side)),
            "n_lymphocytes": rng.poisson(5, side * side),
            "n_nuclei": rng.poisson(60, side * side),
        }
    )
    tracemalloc.start()
    start = time.perf_counter()
    slide_profile(table, tile_um=112.0)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak, seconds


def nuclei_stream_memory(tiles: list[np.ndarray], n_tiles: int, folder: Path) -> float:
    """Peak traced MB of counting nuclei (``wsi.pipeline.tme_nuclei.count_nuclei``, batches
    of 32 read from a mosaic slide) over ``n_tiles`` tiles: flat if it streams."""
    import tracemalloc

    from wsi.pipeline.tme_nuclei import TileGeometry, count_nuclei
    from wsi.synthetic.mosaic import write_pyramid

    side = int(np.ceil(np.sqrt(n_tiles)))
    image = np.concatenate(
        [
            np.concatenate([tiles[(r * side + c) % len(tiles)] for c in range(side)], 1)
            for r in range(side)
        ],
        0,
    )
    path = write_pyramid(folder / f"mosaic_{n_tiles}.tif", image, mpp=MPP)
    iy, ix = np.divmod(np.arange(n_tiles), side)
    coords = np.stack([ix * 224, iy * 224], 1).astype(np.int64)
    geometry = TileGeometry(str(path), MPP, coords, 224.0, 224, 0, MPP)
    tracemalloc.start()
    count_nuclei(geometry, batch_size=32)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tiles", type=int, default=64, help="tiles per timed run")
    parser.add_argument(
        "--slide-tiles",
        type=int,
        default=20000,
        help="rows of the feature file the classifier is timed on",
    )
    args = parser.parse_args()
    import tempfile

    paths = sorted(TILES.glob("*.png"))
    tiles = read_tiles(paths, args.tiles)
    encoder = load_encoder("efficientnet_lite0", None, "cpu")
    encoder(np.stack(tiles[: args.batch_size]))  # warm-up: allocator, kernel choice
    detect_nuclei(tiles[0], mpp=MPP)  # warm-up: scikit-image imports
    nuclei, read_encode, read_encode_1, classify = [], [], [], []
    scratch = tempfile.TemporaryDirectory()
    classifier, h5 = feature_file(encoder, tiles, paths, args.slide_tiles, Path(scratch.name))
    threads = torch.get_num_threads()
    for _ in range(args.repeats):
        nuclei.append(time_nuclei(tiles))
        read_encode.append(time_read_encode(encoder, paths, args.tiles, args.batch_size))
        # one torch thread: one core each, as detect_nuclei runs (fairer on a shared machine)
        torch.set_num_threads(1)
        read_encode_1.append(time_read_encode(encoder, paths, args.tiles, args.batch_size))
        torch.set_num_threads(threads)
        classify.append(time_classify(classifier, h5, args.slide_tiles))
    ours, base = statistics.median(nuclei), statistics.median(read_encode)
    base_1 = statistics.median(read_encode_1)
    source = f"{len(paths)} real CRC tiles" if paths else "synthetic tiles"
    print(f"{source}, {args.tiles} tiles per run, {args.repeats} alternating runs")
    print(f"detect_nuclei           {1000 * ours:7.1f} ms/tile")
    print(f"read + encode (batch {args.batch_size}) {1000 * base:7.1f} ms/tile ({threads} threads)")
    print(f"nuclei ÷ (read + encode) = {ours / base:.2f}")
    print(
        f"read + encode, 1 thread {1000 * base_1:7.1f} ms/tile; "
        f"nuclei ÷ (read + encode, 1 thread) = {ours / base_1:.2f}"
    )
    per_tile = statistics.median(classify)
    print(
        f"classify from features  {1000 * per_tile:7.4f} ms/tile ({args.slide_tiles} tiles "
        f"from one feature file)"
    )
    print(f"(read + encode) ÷ classify from features = {base / per_tile:.0f}x")

    # memory: the profile of a 100k-tile slide, and nuclei counting streamed in batches
    small, big = (profile_memory(n) for n in (10_000, 100_000))
    print(
        f"slide_profile 10k tiles: peak {small[0]:.0f} MB, {small[1]:.2f} s; "
        f"100k tiles: peak {big[0]:.0f} MB, {big[1]:.2f} s"
    )
    if paths:
        streamed = [nuclei_stream_memory(tiles, n, Path(scratch.name)) for n in (128, 512)]
        print(
            f"count_nuclei peak traced memory: {streamed[0]:.0f} MB for 128 tiles, "
            f"{streamed[1]:.0f} MB for 512 tiles (ratio {streamed[1] / streamed[0]:.2f})"
        )


if __name__ == "__main__":
    main()
