"""``wsi train``: cross-validate a MIL head on a features folder and a labels table, as a
function a notebook can call too.

The models themselves (ABMIL, CLAM-SB, TransMIL, mean-pool) and the training loop live in
``models``; this module joins them to feature files and labels tables. ``wsi predict`` and
``wsi heatmap`` are :mod:`wsi.pipeline.predict` and :mod:`wsi.pipeline.heatmap`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from models.defaults import DEFAULT_HEAD
from wsi.cohort import Cohort, load_cohort
from wsi.errors import LabelsError


def train_run(
    features_dir: str | os.PathLike[str],
    labels: str | os.PathLike[str] | pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    classify: Sequence[str] = (),
    regress: Sequence[str] = (),
    arch: str = DEFAULT_HEAD,
    folds: int = 5,
    config: Any = None,
    progress: bool = True,
    survival: Sequence[str] = (),
    survival_times: Sequence[float] = (12, 24, 36),
    treatment: str | None = None,
) -> tuple[Any, Cohort]:
    """Cross-validate ``arch`` on the cohort, then train the final model on every slide.

    Writes ``RUN/fold_<k>/``, ``RUN/predictions.csv`` (out-of-fold), ``RUN/model.pt`` and,
    last, ``RUN/metrics.json``: the run is finished when metrics.json exists. Every file is
    written atomically. Re-run after a crash, it reuses the folds already finished with the
    same feature files (names, sizes, mtimes), labels and settings, and ends with the same
    outputs as an uninterrupted run. Returns the cross-validation result (``.final`` is the
    final model) and the cohort used.

    ``survival``: ``"time_col:event_col"`` targets (see :func:`models.cross_validate`);
    each also gets ``RUN/km_<time col>.png``, Kaplan-Meier curves of the out-of-fold risk
    groups (one row per patient) with the number at risk.
    """
    import models

    classify, regress, survival = list(classify), list(regress), list(survival)
    if not classify and not regress and not survival:
        raise LabelsError(
            "name at least one target: --classify COL, --regress COL or --survival TIME:EVENT"
        )
    if folds < 2:
        raise LabelsError(f"--folds must be at least 2 for cross-validation, got {folds}")
    columns = [c for spec in survival for c in spec.split(":")] + ([treatment] if treatment else [])
    cohort = load_cohort(features_dir, labels, targets=classify + regress + columns)
    with _run_folder_lock(Path(out_dir)):
        cv = models.cross_validate(
            cohort.bags,
            cohort.labels.reset_index(drop=True),
            classify=classify,
            regress=regress,
            folds=folds,
            arch=arch,
            config=config,
            out_dir=Path(out_dir),
            encoder=cohort.encoder,
            progress=progress,
            refit=True,
            data_key=_features_key(cohort),
            survival=survival,
            survival_times=survival_times,
            treatment=treatment,
        )
        for spec in survival:
            _km_figure(cv, cohort, spec.split(":")[0], Path(out_dir))
    return cv, cohort


def _km_figure(cv: Any, cohort: Cohort, task: str, out_dir: Path) -> Path:
    """``RUN/km_<task>.png`` from the out-of-fold predictions, one row per patient."""
    from wsi.viz.km import km_plot

    table = cv.predictions.copy()
    labels = cohort.labels.reset_index(drop=True)
    table["patient"] = (
        labels["patient_id"].astype(str) if "patient_id" in labels.columns else table["slide_id"]
    )
    table = table.dropna(subset=[f"{task}_time", f"{task}_group"])
    patients = table.groupby("patient", sort=False).first()
    entry = cv.metrics["tasks"][task]
    p = entry.get("logrank_p")
    title = f"{task}: out-of-fold risk groups" + (
        f", log-rank p = {p:.3g}" if p is not None else ""
    )
    return km_plot(
        time=patients[f"{task}_time"],
        event=patients[f"{task}_event"],
        group=patients[f"{task}_group"],
        out_png=out_dir / f"km_{task}.png",
        title=title,
    )


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
