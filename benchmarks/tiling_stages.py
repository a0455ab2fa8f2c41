"""Where the time of tissue detection + tile grid goes, stage by stage, on one slide.

Stages (each timed alone, warm, medians of --repeats runs; wall and CPU seconds):
open (openslide + layout checks), fast-reader parse (the JPEG tile tables), the mask-sized
thumbnail (which level, decoded at which DCT scale), the tissue rule split into its steps
(colour planes, saturation, pen ink, thresholds, morphology, holes, fragments), the grid
(tissue fraction per tile over the summed-area table), and the whole ``open + wsi.tile``.
Each stage's share of the whole is printed, so the profile says where a speed-up can
still come from. ``--cprofile`` adds cProfile's top functions for the whole run.

Usage: python benchmarks/tiling_stages.py [SLIDE] [--repeats 9] [--cprofile]
(default SLIDE: peers.py's 60,000 x 45,000 px 40x slide in /tmp/wsi_bench, written if absent)
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import wsi  # noqa: E402
from wsi import morphology as morph  # noqa: E402
from wsi import tissue as t  # noqa: E402
from wsi.options import TissueOptions  # noqa: E402


def timed(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``run``."""
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        run()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(wall), statistics.median(cpu)


def mask_steps(rgb: np.ndarray, mpp: float) -> dict[str, Callable[[], object]]:
    """The steps of :func:`wsi.tissue.tissue_mask_from_rgb`, each a closure over the
    previous steps' results (computed once here)."""
    o = TissueOptions()
    tables = t._white_balance_tables(rgb)
    sat, dark = t._saturation_and_dark(rgb, tables)
    sat = morph.box_mean(sat, round(8 / mpp))
    pen = morph.open_(t._pen_ink_in_bands(rgb, tables, sat, dark), round(24 / mpp))
    raw = (sat > 0.1) | dark
    closed = morph.close(raw, round(o.close_radius_um / mpp))
    return {
        "  glass colour (white balance)": lambda: t._white_balance_tables(rgb),
        "  saturation + dark": lambda: t._saturation_and_dark(rgb, tables),
        "  box mean of saturation": lambda: morph.box_mean(sat, round(8 / mpp)),
        "  pen ink + opening": lambda: morph.open_(
            t._pen_ink_in_bands(rgb, tables, sat, dark), round(24 / mpp)
        ),
        "  Otsu threshold": lambda: t._otsu_saturation(sat[::2, ::2][~(pen | dark)[::2, ::2]]),
        "  close + open": lambda: morph.open_(
            morph.close(raw, round(o.close_radius_um / mpp)), round(o.open_radius_um / mpp)
        ),
        "  fill small holes": lambda: morph.fill_small_holes(closed, o.min_hole_area_um2 / mpp**2),
        "  drop small fragments": lambda: morph.remove_small_objects(
            closed, o.min_tissue_area_um2 / mpp**2
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide", nargs="?", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--cprofile", action="store_true")
    args = ap.parse_args()
    path = args.slide
    if path is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from peers import resection_slide

        path = resection_slide(Path("/tmp/wsi_bench"))
    slide = wsi.open_slide(path)
    mask = t.detect_tissue(slide)
    grid = wsi.tile(slide, mpp=0.5, size=224, mask=mask)
    downsample = mask.downsample
    fast = slide._fast_reader()
    level = slide.best_level_for_downsample(downsample)
    scale = downsample / slide.level_downsamples[level]
    reduce = fast.dct_reduce(level, scale) if fast is not None else 1
    rgb = slide.read_thumbnail(downsample)
    print(
        f"{path.name}: {slide.dimensions[0]}x{slide.dimensions[1]} px at {slide.mpp:g} µm/px; "
        f"mask {rgb.shape[1]}x{rgb.shape[0]} px at {mask.mpp:.3g} µm/px from level {level} "
        f"(downsample {slide.level_downsamples[level]:.4g}) decoded at 1/{reduce} "
        f"({slide.patch_backend}); {len(grid)} tiles"
    )

    def whole() -> int:
        return len(wsi.tile(wsi.open_slide(path), mpp=0.5, size=224))

    stages: dict[str, Callable[[], object]] = {
        "open": lambda: wsi.open_slide(path),
        "fast-reader parse": lambda: wsi.open_slide(path)._fast_reader(),
        "thumbnail": lambda: slide.read_thumbnail(downsample),
        "tissue rule": lambda: t.tissue_mask_from_rgb(rgb, mpp=mask.mpp),
        **mask_steps(rgb, mask.mpp),
        "grid (tissue fraction per tile)": lambda: wsi.tile(slide, mpp=0.5, size=224, mask=mask),
        "whole: open + tile": whole,
    }
    results = {name: timed(run, args.repeats) for name, run in stages.items()}
    results["fast-reader parse"] = tuple(  # the parse alone: without the open before it
        a - b for a, b in zip(results["fast-reader parse"], results["open"], strict=True)
    )
    total = results["whole: open + tile"][0]
    print(f"{'stage':36s} {'wall ms':>8s} {'cpu ms':>8s} {'of whole':>9s}")
    for name, (wall, cpu) in results.items():
        print(f"{name:36s} {wall * 1e3:8.1f} {cpu * 1e3:8.1f} {wall / total:9.0%}")
    if args.cprofile:
        profile = cProfile.Profile()
        profile.runcall(lambda: [whole() for _ in range(args.repeats)])
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
