"""Training epoch time with bags streamed from HDF5 ÷ the same with bags in RAM, in one run.

    python3 benchmarks/training.py [--bags 1000] [--tiles 2000] [--dim 1024] [--epochs 2]
                                   [--workers 0] [--device cpu] [--repeats 2]

Writes ``--bags`` feature files of ``--tiles`` x ``--dim`` float32 under ``--data`` (default
/tmp/wsi_bench_training; kept and reused by later runs of the same size), then trains
``models.training.train`` (gated ABMIL, one binary target, no validation split) for
``--epochs`` epochs on (a) ``wsi.cohort.load_cohort(cache=False)`` bags, which read each
file on every access, and (b) the same bags in RAM. Runs alternate (memory, stream, memory,
…) so that load from other processes hits both alike; the median seconds per epoch of each
and their ratio (target ≤ 1.2) are printed.

When the whole cohort does not fit under ``wsi.cohort.default_cache_bytes()`` (the default
1000 x 2000 x 1024 is 8 GB), (b) cycles through as many distinct bags as fit: the compute
per bag is the same. Streamed reads come from the OS page cache when the files fit in it
(likely just after writing them), so this measures HDF5 decoding and copying, not a cold
disk. Not a test: numbers depend on the machine.

    python3 benchmarks/training.py --survival [--bags 200] [--tiles 500] [--dim 256]

instead compares, on in-memory bags, an epoch of a survival head (Cox with its risk memory,
and the discrete-time NLL) with an epoch of the same head on a binary target, alternating
runs; it prints the median seconds per epoch and survival / classification (target <= 1.3).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models.training import TrainConfig, train
from wsi.cohort import default_cache_bytes, load_cohort
from wsi.store.h5 import FeatureBag, FeatureWriter

ATTRS = {"patch_size": 224, "patch_level": 0, "downsample": [1.0, 1.0], "name": "bench"}


def write_bags(folder: Path, n_bags: int, n_tiles: int, dim: int) -> None:
    """``bag_XXXXX.h5`` files of seeded noise; files of the right shape are kept."""
    rng = np.random.default_rng(0)
    coords = np.stack([np.arange(n_tiles) * 224, np.zeros(n_tiles)], axis=1)
    start = time.perf_counter()
    written = 0
    for i in range(n_bags):
        path = folder / f"bag_{i:05d}.h5"
        if path.exists() and FeatureBag(path).shape == (n_tiles, dim):
            continue
        rows = rng.standard_normal((n_tiles, dim), dtype=np.float32)
        with FeatureWriter(path, coords, ATTRS, {}, dim, {"encoder": "bench"}) as w:
            w.write(0, rows)
            w.commit()
        written += 1
    if written:
        seconds = time.perf_counter() - start
        print(f"wrote {written} files in {seconds:.1f} s ({folder})")


def in_memory(bags, limit_bytes: int) -> tuple[list[np.ndarray], int]:
    """All bags as arrays, or the first k that fit under ``limit_bytes``, cycled."""
    per_bag = bags.nbytes // max(len(bags), 1)
    k = max(1, min(len(bags), limit_bytes // max(per_bag, 1)))
    pool = [bags[i] for i in range(k)]
    return [pool[i % k] for i in range(len(bags))], k


def seconds_per_epoch(
    bags, labels: pd.DataFrame, config: TrainConfig, task: str = "classification"
) -> float:
    start = time.perf_counter()
    if task == "classification":
        train(bags, labels, classify=["y"], config=config, progress=False)
    else:
        train(bags, labels, survival=["t:e"], config=config, progress=False)
    if config.device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / config.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=1000)
    parser.add_argument("--tiles", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=Path("/tmp/wsi_bench_training"))
    parser.add_argument("--survival", action="store_true", help="survival ÷ classification epoch")
    args = parser.parse_args()
    if args.survival:
        compare_survival(args)
        return

    folder = args.data / f"{args.bags}x{args.tiles}x{args.dim}"
    write_bags(folder, args.bags, args.tiles, args.dim)
    labels = pd.DataFrame(
        {"slide_id": [f"bag_{i:05d}" for i in range(args.bags)], "y": np.arange(args.bags) % 2}
    )
    streamed = load_cohort(folder, labels, cache=False).bags

    start = time.perf_counter()
    for i in range(len(streamed)):
        streamed[i]
    read_s = time.perf_counter() - start
    print(
        f"read all {len(streamed)} bags once: {read_s:.2f} s "
        f"({streamed.nbytes / read_s / 2**30:.2f} GiB/s, {1000 * read_s / len(streamed):.1f} ms/bag)"
    )
    memory, distinct = in_memory(streamed, default_cache_bytes())
    print(
        f"bags={args.bags} tiles={args.tiles} dim={args.dim} ({streamed.nbytes / 2**30:.2f} GiB) "
        f"in-memory distinct bags={distinct} epochs={args.epochs} workers={args.workers} "
        f"device={args.device} threads={torch.get_num_threads()}"
    )

    config = TrainConfig(
        epochs=args.epochs,
        val_fraction=0,
        device=args.device,
        num_workers=args.workers,
        precision="fp32",
    )
    times: dict[str, list[float]] = {"memory": [], "stream": []}
    for repeat in range(args.repeats):
        for name, bags in (("memory", memory), ("stream", streamed)):
            times[name].append(seconds_per_epoch(bags, labels, config))
            print(f"  repeat {repeat + 1} {name:6s} {times[name][-1]:.2f} s/epoch")
    mem_s, stream_s = statistics.median(times["memory"]), statistics.median(times["stream"])
    print(
        f"s/epoch: memory {mem_s:.2f}, streamed {stream_s:.2f}; "
        f"streamed / memory = {stream_s / mem_s:.3f} (target <= 1.2)"
    )


def compare_survival(args: argparse.Namespace) -> None:
    """Epoch of a Cox and of a discrete-time survival head ÷ epoch of a classification head."""
    rng = np.random.default_rng(0)
    bags = [rng.standard_normal((args.tiles, args.dim), dtype=np.float32) for _ in range(args.bags)]
    labels = pd.DataFrame(
        {
            "slide_id": [f"bag_{i:05d}" for i in range(args.bags)],
            "y": np.arange(args.bags) % 2,
            "t": rng.uniform(1, 60, args.bags).round(1),
            "e": (rng.random(args.bags) < 0.6).astype(int),
        }
    )
    print(
        f"survival vs classification: bags={args.bags} tiles={args.tiles} dim={args.dim} "
        f"epochs={args.epochs} device={args.device} threads={torch.get_num_threads()}"
    )
    base = {"epochs": args.epochs, "val_fraction": 0, "device": args.device, "precision": "fp32"}
    runs = {
        "classification": ("classification", TrainConfig(**base)),
        "cox": ("survival", TrainConfig(**base, survival_loss="cox")),
        "nll": ("survival", TrainConfig(**base, survival_loss="nll")),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name, (task, config) in runs.items():
            times[name].append(seconds_per_epoch(bags, labels, config, task))
            print(f"  repeat {repeat + 1} {name:14s} {times[name][-1]:.3f} s/epoch")
    median = {name: statistics.median(values) for name, values in times.items()}
    for name in ("cox", "nll"):
        print(
            f"s/epoch: {name} {median[name]:.3f}, classification {median['classification']:.3f}; "
            f"{name} / classification = {median[name] / median['classification']:.3f} "
            "(target <= 1.3)"
        )


if __name__ == "__main__":
    main()
