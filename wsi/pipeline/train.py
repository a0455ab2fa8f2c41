"""Train, apply and look at MIL heads on feature folders: what ``wsi train``, ``wsi predict``
and ``wsi heatmap`` do, as functions a notebook can call too.

The models themselves (ABMIL, CLAM-SB, TransMIL, mean-pool) and the training loop live in
``models``; this module joins them to feature files, labels tables and slides.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsi.cohort import Cohort, feature_files, load_cohort
from wsi.errors import FeatureFileError, LabelsError
from wsi.store.h5 import FeatureBag
from wsi.viz.heatmap import attention_overlay, save_png, tiles_geojson, top_tiles_mosaic

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

    Writes ``RUN/fold_<k>/``, ``RUN/predictions.csv`` (out-of-fold), ``RUN/model.pt`` and,
    last, ``RUN/metrics.json``: the run is finished when metrics.json exists. Every file is
    written atomically. Re-run after a crash, it reuses the folds already finished with the
    same feature files (names, sizes, mtimes), labels and settings, and ends with the same
    outputs as an uninterrupted run. Returns the cross-validation result (``.final`` is the
    final model) and the cohort used.
    """
    import models

    classify, regress = list(classify), list(regress)
    if not classify and not regress:
        raise LabelsError("name at least one target: --classify COL and/or --regress COL ...")
    if folds < 2:
        raise LabelsError(f"--folds must be at least 2 for cross-validation, got {folds}")
    cohort = load_cohort(features_dir, labels, targets=classify + regress)
    with _run_folder_lock(Path(out_dir)):
        cv = models.cross_validate(
            cohort.bags, cohort.labels.reset_index(drop=True), classify=classify,
            regress=regress, folds=folds, arch=arch, config=config, out_dir=Path(out_dir),
            encoder=cohort.encoder, progress=progress, refit=True,
            data_key=_features_key(cohort),
        )
    return cv, cohort


def _run_folder_lock(run_dir: Path) -> Any:
    """The lock of a run folder (``RUN/.locks/run.lock``): one ``wsi train`` writes it at a time."""
    from wsi.errors import OutputFolderError
    from wsi.store.folder import FileLock, lock_holder

    path = run_dir / ".locks" / "run.lock"
    lock = FileLock.try_acquire(path)
    if lock is None:
        holder = lock_holder(path) or {}
        raise OutputFolderError(
            f"{run_dir} is being written by another wsi train (host {holder.get('host', '?')}, "
            f"pid {holder.get('pid', '?')}); wait for it to finish or pass another --out"
        )
    return lock


def _features_key(cohort: Cohort) -> str:
    """SHA-256 of the cohort's feature files as they are on disk: encoder, dim, and each
    file's name, size and mtime (ns), in cohort order. A re-embedded or edited file changes
    it; reading the features is not needed."""
    files = []
    for path in cohort.bags.paths:
        stat = path.stat()
        files.append([path.name, stat.st_size, stat.st_mtime_ns])
    text = json.dumps([cohort.encoder, cohort.feature_dim, files])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def predict_run(
    checkpoint: str | os.PathLike[str],
    features_dir: str | os.PathLike[str],
    out_csv: str | os.PathLike[str] | None = None,
    *,
    attention_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Predict every slide of a features folder with a checkpoint, one slide at a time.

    Returns (and writes to ``out_csv``) one row per ``{slide_id}.h5`` with tiles: the
    model's prediction columns, then ``error``: empty for a predicted slide, else why its
    file was not used (truncated, wrong shape, NaN values, another encoder or dim) and the
    fix; such rows have no predictions, and the other slides are still predicted. Raises
    :class:`~models.CheckpointError` when no file has the model's feature dim and encoder,
    :class:`FeatureFileError` when none can be read. With ``attention_dir``, writes
    ``{slide_id}.csv`` there: ``x, y`` (level-0 top-left) and ``attention_<task>`` per tile.
    """
    from tqdm.auto import tqdm

    import models

    trained = models.load_checkpoint(checkpoint)
    folder = Path(attention_dir) if attention_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    frames: list[pd.DataFrame] = []
    failed: dict[str, str] = {}
    mismatched: list[str] = []
    files = feature_files(Path(features_dir))
    for slide_id, path in tqdm(files.items(), desc="predict", unit="slide", disable=not progress):
        try:
            bag = FeatureBag(path)
            mismatch = _model_mismatch(bag, trained)
            if mismatch:
                failed[slide_id] = f"{path}: {mismatch}"
                mismatched.append(slide_id)
                continue
            if len(bag) == 0:
                continue  # no tissue: nothing to predict (the manifest says no_tissue)
            on_attention = None if folder is None else _attention_writer(folder, bag)
            frames.append(models.predict(trained, [bag.load()], [slide_id],
                                         encoder=bag.encoder or None, on_attention=on_attention))
        except FeatureFileError as exc:
            failed[slide_id] = str(exc)
    if not frames and mismatched:
        raise models.CheckpointError(
            f"{checkpoint}: no feature file in {features_dir} fits the model: "
            f"{failed[mismatched[0]]}"
        )
    if not frames and failed:
        raise FeatureFileError(
            f"no usable feature file in {features_dir} ({len(failed)} failed); first: "
            f"{next(iter(failed.values()))}"
        )
    rows = [frame.assign(error="") for frame in frames]
    rows += [pd.DataFrame({"slide_id": [sid], "error": [msg]}) for sid, msg in failed.items()]
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame({"slide_id": [],
                                                                          "error": []})
    order = {sid: i for i, sid in enumerate(files)}
    frame = frame.sort_values("slide_id", key=lambda ids: ids.map(order), kind="stable")
    frame = frame[[c for c in frame.columns if c != "error"] + ["error"]].reset_index(drop=True)
    if out_csv is not None:
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out_csv, index=False)
    return frame


def _model_mismatch(bag: FeatureBag, trained: Any) -> str:
    """Why ``bag`` cannot go through the model (another dim or encoder), or ""."""
    other_encoder = bag.encoder and trained.encoder and bag.encoder != trained.encoder
    if bag.feature_dim == trained.feature_dim and not other_encoder:
        return ""
    return (
        f"{bag.feature_dim}-d features from encoder {bag.encoder or 'unknown'!r}, but the model "
        f"expects {trained.feature_dim}-d features from encoder {trained.encoder!r}; embed "
        f"the slide with {trained.encoder!r}"
    )


def _attention_writer(folder: Path, bag: FeatureBag) -> Any:
    """An ``on_attention`` callback writing ``folder/{slide_id}.csv``: x, y, attention_<task>."""

    def write(slide_id: str, maps: dict[str, np.ndarray]) -> None:
        xy = bag.coords()
        table = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]})
        for task, values in maps.items():
            table[f"attention_{task}"] = values
        table.to_csv(folder / f"{slide_id}.csv", index=False)

    return write


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
    from wsi.io.slide import open_slide
    from wsi.store.h5 import read_tile_file

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
