"""Tiling speed on a generated 100k x 80k px slide (0.25 µm/px, 4 levels).

Prints, as ratios measured in this run (medians of --repeats runs):
- open + tissue detection + grid, in seconds, and ÷ reading the mask-sized thumbnail alone
  (target ≤ 2: the grid adds little to the unavoidable thumbnail read);
- ``grid.read`` patches/s ÷ a plain openslide ``read_region`` + PIL resize loop over the
  same tiles (target ≥ 1).

Usage: python benchmarks/tiling.py [--cache DIR] [--patches 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

import wsi
from wsi.synthetic.slides import Region, write_slide


def big_slide(cache: Path) -> Path:
    path = cache / "bench_100k_x_80k.tiff"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        regions = [
            Region(8_000 + 30_000 * i, 10_000 + 22_000 * j, 24_000, 17_000, shape="ellipse")
            for i in range(3)
            for j in range(3)
        ]
        write_slide(
            path,
            width=100_000,
            height=80_000,
            mpp=0.25,
            regions=regions,
            downsamples=(1, 4, 16, 64),
        )
        print(f"wrote {path} in {time.perf_counter() - t:.0f} s")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/wsi_bench"))
    ap.add_argument("--patches", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    path = big_slide(args.cache)

    pipeline, thumbnail, ratio_read = [], [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        slide = wsi.open_slide(path)
        mask = wsi.detect_tissue(slide)
        grid = wsi.tile(slide, mpp=0.5, size=224, mask=mask)
        pipeline.append(time.perf_counter() - t)

        t = time.perf_counter()
        wsi.open_slide(path).read_thumbnail(mask.downsample)
        thumbnail.append(time.perf_counter() - t)

        rng = np.random.default_rng(0)
        idx = rng.choice(len(grid), size=min(args.patches, len(grid)), replace=False)
        t = time.perf_counter()
        for i in idx:
            grid.read(int(i))
        ours = time.perf_counter() - t

        plain = openslide.OpenSlide(str(path))
        size0 = round(grid.size_level0)
        t = time.perf_counter()
        for i in idx:
            x, y = grid.coords[i]
            region = plain.read_region((int(x), int(y)), 0, (size0, size0)).convert("RGB")
            region.resize((224, 224), Image.Resampling.BILINEAR)
        base = time.perf_counter() - t
        ratio_read.append(base / ours)

    p, th = statistics.median(pipeline), statistics.median(thumbnail)
    print(
        f"slide 100000 x 80000 px, {len(grid)} tiles of 224 px at 0.5 µm/px, "
        f"mask {mask.array.shape[1]}x{mask.array.shape[0]} px at downsample {mask.downsample:g}"
    )
    print(
        f"open + tissue + grid: {p:.2f} s; thumbnail read alone: {th:.2f} s; "
        f"ratio {p / th:.2f} (target <= 2)"
    )
    print(
        f"grid.read patches/s ÷ openslide read_region+resize: {statistics.median(ratio_read):.2f} "
        f"(target >= 1; {len(idx)} random tiles, median of {args.repeats})"
    )


if __name__ == "__main__":
    main()
