"""Patch-read speed: the fast tiled-JPEG path (wsi.io.fastread) vs openslide, on a generated slide.

A 40x slide (default 0.25 µm/px, 32 000 x 24 000 px, textured tissue, 256-px JPEG tiles)
is written once to --cache. Each repeat opens fresh readers (cold caches) and reads the same
patches with each, interleaved in chunks, then prints medians over --repeats runs of:

- 20x reads of random tissue tiles: 224-px patches at 0.5 µm/px (448 level-0 px read at level 0):
  fast ``read_patch`` patches/s ÷ a plain openslide ``read_region`` + PIL bilinear
  resize loop (target ≥ 3), and ÷ ``wsi.Slide.read_patch`` (the openslide path);
- native reads of random tissue tiles: 224-px patches at 0.25 µm/px (no resampling);
- 20x reads of a square block of grid tiles in row-major order (the order a tile grid is
  embedded in), where the decoded-tile caches of both readers come into play;
- the mean / max absolute difference (grey levels) between the fast patches and
  ``wsi.Slide.read_patch``;
- whole-slide thumbnails (``Slide.read_thumbnail``) at the downsamples tissue detection and
  QC pictures use: direct tile decoding (DCT-scaled) ÷ the openslide path, and their
  mean absolute difference.

Usage: python benchmarks/reads.py [--cache DIR] [--patches 300] [--repeats 3] [--mpp 0.25]
(``--mpp 0.2527`` is a typical Aperio 40x scan: 20x patches are then 443.2 level-0 px.)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

import wsi
from wsi.io.fastread import FastTiffReader
from wsi.synthetic.slides import Region, write_slide

SLIDE_PX = (32_000, 24_000)
TILE_TARGET_MPP = 0.5
OUT_PX = 224
CHUNK = 25


def bench_slide(cache: Path, mpp: float) -> tuple[Path, list[Region]]:
    """The benchmark slide (written on first use) and its tissue regions."""
    w, h = SLIDE_PX
    regions = [
        Region(2_000 + 10_000 * i, 2_000 + 11_000 * j, 8_500, 9_500, shape="ellipse", texture=14)
        for i in range(3)
        for j in range(2)
    ]
    path = cache / f"bench_reads_{w}x{h}_{mpp:g}.tiff"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        write_slide(path, width=w, height=h, mpp=mpp, regions=regions, downsamples=(1, 4, 16, 64))
        print(f"wrote {path} in {time.perf_counter() - t:.0f} s")
    return path, regions


def tissue_tiles(
    regions: list[Region], size0: float, n: int, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """``n`` random grid tiles (level-0 top-left) whose centre lies in a tissue ellipse."""
    cols, rows = int(SLIDE_PX[0] // size0), int(SLIDE_PX[1] // size0)
    xs, ys = np.meshgrid(np.arange(cols) * size0, np.arange(rows) * size0)
    cx, cy = xs.ravel() + size0 / 2, ys.ravel() + size0 / 2
    inside = np.zeros(cx.shape, bool)
    for r in regions:
        ax, ay = r.width / 2, r.height / 2
        inside |= ((cx - r.x - ax) / ax) ** 2 + ((cy - r.y - ay) / ay) ** 2 < 1
    picked = rng.choice(np.flatnonzero(inside), size=n, replace=False)
    return [(float(xs.ravel()[i]), float(ys.ravel()[i])) for i in picked]


def grid_block(regions: list[Region], size0: float, n: int) -> list[tuple[float, float]]:
    """Up to ``n`` grid tiles of a square block centred on the first region, row-major: the
    order a tile grid is embedded in, where neighbouring patches share JPEG tiles."""
    r = regions[0]
    side = math.isqrt(n)
    col0 = int((r.x + r.width / 2) // size0) - side // 2
    row0 = int((r.y + r.height / 2) // size0) - side // 2
    return [((col0 + i) * size0, (row0 + j) * size0) for j in range(side) for i in range(side)]


def rates(
    readers: dict[str, Callable[[float, float], object]], tiles: list[tuple[float, float]]
) -> dict[str, float]:
    """Patches per second of each reader over ``tiles``, timed in interleaved chunks of
    :data:`CHUNK` patches so that load from other processes hits every reader alike."""
    seconds = dict.fromkeys(readers, 0.0)
    for start in range(0, len(tiles), CHUNK):
        chunk = tiles[start : start + CHUNK]
        for name, read in readers.items():
            t = time.perf_counter()
            for x, y in chunk:
                read(x, y)
            seconds[name] += time.perf_counter() - t
    return {name: len(tiles) / s for name, s in seconds.items()}


def run_once(path: Path, tiles: list[tuple[float, float]], size0: float) -> dict[str, float]:
    """One repeat with fresh readers (cold caches): patches/s of the three paths."""
    fast = FastTiffReader.try_open(path)
    if fast is None:
        raise SystemExit(f"{path} does not qualify for the fast path")
    plain = openslide.OpenSlide(str(path))
    slide = wsi.open_slide(path)
    n0 = round(size0)

    def plain_read(x: float, y: float) -> None:
        region = plain.read_region((int(x), int(y)), 0, (n0, n0)).convert("RGB")
        if n0 != OUT_PX:
            region.resize((OUT_PX, OUT_PX), Image.Resampling.BILINEAR)

    result = rates(
        {
            "fast": lambda x, y: fast.read_patch(x, y, size0, OUT_PX, 0),
            "openslide": plain_read,
            "slide": lambda x, y: slide.read_patch(x, y, size0, OUT_PX, 0),
        },
        tiles,
    )
    fast.close()
    plain.close()
    slide.close()
    return result


def difference(path: Path, tiles: list[tuple[float, float]], size0: float) -> tuple[float, int]:
    """Mean and max absolute difference (grey levels) of fast vs Slide.read_patch patches."""
    with FastTiffReader.try_open(path) as fast, wsi.open_slide(path) as slide:  # type: ignore[union-attr]
        diffs = [
            np.abs(
                fast.read_patch(x, y, size0, OUT_PX, 0).astype(np.int16)
                - slide.read_patch(x, y, size0, OUT_PX, 0).astype(np.int16)
            )
            for x, y in tiles[:50]
        ]
    return float(np.mean([d.mean() for d in diffs])), int(max(d.max() for d in diffs))


def thumbnail_times(path: Path, downsample: float) -> tuple[float, float, float]:
    """Seconds for one ``read_thumbnail`` through the fast path and through openslide (fresh
    slides, cold caches), and the mean absolute difference of the two (grey levels)."""
    times, pictures = [], []
    for fast in (True, False):
        with wsi.open_slide(path) as slide:
            if not fast:
                slide._fast_checked, slide._fast = True, None  # force the openslide path
            t = time.perf_counter()
            pictures.append(slide.read_thumbnail(downsample).astype(np.int16))
            times.append(time.perf_counter() - t)
    return times[0], times[1], float(np.abs(pictures[0] - pictures[1]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/wsi_bench"))
    ap.add_argument("--patches", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mpp", type=float, default=0.25, help="level-0 µm/px of the slide")
    args = ap.parse_args()
    path, regions = bench_slide(args.cache, args.mpp)
    w, h = SLIDE_PX
    print(
        f"slide {w} x {h} px at {args.mpp:g} µm/px, 256-px JPEG tiles (q=90), "
        f"{args.patches} random tissue tiles, median of {args.repeats} runs"
    )
    modes = (
        ("20x", TILE_TARGET_MPP, "random"),
        ("native", args.mpp, "random"),
        ("20x", TILE_TARGET_MPP, "grid order"),
    )
    for label, target_mpp, order in modes:
        size0 = OUT_PX * target_mpp / args.mpp
        if order == "random":
            tiles = tissue_tiles(regions, size0, args.patches, np.random.default_rng(0))
        else:
            tiles = grid_block(regions, size0, args.patches)
        runs = [run_once(path, tiles, size0) for _ in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        ratio_plain = statistics.median(r["fast"] / r["openslide"] for r in runs)
        ratio_slide = statistics.median(r["fast"] / r["slide"] for r in runs)
        mad, worst = difference(path, tiles, size0)
        print(
            f"{label} {order} ({target_mpp:g} µm/px, {size0:g} level-0 px -> {OUT_PX} px): "
            f"fast {med['fast']:.0f}/s, openslide loop {med['openslide']:.0f}/s, "
            f"Slide.read_patch {med['slide']:.0f}/s; fast ÷ openslide = {ratio_plain:.2f}x"
            f"{' (target ≥ 3)' if (label, order) == ('20x', 'random') else ''}, "
            f"fast ÷ Slide.read_patch = {ratio_slide:.2f}x; "
            f"|fast - Slide| mean {mad:.2f}, max {worst} grey levels"
        )
    for downsample in (6.0, 32.0, 128.0):
        runs = [thumbnail_times(path, downsample) for _ in range(args.repeats)]
        fast_s, plain_s = (statistics.median(r[i] for r in runs) for i in (0, 1))
        print(
            f"thumbnail at downsample {downsample:g} ({round(w / downsample)} x "
            f"{round(h / downsample)} px): fast {fast_s:.2f} s, openslide {plain_s:.2f} s; "
            f"openslide ÷ fast time = {statistics.median(r[1] / r[0] for r in runs):.2f}x; "
            f"mean |diff| {runs[0][2]:.2f} grey levels"
        )


if __name__ == "__main__":
    main()
