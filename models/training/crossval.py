"""K-fold cross-validation: out-of-fold predictions, per-fold and mean metrics, CVResult."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from models.atomic import write_text_atomic
from models.defaults import DEFAULT_HEAD
from models.errors import TrainingDataError
from models.metrics import classification_metrics, regression_metrics
from models.mil import TaskSpec
from models.training.bags import _feature_dim
from models.training.checkpoint import TrainedModel
from models.training.config import TrainConfig
from models.training.fit import _fit
from models.training.folds import _assign_folds
from models.training.inference import _infer, _output_shape, _task_columns
from models.training.labels import _encode_labels, _Labels
from models.training.runs import FINISHED_FOLD, FINISHED_RUN, _finished_fold, _run_key, _start_run
from models.training.survival_cv import fold_survival, slide_groups, survival_entry


@dataclass
class CVResult:
    """Cross-validation results: ``metrics`` (the metrics.json dict), out-of-fold
    ``predictions`` (one row per slide), the fold of each slide and each fold's model;
    ``final``: the model trained on every slide (``refit=True``), and ``reused_folds``: the
    folds read back from ``out_dir`` instead of trained (a resumed run)."""

    metrics: dict[str, Any]
    predictions: pd.DataFrame
    folds: np.ndarray
    models: list[TrainedModel]
    final: TrainedModel | None = None
    reused_folds: list[int] = field(default_factory=list)

    def __repr__(self) -> str:
        headline = []
        for task, entry in self.metrics.get("tasks", {}).items():
            scores = [k for k in entry if k not in ("kind", "classes", "per_fold")]
            if scores:
                value = entry[scores[0]]
                shown = "n/a" if value is None else f"{value:.3f}"
                headline.append(f"{task}: {scores[0]} {shown}")
        reused = f", reused folds {self.reused_folds}" if self.reused_folds else ""
        return (
            f"CVResult({self.metrics.get('folds', len(self.models))} folds of "
            f"{len(self.folds)} slides, {self.metrics.get('model')}; {', '.join(headline)}; "
            f"final model: {'yes' if self.final is not None else 'no'}{reused})"
        )

    def summary(self) -> pd.DataFrame:
        """One row per (task, metric): mean and sample sd over folds (NaN folds skipped)."""
        rows = []
        for task, entry in self.metrics["tasks"].items():
            names = [k for k in entry["per_fold"][0] if k not in ("fold", "n", "note")]
            for name in names:
                values = np.array(
                    [np.nan if f[name] is None else f[name] for f in entry["per_fold"]], dtype=float
                )
                values = values[~np.isnan(values)]
                sd = float(values.std(ddof=1)) if values.size > 1 else float("nan")
                mean = float(values.mean()) if values.size else float("nan")
                rows.append({"task": task, "metric": name, "mean": mean, "sd": sd})
        return pd.DataFrame(rows, columns=["task", "metric", "mean", "sd"])


def _json_number(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _fold_metrics(task: TaskSpec, truth: np.ndarray, out: np.ndarray) -> dict[str, float]:
    if task.kind == "classification":
        known = truth >= 0
        return classification_metrics(truth[known], out[known])
    known = ~np.isnan(truth)
    return regression_metrics(truth[known], out[known])


def cross_validate(
    bags: Sequence[Any],
    labels: pd.DataFrame,
    *,
    classify: Sequence[str] = (),
    regress: Sequence[str] = (),
    folds: int = 5,
    arch: str = DEFAULT_HEAD,
    config: TrainConfig | None = None,
    patient_col: str = "patient_id",
    out_dir: str | os.PathLike[str] | None = None,
    encoder: str | None = None,
    progress: bool = True,
    refit: bool = False,
    data_key: str | None = None,
    survival: Sequence[str] = (),
    survival_times: Sequence[float] = (12, 24, 36),
    treatment: str | None = None,
) -> CVResult:
    """K-fold cross-validation grouped by patient and stratified by the first class target.

    Each fold trains on the others (with its own early-stopping split) and predicts its
    slides. Metrics per fold and their mean: AUC (macro one-vs-rest) and balanced accuracy,
    or Spearman, Pearson and MAE (target units). ``refit=True`` then trains the final model
    on every slide (:attr:`CVResult.final`).

    With ``out_dir`` (one run per folder; every file is written atomically):
    ``fold_<k>/model.pt``, ``fold_<k>/curves.csv`` and, last, ``fold_<k>/metrics.json``
    (the fold's scores: the fold is finished); then ``predictions.csv``, ``model.pt``
    (``refit``) and, last of all, ``metrics.json``: the run is finished when it exists.
    Whatever an earlier run left there is removed first (metrics.json before anything
    else), except the finished folds this run can reuse: ``data_key`` identifies the bags'
    contents (``wsi train`` passes a hash of the feature files' names, sizes and mtimes),
    and with it a re-run reuses every finished fold whose bags, labels, folds, arch, config
    (but ``num_workers``), device type and library versions are the same instead of
    retraining it. A crashed run re-run so ends with the outputs of an uninterrupted one
    (bit-identical on CPU with the same number of threads, see :class:`TrainConfig`).

    ``survival``: ``"time_col:event_col"`` targets (risk higher = worse). Per fold and as
    fold means: Harrell's and Uno's C (with bootstrap CIs), cumulative/dynamic AUC at
    ``survival_times`` and the integrated Brier score; on the pooled out-of-fold patients
    the log-rank p and hazard ratio of the risk groups (cut-offs fixed on each fold's
    training slides) and, with ``treatment`` (a two-arm column), the treatment x
    risk-group interaction (likelihood-ratio p). Slides of one patient are averaged.
    """
    config = config or TrainConfig()
    lab = _encode_labels(
        labels, classify, regress, len(bags), patient_col, survival=survival,
        n_bins=config.n_bins,
    )  # fmt: skip
    arms = _treatment_arms(labels, lab, treatment)
    fold_of = _assign_folds(lab, folds, config.seed)
    dim = _feature_dim(bags)
    fit = partial(
        _fit,
        bags,
        lab,
        arch=arch,
        config=config,
        feature_dim=dim,
        encoder=encoder,
        progress=progress,
    )
    out_path = Path(out_dir) if out_dir is not None else None
    run_key = None
    if out_path is not None:
        if data_key is not None:
            run_key = _run_key(lab, fold_of, arch, config, dim, encoder, data_key)
        _start_run(out_path, folds, run_key)
    n = len(bags)
    outputs = {t.name: np.zeros(_output_shape(t, n)) for t in lab.tasks}
    per_fold: dict[str, list[dict[str, Any]]] = {t.name: [] for t in lab.tasks}
    fold_data: dict[str, list[Any]] = {t.name: [] for t in lab.tasks}
    groups = {t.name: np.full(n, None, dtype=object) for t in lab.tasks}
    models, reused = [], []
    for k in tqdm(range(folds), desc="folds", leave=False, disable=not progress):
        test = np.flatnonzero(fold_of == k)
        fold_dir = out_path / f"fold_{k}" if out_path is not None else None
        trained = _finished_fold(fold_dir, config) if fold_dir is not None else None
        if trained is not None:
            reused.append(k)
        else:
            trained = _train_fold(fit, fold_of, k, fold_dir)
        fold_out = _infer(trained, bags, test, lab.slide_ids, num_workers=config.num_workers)
        scores = _score_fold(lab, test, fold_out)
        scores.update(_score_survival(lab, trained, bags, fold_of, k, fold_out, config,
                                      survival_times, fold_data, groups))  # fmt: skip
        for task in lab.tasks:
            outputs[task.name][test] = fold_out[task.name]
            per_fold[task.name].append({"fold": k, **scores[task.name]})
        models.append(trained)
        if fold_dir is not None and k not in reused:
            _save_fold(fold_dir, k, trained, run_key, len(test), scores)

    predictions = _cv_predictions(lab, fold_of, outputs, groups)
    metrics = _cv_metrics(lab, arch, folds, per_fold)
    _add_survival_entries(metrics, lab, fold_data, per_fold, arms, treatment, config)
    if out_path is not None:
        _write_csv(predictions, out_path / "predictions.csv")
    final = fit(np.arange(n), desc="epochs") if refit else None
    if out_path is not None:
        if final is not None:
            final.save(out_path / "model.pt")
        write_text_atomic(out_path / FINISHED_RUN, json.dumps(metrics, indent=2))
    return CVResult(
        metrics=metrics,
        predictions=predictions,
        folds=fold_of,
        models=models,
        final=final,
        reused_folds=reused,
    )


def _train_fold(
    fit: Callable[..., TrainedModel], fold_of: np.ndarray, k: int, fold_dir: Path | None
) -> TrainedModel:
    """Fold ``k``'s model, trained on the other folds (``fold_dir`` made first, so that a
    crash leaves an unfinished fold folder that the next run removes)."""
    if fold_dir is not None:
        fold_dir.mkdir(parents=True, exist_ok=True)
    return fit(np.flatnonzero(fold_of != k), desc=f"fold {k} epochs")


def _score_fold(
    lab: _Labels, test: np.ndarray, fold_out: Mapping[str, np.ndarray]
) -> dict[str, dict[str, Any]]:
    """Per task: the fold's metrics (None where undefined) and ``n``, its slides with a
    known target."""
    scores: dict[str, dict[str, Any]] = {}
    for task in [t for t in lab.tasks if t.kind != "survival"]:
        truth = lab.values[task.name][test]
        found = _fold_metrics(task, truth, fold_out[task.name])
        known = truth >= 0 if task.kind == "classification" else ~np.isnan(truth)
        scores[task.name] = {
            "n": int(known.sum()),
            **{m: _json_number(v) for m, v in found.items()},
        }
    return scores


def _add_survival_entries(
    metrics: dict[str, Any],
    lab: _Labels,
    fold_data: Mapping[str, list[Any]],
    per_fold: Mapping[str, list[dict[str, Any]]],
    arms: Mapping[str, Any] | None,
    treatment: str | None,
    config: TrainConfig,
) -> None:
    n_groups = 2 if config.risk_groups == "median" else 3
    for task in [t for t in lab.tasks if t.kind == "survival"]:
        metrics["tasks"][task.name] = survival_entry(
            task, fold_data[task.name], per_fold[task.name],
            None if arms is None else (str(treatment), arms), n_groups,
            [lab.notes.get(task.name, "")], config.seed,
        )  # fmt: skip


def _score_survival(
    lab: _Labels,
    trained: TrainedModel,
    bags: Sequence[Any],
    fold_of: np.ndarray,
    k: int,
    fold_out: Mapping[str, np.ndarray],
    config: TrainConfig,
    times: Sequence[float],
    fold_data: dict[str, list[Any]],
    groups: dict[str, np.ndarray],
) -> dict[str, dict[str, Any]]:
    """Fold ``k``'s survival scores (the training slides are predicted too: Uno's tau,
    the censoring weights and the Breslow baseline come from them)."""
    tasks = [t for t in lab.tasks if t.kind == "survival"]
    if not tasks:
        return {}
    test, train = np.flatnonzero(fold_of == k), np.flatnonzero(fold_of != k)
    train_out = _infer(trained, bags, train, lab.slide_ids, num_workers=config.num_workers)
    scores = {}
    for task in tasks:
        parts = {"test": (test, fold_out[task.name]), "train": (train, train_out[task.name])}
        data, scores[task.name], _ = fold_survival(lab, task, trained, parts, times)
        fold_data[task.name].append(data)
        groups[task.name][test] = slide_groups(trained, task, fold_out[task.name][:, 0])
    return scores


def _treatment_arms(
    labels: pd.DataFrame, lab: _Labels, treatment: str | None
) -> dict[str, Any] | None:
    """Patient -> treatment arm (blank cells left out), or None without ``treatment``."""
    if treatment is None:
        return None
    if treatment not in labels.columns:
        raise TrainingDataError(
            f"treatment column {treatment!r} not in labels; columns are: {list(labels.columns)}"
        )
    column = labels.reset_index(drop=True)[treatment]
    known = ~(column.isna() | column.astype(str).str.strip().eq("")).to_numpy()
    return dict(zip(lab.groups[known], column.astype(str).str.strip()[known], strict=True))


def _save_fold(
    fold_dir: Path,
    k: int,
    trained: TrainedModel,
    run_key: str | None,
    n_slides: int,
    scores: Mapping[str, Any],
) -> None:
    """A trained fold's model.pt, curves.csv and, last, its metrics.json (finished)."""
    trained.save(fold_dir / "model.pt")
    _write_csv(trained.curves, fold_dir / "curves.csv")
    fold_metrics = {
        "fold": k,
        "run_key": run_key,
        "n_slides": n_slides,
        "best_epoch": trained.best_epoch,
        "tasks": scores,
    }
    write_text_atomic(fold_dir / FINISHED_FOLD, json.dumps(fold_metrics, indent=2))


