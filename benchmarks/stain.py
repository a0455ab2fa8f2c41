"""Cost of Macenko stain normalisation per tile ÷ the encoder's cost per tile.

Times, on the same batches of real H&E tiles (``../shared/data/nct_crc_he_27``, repeated to
``--batch-size``): the per-slide fit (once per slide, on the first batch), normalising a batch
and encoding it. Medians of ``--repeats`` alternating runs, so load changes on a shared
machine hit both sides of the ratio.

Usage: python benchmarks/stain.py [--encoder efficientnet_lite0] [--device cpu]
       [--batch-size 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.encoders import load_encoder
from models.stain import fit_macenko, normalise_macenko

TILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "nct_crc_he_27"


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    """Print fit, normalise and encode seconds per tile and their ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(TILES.glob("*.png"))]
    batch = np.stack([tiles[i % len(tiles)] for i in range(args.batch_size)])
    encoder = load_encoder(args.encoder, device=args.device, precision="fp32")
    tensor = torch.from_numpy(batch).to(encoder.device)
    fit = fit_macenko(batch)
    encoder(batch)  # warm up (a frozen graph is built on the first batch)
    normalise_macenko(tensor, fit)
    fits, norms, encs = [], [], []
    for _ in range(args.repeats):
        fits.append(_seconds(lambda: fit_macenko(batch)))
        norms.append(_seconds(lambda: normalise_macenko(tensor, fit)))
        encs.append(_seconds(lambda: encoder(batch)))
    n = args.batch_size
    fit_s, norm_s, enc_s = (statistics.median(v) for v in (fits, norms, encs))
    print(f"{args.encoder} on {encoder.device}, batches of {n} tiles of {batch.shape[1]} px")
    print(f"encode      {1e3 * enc_s / n:8.2f} ms/tile")
    print(f"normalise   {1e3 * norm_s / n:8.2f} ms/tile  = {norm_s / enc_s:.3f} x encoding")
    print(f"fit (once per slide, one batch) {fit_s:.2f} s = {fit_s / enc_s:.2f} batches encoded")


if __name__ == "__main__":
    main()
