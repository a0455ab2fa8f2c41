"""Encoder-only throughput: fp32 vs bf16 autocast, channels_last on/off, graph rewrites.

    python3 benchmarks/encoders.py [--device cpu] [--batch-size 32] [--repeats 3]

Prints tiles/s (median of ``--repeats`` timed batches, configurations interleaved so that
load from other processes hits them alike) and the bf16 / fp32 and channels_last ratios,
then the speed-up of the inference rewrites load_encoder applies (batch norms folded into
convolutions, models/fusion.py; static 'SAME' padding, models/samepad.py; the frozen CPU
graph, models/frozen.py), each added in turn, in the default precision and memory format.
resnet50_trunc uses random weights (the hub is not needed). Not a test: numbers depend on
the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from models.encoders import cpu_has_native_bf16, load_encoder

TILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "crc_val_he_7k_32"
ENCODERS = {"efficientnet_lite0": None, "resnet50_trunc": "random"}
CONFIGS = [(p, cl) for p in ("fp32", "bf16") for cl in (False, True)]


def tile_batch(batch_size: int) -> np.ndarray:
    """uint8 (B, 224, 224, 3): real CRC tiles when ../shared/data exists, else noise."""
    paths = sorted(TILES.glob("*.png"))
    if not paths:
        return np.random.default_rng(0).integers(0, 256, (batch_size, 224, 224, 3), np.uint8)
    from PIL import Image

    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return np.stack([tiles[i % len(tiles)] for i in range(batch_size)])


def tiles_per_s(encoder, batch: np.ndarray) -> float:
    start = time.perf_counter()
    encoder(batch)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    return len(batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    args = parser.parse_args()

    batch = tile_batch(args.batch_size)
    print(
        f"device={args.device} batch={args.batch_size} threads={torch.get_num_threads()} "
        f"cpu_capability={torch.backends.cpu.get_cpu_capability()} "
        f"native_bf16={cpu_has_native_bf16()}"
    )
    for name in args.encoders:
        weights = ENCODERS[name]
        encoders = {
            (p, cl): load_encoder(name, weights, args.device, precision=p, channels_last=cl)
            for p, cl in CONFIGS
        }
        for encoder in encoders.values():
            encoder(batch)  # warm-up: allocator, oneDNN kernel selection
        rates: dict[tuple[str, bool], list[float]] = {c: [] for c in CONFIGS}
        for _ in range(args.repeats):
            for config, encoder in encoders.items():
                rates[config].append(tiles_per_s(encoder, batch))
        median = {c: statistics.median(r) for c, r in rates.items()}
        for (p, cl), rate in median.items():
            print(f"{name:20s} {p} channels_last={cl!s:5s} {rate:8.1f} tiles/s")
        for cl in (False, True):
            ratio = median[("bf16", cl)] / median[("fp32", cl)]
            print(f"{name:20s} bf16/fp32 (channels_last={cl}) = {ratio:.2f}")
        for p in ("fp32", "bf16"):
            ratio = median[(p, True)] / median[(p, False)]
            print(f"{name:20s} channels_last on/off ({p}) = {ratio:.2f}", flush=True)
        rewrites(name, args.device, batch, args.repeats)


def _unchanged(module, probe):
    """Stands in for a rewrite that is skipped."""
    return module, 0


def rewrites(name: str, device: str, batch: np.ndarray, repeats: int) -> None:
    """tiles/s with no rewrite, batch norms folded, + static 'SAME' padding, + the frozen
    CPU graph (models/frozen.py; the default on a CPU at fp32), each added in turn."""
    weights = ENCODERS[name]
    variants = {}
    for label, skipped in [
        ("none", ("fold_batchnorm", "static_same_padding")),
        ("folded", ("static_same_padding",)),
        ("folded+static-same", ()),
    ]:
        with contextlib.ExitStack() as stack:
            for rewrite in skipped:
                stack.enter_context(mock.patch(f"models.encoders.{rewrite}", _unchanged))
            variants[label] = dataclasses.replace(
                load_encoder(name, weights, device), cpu_graph=False
            )
    variants["+frozen-graph"] = load_encoder(name, weights, device)
    for encoder in variants.values():
        encoder(batch)
    rates: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(repeats):
        for label, encoder in variants.items():
            rates[label].append(tiles_per_s(encoder, batch))
    base = statistics.median(rates["none"])
    for label, rate in rates.items():
        print(
            f"{name:20s} rewrites {label:20s} {statistics.median(rate):8.1f} tiles/s "
            f"({statistics.median(rate) / base:.2f} x none)",
            flush=True,
        )


if __name__ == "__main__":
    main()
