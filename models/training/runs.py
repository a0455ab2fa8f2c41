"""Run folders of cross-validation: what a re-run keeps, run keys, finished markers."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from models.atomic import remove_stale_temporaries
from models.device import resolve_device
from models.errors import CheckpointError
from models.training.checkpoint import TrainedModel, load_checkpoint
from models.training.config import TrainConfig
from models.training.labels import _Labels
from models.version import library_version

FINISHED_RUN = "metrics.json"  # written last: a run folder is finished when it exists
FINISHED_FOLD = "metrics.json"  # in fold_<k>/, written last: the fold is finished
RUN_KEY_VERSION = 1
_FOLD_DIR = re.compile(r"fold_(\d+)")


def _start_run(out: Path, folds: int, run_key: str | None) -> None:
    """Make ``out`` hold nothing of an earlier run but this run's finished folds: its
    metrics.json goes first (the folder must never look finished), then predictions.csv,
    model.pt, every fold folder that is not a finished fold of ``run_key`` (another run's,
    unfinished, or beyond ``folds``) and temporaries left by killed writers."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (FINISHED_RUN, "predictions.csv", "model.pt"):
        (out / name).unlink(missing_ok=True)
    for fold_dir in out.iterdir():
        match = _FOLD_DIR.fullmatch(fold_dir.name)
        if not match or not fold_dir.is_dir():
            continue
        if run_key is not None and int(match.group(1)) < folds and _fold_key(fold_dir) == run_key:
            continue
        _remove_fold(fold_dir)
    remove_stale_temporaries(out)


def _fold_key(fold_dir: Path) -> str | None:
    """The run key in a finished fold's metrics.json; None for an unfinished fold."""
    try:
        key = json.loads((fold_dir / FINISHED_FOLD).read_text(encoding="utf-8")).get("run_key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def _remove_fold(fold_dir: Path) -> None:
    """Delete a fold folder, its completion marker first."""
    (fold_dir / FINISHED_FOLD).unlink(missing_ok=True)
    shutil.rmtree(fold_dir)


def _finished_fold(fold_dir: Path, config: TrainConfig) -> TrainedModel | None:
    """The model of a fold that :func:`_start_run` kept (a finished fold of this run), or
    None after removing a fold whose checkpoint cannot be read."""
    if not (fold_dir / FINISHED_FOLD).is_file():
        return None
    try:
        return load_checkpoint(
            fold_dir / "model.pt", device=str(resolve_device(config.device, mps=False))
        )
    except CheckpointError:
        _remove_fold(fold_dir)
        return None


def _run_key(
    lab: _Labels,
    fold_of: np.ndarray,
    arch: str,
    config: TrainConfig,
    feature_dim: int,
    encoder: str | None,
    data_key: str,
) -> str:
    """SHA-256 of everything that decides a fold's model: bags (``data_key``), slides,
    patients, encoded targets, folds, arch, config (less ``num_workers``, which changes
    nothing), device type and library versions."""
    settings = {k: v for k, v in asdict(config).items() if k != "num_workers"}
    settings["device"] = resolve_device(config.device, mps=False).type
    payload = {
        "version": RUN_KEY_VERSION,
        "library": library_version(),
        "torch": torch.__version__,
        "data": data_key,
        "encoder": encoder,
        "feature_dim": feature_dim,
        "arch": arch,
        "config": settings,
        "tasks": [[t.name, t.kind, list(t.classes or ())] for t in lab.tasks],
        "slide_ids": lab.slide_ids.tolist(),
        "groups": lab.groups.tolist(),
        "targets": {
            name: [None if isinstance(v, float) and math.isnan(v) else v for v in values.tolist()]
            for name, values in lab.values.items()
        },
        "folds": fold_of.tolist(),
    }
    if lab.events:  # survival tasks: the events decide the fold's model too
        payload["events"] = {name: values.tolist() for name, values in lab.events.items()}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
