"""``wsi predict``: apply a trained MIL head to every slide of a features folder, as a
function a notebook can call too."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.atomic import write_atomic
from wsi.cohort import feature_files
from wsi.errors import FeatureFileError
from wsi.store.h5 import FeatureBag

_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zip": "zip", ".xz": "xz", ".zst": "zstd"}
"""pandas' compression for an ``--out`` suffix, as ``to_csv`` would infer it from the name."""


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
            frames.append(
                models.predict(
                    trained,
                    [bag.load()],
                    [slide_id],
                    encoder=bag.encoder or None,
                    on_attention=on_attention,
                )
            )
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
    frame = (
        pd.concat(rows, ignore_index=True) if rows else pd.DataFrame({"slide_id": [], "error": []})
    )
    order = {sid: i for i, sid in enumerate(files)}
    frame = frame.sort_values("slide_id", key=lambda ids: ids.map(order), kind="stable")
    frame = frame[[c for c in frame.columns if c != "error"] + ["error"]].reset_index(drop=True)
    if out_csv is not None:
        compression = _COMPRESSION.get(Path(out_csv).suffix.lower())  # the temporary has no suffix
        write_atomic(out_csv, lambda tmp: frame.to_csv(tmp, index=False, compression=compression))
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
        write_atomic(folder / f"{slide_id}.csv", lambda tmp: table.to_csv(tmp, index=False))

    return write
