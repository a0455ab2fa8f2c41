"""``wsi demo``: the whole pipeline on a synthetic cohort, offline, in a few minutes.

Writes synthetic H&E-like slides (tumour types as architectures, immune infiltration as
lymphocyte density) with a labels table, tiles and embeds them with the offline
EfficientNet-Lite0, cross-validates an ABMIL head on tumour type + immune score, draws
attention heatmaps and prints a summary with the time of each stage.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEMO_FOLDS = 4
HEATMAP_SLIDES = 3


@dataclass
class DemoResult:
    """What the demo made: folders, counts, stage times (s) and cross-validated metrics."""

    out_dir: Path
    folds: int = DEMO_FOLDS
    n_slides: int = 0
    n_tiles: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    heatmaps: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        """A short printable report."""
        t = self.metrics.get("tasks", {})
        auc = t.get("tumour_type", {}).get("auc_macro")
        bacc = t.get("tumour_type", {}).get("balanced_accuracy")
        rho = t.get("immune_score", {}).get("spearman")
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
        out = self.out_dir
        return "\n".join(
            [
                f"wsi demo: {self.n_slides} synthetic slides, {self.n_tiles} tiles "
                f"(224 px at 0.5 µm/px), total {sum(self.seconds.values()):.0f} s",
                f"  stages: {stages}",
                f"  tumour type ({self.folds}-fold CV, ABMIL): AUC {_fmt(auc)}, "
                f"balanced accuracy {_fmt(bacc)}",
                f"  immune score: Spearman {_fmt(rho)}",
                f"  slides + labels:  {out / 'cohort'}",
                f"  tiles, features:  {out / 'embed'} (manifest.csv, patches/, features/, qc/)",
                f"  model + metrics:  {out / 'run'} (metrics.json, predictions.csv, model.pt)",
                f"  heatmaps:         {out / 'heatmaps'}",
            ]
        )


def demo_folds(labels_csv: Path) -> int:
    """:data:`DEMO_FOLDS`, or fewer when a tumour type has fewer patients (small cohorts)."""
    import pandas as pd

    table = pd.read_csv(labels_csv, dtype=str)
    patients = table.groupby("tumour_type")["patient_id"].nunique().min()
    return max(2, min(DEMO_FOLDS, int(patients)))


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _timed(result: DemoResult, stage: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    value = fn()
    result.seconds[stage] = time.perf_counter() - start
    return value


def run_demo(
    out_dir: str | os.PathLike[str] = "demo_out",
    *,
    n_slides: int = 24,
    seed: int = 0,
    epochs: int = 30,
    size_px: tuple[int, int] | None = None,
    progress: bool = True,
) -> DemoResult:
    """Run the demo into ``out_dir`` and return what it made (deterministic given ``seed``).

    ``size_px`` (width, height at 0.5 µm/px) shrinks the slides, e.g. for tests.
    """
    from models.atomic import write_text_atomic
    from models.training import TrainConfig
    from wsi.pipeline.embed import embed_archive
    from wsi.pipeline.heatmap import heatmap_run
    from wsi.pipeline.train import train_run
    from wsi.synthetic.cohort import write_cohort

    out = Path(out_dir)
    result = DemoResult(out)
    slides, labels = _timed(
        result,
        "slides",
        lambda: write_cohort(
            out / "cohort", n_slides=n_slides, seed=seed, size_px=size_px, progress=progress
        ),
    )
    rows = _timed(
        result, "tile+embed", lambda: embed_archive(slides, out / "embed", progress=progress)
    )
    result.n_slides = len(rows)
    result.n_tiles = sum(int(r["n_tiles"]) for r in rows)
    features = out / "embed" / "features" / "efficientnet_lite0"
    config = TrainConfig(epochs=epochs, seed=seed)
    result.folds = demo_folds(labels)
    cv, _ = _timed(
        result,
        "train",
        lambda: train_run(
            features,
            labels,
            out / "run",
            classify=["tumour_type"],
            regress=["immune_score"],
            folds=result.folds,
            config=config,
            progress=progress,
        ),
    )
    result.metrics = cv.metrics

    def heatmaps() -> list[Path]:
        written = []
        for path in slides[:HEATMAP_SLIDES]:
            sid = path.name.rsplit(".", 1)[0]
            written += heatmap_run(
                out / "run" / "model.pt",
                path,
                features / f"{sid}.h5",
                out / "heatmaps" / f"{sid}.png",
            )
        return written

    result.heatmaps = _timed(result, "heatmaps", heatmaps)
    write_text_atomic(
        out / "demo_summary.json",
        json.dumps(
            {
                "n_slides": result.n_slides,
                "n_tiles": result.n_tiles,
                "seconds": result.seconds,
                "metrics": result.metrics,
            },
            indent=2,
        ),
    )
    return result
