"""Train, apply and look at MIL heads on feature folders: what ``wsi train``, ``wsi predict``
and ``wsi heatmap`` do, as functions a notebook can call too.

The models themselves (ABMIL, CLAM-SB, TransMIL, mean-pool) and the training loop live in
``models``; this module joins them to feature files, labels tables and slides.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsi.cohort import Cohort, load_cohort
from wsi.errors import LabelsError
from wsi.heatmap import attention_overlay, save_png, tiles_geojson, top_tiles_mosaic

HEATMAP_LONG_SIDE_PX = 2048
TOP_TILES = 16


def train_run(
    features_dir: str | os.PathLike[str],
    labels: str | os.PathLike[str] | pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    classify: Sequence[str] = (),
    regress: Sequence[str] = (),
    arch: str = "abmil",
    folds: int = 5,
    config: Any = None,
    progress: bool = True,
) -> tuple[Any, Cohort]:
    """Cross-validate ``arch`` on the cohort, then train the final model on every slide.

    Writes ``RUN/metrics.json``, ``RUN/predictions.csv`` (out-of-fold), ``RUN/fold_<k>/``
    and ``RUN/model.pt``. Returns the cross-validation result and the cohort used.
    """
    import models

    classify, regress = list(classify), list(regress)
    if not classify and not regress:
        raise LabelsError("name at least one target: --classify COL and/or --regress COL ...")
    if folds < 2:
        raise LabelsError(f"--folds must be at least 2 for cross-validation, got {folds}")
    cohort = load_cohort(features_dir, labels, targets=classify + regress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels_table = cohort.labels.reset_index(drop=True)
    cv = models.cross_validate(
        cohort.bags, labels_table, classify=classify, regress=regress, folds=folds, arch=arch,
        config=config, out_dir=out, encoder=cohort.encoder, progress=progress,
    )
    final = models.train(
        cohort.bags, labels_table, classify=classify, regress=regress, arch=arch, config=config,
        encoder=cohort.encoder, progress=progress,
    )
    final.save(out / "model.pt")
    return cv, cohort


def _all_slides_cohort(features_dir: str | os.PathLike[str]) -> Cohort:
    ids = sorted(p.stem for p in Path(features_dir).glob("*.h5") if not p.name.startswith("."))
    return load_cohort(features_dir, pd.DataFrame({"slide_id": ids}))


def predict_run(
    checkpoint: str | os.PathLike[str],
    features_dir: str | os.PathLike[str],
    out_csv: str | os.PathLike[str] | None = None,
    *,
    attention_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Predict every slide of a features folder with a checkpoint.

    Refuses features of another encoder or dim. With ``attention_dir``, writes
    ``{slide_id}.csv`` there: ``x, y`` (level-0 top-left) and ``attention_<task>`` per tile.
    """
    import models

    trained = models.load_checkpoint(checkpoint)
    cohort = _all_slides_cohort(features_dir)
    if cohort.feature_dim != trained.feature_dim:
        raise models.CheckpointError(
            f"{checkpoint}: the model expects {trained.feature_dim}-d features "
            f"(encoder {trained.encoder!r}) but {features_dir} holds {cohort.feature_dim}-d "
            "features; embed the slides with the model's encoder"
        )
    on_attention = None
    if attention_dir is not None:
        folder = Path(attention_dir)
        folder.mkdir(parents=True, exist_ok=True)
        coords_of = dict(zip(cohort.slide_ids, cohort.bags.files, strict=True))

        def on_attention(slide_id: str, maps: dict[str, np.ndarray]) -> None:
            xy = coords_of[slide_id].coords()
            table = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]})
            for task, values in maps.items():
                table[f"attention_{task}"] = values
            table.to_csv(folder / f"{slide_id}.csv", index=False)

    frame = models.predict(
        trained, cohort.bags, cohort.slide_ids, encoder=cohort.encoder or None,
        on_attention=on_attention, progress=progress,
    )
    if out_csv is not None:
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out_csv, index=False)
    return frame


def heatmap_run(
    checkpoint: str | os.PathLike[str],
    slide_path: str | os.PathLike[str],
    features_h5: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    *,
    slide_mpp: float | None = None,
    top_k: int = TOP_TILES,
) -> list[Path]:
    """Attention heatmaps of one slide: per task a PNG overlay (``OUT`` for the first task,
    ``OUT_<task>.png`` for the others), a GeoJSON of tiles with attention and scores as
    QuPath measurements, and a mosaic of the ``top_k`` most attended tiles per task."""
    import models
    from wsi.slide import open_slide
    from wsi.store import read_tile_file

    trained = models.load_checkpoint(checkpoint)
    tiles = read_tile_file(features_h5)
    if tiles.features is None:
        raise models.CheckpointError(f"{features_h5}: no features dataset; pass a features file")
    encoder = (tiles.features_attrs or {}).get("encoder") or None
    maps: dict[str, np.ndarray] = {}
    frame = models.predict(
        trained, [tiles.features], ["slide"], encoder=encoder,
        on_attention=lambda _, m: maps.update(m),
    )
    out = Path(out_png)
    written: list[Path] = []
    with open_slide(slide_path, mpp=slide_mpp) as slide:
        attrs = tiles.coords_attrs
        size_level0 = _tile_size_level0(attrs, slide)
        downsample = max(max(slide.dimensions) / HEATMAP_LONG_SIDE_PX, 1.0)
        thumbnail = slide.read_thumbnail(downsample)
        measurements: dict[str, np.ndarray] = {}
        for i, (task, attention) in enumerate(maps.items()):
            prediction = frame.iloc[0][f"{task}_pred"]
            title = f"{slide.slide_id}: {task} attention (prediction: {_short(prediction)})"
            image = attention_overlay(
                thumbnail, downsample, tiles.coords, size_level0, attention,
                label=f"attention ({task})", title=title,
            )
            path = out if i == 0 else out.with_name(f"{out.stem}_{task}.png")
            written.append(save_png(image, path))
            measurements[f"attention_{task}"] = attention
            if len(attention):
                top = np.argsort(-attention)[:top_k]
                patches = [_read_tile(slide, tiles.coords[j], size_level0, attrs) for j in top]
                mosaic = top_tiles_mosaic(
                    np.stack(patches), attention[top], title=f"top {len(top)} tiles: {task}"
                )
                written.append(save_png(mosaic, out.with_name(f"{out.stem}_{task}_top.png")))
        geojson = tiles_geojson(tiles.coords, size_level0, measurements)
        geo_path = out.with_suffix(".geojson")
        import json

        tmp = geo_path.with_name(f".{geo_path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(geojson))
        os.replace(tmp, geo_path)
        written.append(geo_path)
    return written


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float | np.floating) else str(value)


def _tile_size_level0(attrs: dict[str, Any], slide: Any) -> float:
    """Exact tile side in level-0 px from a coords file's attributes."""
    if attrs.get("tile_size_um") and slide.mpp_or_none:
        return float(attrs["tile_size_um"]) / slide.mpp
    if attrs.get("patch_size_level0"):
        return float(attrs["patch_size_level0"])
    downsample = attrs.get("downsample", [1.0])
    return float(attrs.get("patch_size", 224)) * float(np.ravel(downsample)[0])


def _read_tile(slide: Any, xy: np.ndarray, size_level0: float, attrs: dict[str, Any]) -> np.ndarray:
    size = int(attrs.get("target_patch_size") or attrs.get("patch_size") or 224)
    level = int(attrs.get("patch_level", 0))
    level = min(level, slide.level_count - 1)
    return slide.read_patch(float(xy[0]), float(xy[1]), size_level0, size, level)