def _cv_metrics(
    lab: _Labels, arch: str, folds: int, per_fold: Mapping[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """The metrics.json dict: per task its kind, (classes), the mean of each metric over
    the folds where it is defined, and ``per_fold``."""
    metrics: dict[str, Any] = {"model": arch, "folds": folds, "tasks": {}}
    for task in [t for t in lab.tasks if t.kind != "survival"]:
        entry: dict[str, Any] = {"kind": task.kind}
        if task.kind == "classification":
            entry["classes"] = list(task.classes or ())
        for name in [m for m in per_fold[task.name][0] if m not in ("fold", "n")]:
            values = [f[name] for f in per_fold[task.name] if f[name] is not None]
            entry[name] = _json_number(float(np.mean(values))) if values else None
        entry["per_fold"] = per_fold[task.name]
        metrics["tasks"][task.name] = entry
    return metrics


def _cv_predictions(
    lab: _Labels,
    fold_of: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    groups: Mapping[str, np.ndarray],
) -> pd.DataFrame:
    columns: dict[str, Any] = {"slide_id": lab.slide_ids, "fold": fold_of}
    for task in lab.tasks:
        truth = lab.values[task.name]
        if task.kind == "survival":
            known = ~np.isnan(truth)
            columns[f"{task.name}_time"] = truth
            columns[f"{task.name}_event"] = np.where(known, lab.events[task.name], np.nan)
            columns[f"{task.name}_risk"] = outputs[task.name][:, 0]
            columns[f"{task.name}_group"] = groups[task.name]
            continue
        if task.kind == "classification":
            names = np.array(task.classes, dtype=object)
            columns[f"{task.name}_true"] = np.where(truth >= 0, names[truth.clip(min=0)], None)
        else:
            columns[f"{task.name}_true"] = truth
        columns.update(_task_columns(task, outputs[task.name]))
    return pd.DataFrame(columns)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    write_text_atomic(path, frame.to_csv(index=False))
