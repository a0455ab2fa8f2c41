"""Local vs Ray backend of ``embed_archive`` on this machine, as ratios measured in one run.

Prints:
1. slides/hour of the local backend and of a local Ray cluster (``ray.init(num_cpus=C)``,
   one task per slide, one encoder thread per task) with the default encoder, and
   Ray ÷ local;
2. Ray's overhead per slide: (Ray - local) wall time per slide with a near-free encoder
   (so tiling + scheduling + task start + result collection dominate), both on one core
   (a 1-CPU Ray cluster vs one torch thread), after the workers have loaded the model.

Each figure is the median of ``--repeats`` runs into fresh output folders.

Usage: python benchmarks/ray_embedding.py [--slides 8] [--tiles-side 6] [--cpus 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from embedding import write_biopsies  # benchmarks/embedding.py (run as a script)
from torch import nn

from models.encoders import encoder_from_module, load_encoder
from wsi.pipeline.embed import embed_archive


class _MeanColour(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def timed(archive: Path, work: Path, encoder, backend: str, batch_size: int) -> float:
    out = work / f"out-{backend}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    rows = embed_archive(
        [archive], out, encoder=encoder, batch_size=batch_size, progress=False, backend=backend
    )
    seconds = time.perf_counter() - start
    assert all(r["status"] == "ok" for r in rows), rows
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--tiles-side", type=int, default=6, help="tiles per slide = side²")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="wsi-ray-bench-"))
    try:
        n_tiles = write_biopsies(work / "slides", args.slides, args.tiles_side)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        real = load_encoder("efficientnet_lite0", device="cpu")
        cheap = encoder_from_module(_MeanColour(), 3, 32, (0.5,) * 3, (0.25,) * 3, name="mean")
        print(
            f"{args.slides} slides x {n_tiles // args.slides} tiles, {args.cpus} CPUs, "
            f"torch threads {torch.get_num_threads()}",
            flush=True,
        )
        results: dict[str, list[float]] = {}

        def measure(name, enc):
            timed(work / "slides", work, enc, "ray", args.batch_size)  # workers load the model
            for _ in range(args.repeats):
                for backend in ("local", "ray"):
                    seconds = timed(work / "slides", work, enc, backend, args.batch_size)
                    results.setdefault(f"{name}-{backend}", []).append(seconds)

        measure("real", real)
        ray.shutdown()
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        measure("cheap", cheap)
        torch.set_num_threads(threads)
        med = {k: statistics.median(v) for k, v in results.items()}
        per_hour = {b: 3600 * args.slides / med[f"real-{b}"] for b in ("local", "ray")}
        print(
            f"efficientnet_lite0: local {per_hour['local']:.0f} slides/h "
            f"({n_tiles / med['real-local']:.1f} tiles/s), Ray {per_hour['ray']:.0f} slides/h "
            f"({n_tiles / med['real-ray']:.1f} tiles/s); Ray / local = "
            f"{per_hour['ray'] / per_hour['local']:.2f}"
        )
        overhead = (med["cheap-ray"] - med["cheap-local"]) / args.slides
        print(
            f"near-free encoder, one core: local {med['cheap-local'] / args.slides:.2f} s/slide, "
            f"Ray {med['cheap-ray'] / args.slides:.2f} s/slide; Ray overhead "
            f"{overhead:+.2f} s/slide"
        )
        print("runs (s):", {k: [round(x, 2) for x in v] for k, v in results.items()})
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
