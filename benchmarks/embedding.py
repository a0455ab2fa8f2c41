"""Embedding throughput and memory, measured as ratios in one run.

Prints:
1. end-to-end tiles/s of ``embed_archive`` (tissue detection, tiling, patch reads,
   encoding, HDF5 writes, QC pictures) ÷ tiles/s of the encoder alone on preloaded uint8
   batches of the same size (target ≥ 0.9: the pipeline keeps the encoder busy), on
   (a) resection-sized slides: 40x (0.25 µm/px) scans with ~1,000 tissue tiles each at
   0.5 µm/px, tissue on about 3/4 of the glass; (b) biopsy-sized slides of 144 tiles, where
   the fixed cost per slide (opening, tissue, files, QC picture) shows: printed in seconds;
2. bf16 ÷ fp32 encoder throughput (autocast on CPU);
3. peak RSS while embedding a ~100k-tile slide with a tiny encoder (the pipeline's own
   memory, which must stay flat: target < 2 GB above the model).

The encoder alone is measured just before and just after each end-to-end run (their mean is
the reference), so load changes on a shared machine hit both sides of the ratio. It runs as a
notebook user runs it: one process, all torch threads. ``--lanes auto,0`` alternates the
library's default (encoding lanes on a CPU: processes that read and encode) with encoding in
the main process, round by round; the encoder alone in as many one-process lanes (no reads)
is printed too, the ceiling of the lanes.

``--precision fp32`` pins the encoder's precision (``auto`` picks bf16
on CPUs with AMX/AVX512-BF16).

Usage: python benchmarks/embedding.py [--encoder efficientnet_lite0] [--weights random]
       [--device cpu|cuda] [--precision auto|fp32|bf16] [--slides 2] [--tiles-side 32]
       [--small-slides 4] [--batch-size 32] [--repeats 3] [--lanes auto,0]
       [--skip-rss] [--skip-bf16]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
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
from wsi.options import TileOptions
from wsi.pipeline.embed import embed_archive
from wsi.synthetic.slides import Region, write_slide


def encoder_only(enc, batch: torch.Tensor, seconds: float = 8.0) -> float:
    """tiles/s of ``enc`` on one preloaded batch, repeated for about ``seconds``."""
    enc(batch)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        enc(batch)
        n += batch.shape[0]
    return n / (time.perf_counter() - start)


def _lane_encoder_only(enc, batch: torch.Tensor, threads: int, seconds: float) -> float:
    torch.set_num_threads(threads)
    return encoder_only(enc, batch, seconds)


def lanes_encoder_only(enc, batch: torch.Tensor, lanes: int, seconds: float = 8.0) -> float:
    """tiles/s of ``lanes`` forked processes each running the encoder alone, all at once
    (each with its share of the torch threads): what encoding lanes could reach with free
    reads."""
    threads = max(1, torch.get_num_threads() // lanes)
    with multiprocessing.get_context("fork").Pool(lanes) as pool:
        jobs = [
            pool.apply_async(_lane_encoder_only, (enc, batch, threads, seconds))
            for _ in range(lanes)
        ]
        return sum(job.get() for job in jobs)


def write_archive(folder: Path, slides: int, tiles_side: int, slide_mpp: float) -> None:
    """``slides`` 40x-style slides of about ``tiles_side``² tiles of 224 px at 0.5 µm/px:
    an elliptic tissue section over a square of that side, on glass with a margin."""
    side = round(tiles_side * 224 * 0.5 / slide_mpp)  # level-0 px of the tissue square
    margin = side // 8
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(slides):
        write_slide(
            folder / f"s{i}.tiff",
            width=side + 2 * margin,
            height=side + 2 * margin,
            mpp=slide_mpp,
            regions=[Region(margin, margin, side, side, shape="ellipse")],
            downsamples=(1, 4, 16, 64),
            seed=i,
        )


def write_biopsies(folder: Path, slides: int, tiles_side: int) -> int:
    """``slides`` small 0.5 µm/px slides covered by tissue: ``tiles_side``² tiles each at
    0.5 µm/px, 224 px. Returns the number of tiles."""
    side = tiles_side * 224
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(slides):
        write_slide(
            folder / f"b{i}.tiff",
            width=side,
            height=side,
            mpp=0.5,
            regions=[Region(0, 0, side, side)],
            seed=100 + i,
        )
    return slides * tiles_side**2


def ratio_run(
    enc, batch: torch.Tensor, slides: Path, out: Path, args, lanes: int | None = None
) -> tuple[float, float, int]:
    """(end-to-end ÷ encoder-only tiles/s, end-to-end seconds, tiles) for one archive run
    with ``lanes`` encoding lanes (None: the library's choice)."""
    before = encoder_only(enc, batch, 5.0)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    rows = embed_archive(
        [slides],
        out,
        encoder=enc,
        batch_size=args.batch_size,
        workers=args.workers,
        lanes=lanes,
        device=args.device,
        progress=False,
    )
    seconds = time.perf_counter() - t
    after = encoder_only(enc, batch, 5.0)
    assert all(row["status"] == "ok" for row in rows), rows
    tiles = sum(int(row["n_tiles"]) for row in rows)
    alone = (before + after) / 2
    print(
        f"  {slides.name}, lanes {'auto' if lanes is None else lanes}: encoder alone "
        f"{alone:.1f} tiles/s, end to end {tiles / seconds:.1f} tiles/s ({tiles} tiles, "
        f"{seconds:.1f} s), ratio {tiles / seconds / alone:.3f}, load {load:.1f}",
        file=sys.stderr,
    )
    return tiles / seconds / alone, seconds - tiles / alone, tiles


def report_ratios(big: list, small: list, args, lanes: str = "auto") -> None:
    """Print the median ratios over the rounds (of one ``--lanes`` setting)."""
    print(
        f"lanes {lanes}: end-to-end ÷ encoder-only tiles/s, {args.slides} resection-sized "
        f"slides ({big[0][2]} tiles from {args.slide_mpp:g} µm/px): "
        f"{statistics.median(r[0] for r in big):.2f} (target >= 0.9; rounds: "
        f"{', '.join(f'{r[0]:.2f}' for r in big)})"
    )
    if small:
        per_slide = statistics.median(r[1] for r in small) / args.small_slides
        print(
            f"end-to-end ÷ encoder-only tiles/s, {args.small_slides} biopsy-sized "
            f"slides ({small[0][2]} tiles): {statistics.median(r[0] for r in small):.2f}; "
            f"fixed cost {per_slide:.2f} s per slide beyond encoding its tiles"
        )


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def rss_run(tmp: Path) -> None:
    """Peak RSS on a ~100k-tile slide (32-px tiles) with a tiny encoder."""

    class Tiny(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)

    side = 316 * 32 * 2  # 316 x 316 tiles of 32 px at 1.0 µm/px on a 0.5 µm/px slide
    path = write_slide(
        tmp / "big.tiff",
        width=side,
        height=side,
        mpp=0.5,
        regions=[Region(0, 0, side, side)],
        downsamples=(1, 4, 16, 64),
    )
    enc = encoder_from_module(Tiny(), 192, 32, (0.5,) * 3, (0.25,) * 3, name="tiny")
    before = peak_rss_gb()
    t = time.perf_counter()
    rows = embed_archive(
        [path],
        tmp / "out_rss",
        encoder=enc,
        tiling=TileOptions(1.0, 32),
        batch_size=512,
        progress=False,
    )
    print(
        f"peak RSS: {peak_rss_gb():.2f} GB after embedding {rows[0]['n_tiles']} tiles "
        f"(before: {before:.2f} GB; {time.perf_counter() - t:.0f} s; main process only)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="efficientnet_lite0")
    ap.add_argument("--weights", default=None, help="a weights file, or 'random'")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", help="auto, fp32 or bf16")
    ap.add_argument("--slides", type=int, default=2, help="resection-sized slides")
    ap.add_argument(
        "--tiles-side",
        type=int,
        default=36,
        help="their tissue ellipse spans this many tiles across (~0.8 x this² tiles)",
    )
    ap.add_argument(
        "--small-slides",
        type=int,
        default=4,
        help="biopsy-sized slides (12 x 12 tiles, whole glass tissue); 0: skip",
    )
    ap.add_argument("--slide-mpp", type=float, default=0.25, help="level-0 µm/px of the slides")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="reader processes (default: the library's choice for the device)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--lanes",
        default="auto",
        help="encoding lanes, comma-separated settings alternated each round "
        "(auto: the library's choice; 0: encode in the main process), e.g. auto,0",
    )
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument(
        "--skip-bf16",
        action="store_true",
        help="no bf16 ÷ fp32 figure (emulated bf16 on a CPU is very slow)",
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wsi_bench_embed_"))
    try:
        t = time.perf_counter()
        write_archive(tmp / "resections", args.slides, args.tiles_side, args.slide_mpp)
        biopsies = tmp / "biopsies"
        write_biopsies(biopsies, args.small_slides, 12)
        print(f"wrote the slides in {time.perf_counter() - t:.0f} s", file=sys.stderr)

        def encoder(precision: str):
            return load_encoder(
                args.encoder, weights=args.weights, device=args.device, precision=precision
            )

        enc = encoder(args.precision)
        fp32, bf16 = (None, None) if args.skip_bf16 else (encoder("fp32"), encoder("bf16"))
        rng = np.random.default_rng(0)
        batch = torch.from_numpy(
            rng.integers(0, 255, (args.batch_size, 224, 224, 3), dtype=np.uint8)
        )
        encoder_only(enc, batch, 3.0)  # warm-up: thread pools, allocator
        settings = args.lanes.split(",")
        big = {name: [] for name in settings}
        small = {name: [] for name in settings}
        prec, in_lanes = [], []
        for r in range(args.repeats):
            for name in settings:
                lanes = None if name == "auto" else int(name)
                out = tmp / f"out{r}_{name}"
                big[name].append(ratio_run(enc, batch, tmp / "resections", out, args, lanes))
                if args.small_slides:
                    out = tmp / f"out_small{r}_{name}"
                    small[name].append(ratio_run(enc, batch, biopsies, out, args, lanes))
            in_lanes.append(lanes_encoder_only(enc, batch, 2) / encoder_only(enc, batch, 5.0))
            if bf16 is not None:
                prec.append(encoder_only(bf16, batch, 5.0) / encoder_only(fp32, batch, 5.0))
        from wsi.pipeline.loader import encoding_lanes

        auto = encoding_lanes(None, args.workers, enc)
        print(
            f"encoder {args.encoder} ({enc.precision}) batch {args.batch_size}, "
            f"lanes auto = {auto}, torch threads {torch.get_num_threads()}, "
            f"median of {args.repeats}"
        )
        for name in settings:
            report_ratios(big[name], small[name], args, name)
        print(
            "encoder alone in 2 one-thread lanes ÷ in the main process: "
            f"{statistics.median(in_lanes):.2f}"
        )
        if prec:
            print(f"bf16 ÷ fp32 encoder throughput: {statistics.median(prec):.2f}")
        if not args.skip_rss:
            rss_run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
