"""Embedding throughput and memory, measured as ratios in one run.

Prints:
1. end-to-end tiles/s of ``embed_archive`` (tiling, patch reads, encoding,
   HDF5 writes) ÷ tiles/s of the encoder alone on preloaded uint8 batches of the same size
   (target ≥ 0.9 on CPU: the pipeline keeps the encoder busy);
2. bf16 ÷ fp32 encoder throughput (autocast on CPU);
3. peak RSS while embedding a ~100k-tile slide with a tiny encoder (the pipeline's own
   memory, which must stay flat: target < 2 GB above the model).

Usage: python benchmarks/embedding.py [--encoder efficientnet_lite0] [--weights random]
       [--device cpu|cuda] [--slides 2] [--batch-size 32] [--repeats 3] [--skip-rss]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.encoders import encoder_from_module, load_encoder
from wsi.embed import embed_archive
from wsi.patching import TileOptions
from wsi.testing import Region, write_slide


def encoder_only(enc, batch: torch.Tensor, seconds: float = 8.0) -> float:
    """tiles/s of ``enc`` on one preloaded batch, repeated for about ``seconds``."""
    enc(batch)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        enc(batch)
        n += batch.shape[0]
    return n / (time.perf_counter() - start)


def write_archive(folder: Path, slides: int, tiles_side: int) -> int:
    """Slides fully covered by tissue with ``tiles_side``² tiles of 224 px at 0.5 µm/px."""
    side = tiles_side * 224
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(slides):
        write_slide(folder / f"s{i}.tiff", width=side, height=side, mpp=0.5,
                    regions=[Region(0, 0, side, side)], seed=i)
    return slides * tiles_side**2


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def rss_run(tmp: Path) -> None:
    """Peak RSS on a ~100k-tile slide (32-px tiles) with a tiny encoder."""

    class Tiny(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)

    side = 316 * 32 * 2  # 316 x 316 tiles of 32 px at 1.0 µm/px on a 0.5 µm/px slide
    path = write_slide(tmp / "big.tiff", width=side, height=side, mpp=0.5,
                       regions=[Region(0, 0, side, side)], downsamples=(1, 4, 16, 64))
    enc = encoder_from_module(Tiny(), 192, 32, (0.5,) * 3, (0.25,) * 3, name="tiny")
    before = peak_rss_gb()
    t = time.perf_counter()
    rows = embed_archive([path], tmp / "out_rss", encoder=enc, tiling=TileOptions(1.0, 32),
                         batch_size=512, progress=False)
    print(f"peak RSS: {peak_rss_gb():.2f} GB after embedding {rows[0]['n_tiles']} tiles "
          f"(before: {before:.2f} GB; {time.perf_counter() - t:.0f} s; main process only)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="efficientnet_lite0")
    ap.add_argument("--weights", default=None, help="a weights file, or 'random'")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--slides", type=int, default=2)
    ap.add_argument("--tiles-side", type=int, default=12, help="each slide has this² tiles")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None,
                    help="reader processes (default: the library's choice for the device)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-rss", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wsi_bench_embed_"))
    try:
        n_tiles = write_archive(tmp / "slides", args.slides, args.tiles_side)
        def encoder(precision: str):
            return load_encoder(args.encoder, weights=args.weights, device=args.device,
                                precision=precision)

        enc, fp32, bf16 = encoder("auto"), encoder("fp32"), encoder("bf16")
        rng = np.random.default_rng(0)
        batch = torch.from_numpy(
            rng.integers(0, 255, (args.batch_size, 224, 224, 3), dtype=np.uint8)
        )
        ratios, prec = [], []
        for r in range(args.repeats):
            alone = encoder_only(enc, batch)
            out = tmp / f"out{r}"
            t = time.perf_counter()
            rows = embed_archive([tmp / "slides"], out, encoder=enc, batch_size=args.batch_size,
                                 workers=args.workers, device=args.device, progress=False)
            e2e = n_tiles / (time.perf_counter() - t)
            assert all(row["status"] == "ok" for row in rows), rows
            ratios.append(e2e / alone)
            prec.append(encoder_only(bf16, batch, 5.0) / encoder_only(fp32, batch, 5.0))
            print(f"run {r}: encoder alone {alone:.1f} tiles/s, end to end {e2e:.1f} tiles/s",
                  file=sys.stderr)
        from wsi.loader import default_workers

        workers = default_workers(enc.device.type) if args.workers is None else args.workers
        print(f"encoder {args.encoder} ({enc.precision}) batch {args.batch_size}, "
              f"{workers} reader worker(s), torch threads {torch.get_num_threads()}")
        print(f"end-to-end ÷ encoder-only tiles/s: {statistics.median(ratios):.2f} "
              f"(target >= 0.9; {n_tiles} tiles, median of {args.repeats})")
        print(f"bf16 ÷ fp32 encoder throughput: {statistics.median(prec):.2f}")
        if not args.skip_rss:
            rss_run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
