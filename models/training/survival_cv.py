"""Survival tasks in cross-validation: per-fold scores, risk groups, the metrics entry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from models.mil import TaskSpec
from models.survival.evaluate import FoldData, fold_metrics, patient_level, summarise
from models.survival.groups import assign_groups, group_names
from models.training.checkpoint import TrainedModel
from models.training.labels import _Labels


def _frame(lab: _Labels, task: TaskSpec, idx: np.ndarray, out: np.ndarray) -> pd.DataFrame:
    """Slide rows ``idx``: patient, time, event, risk and (discrete-time) curve columns."""
    frame = pd.DataFrame(
        {
            "patient": lab.groups[idx],
            "time": lab.values[task.name][idx],
            "event": lab.events[task.name][idx],
            "risk": out[:, 0],
        }
    )
    for k in range(1, out.shape[1]):
        frame[f"s_{k - 1}"] = out[:, k]
    return frame


def fold_survival(
    lab: _Labels,
    task: TaskSpec,
    trained: TrainedModel,
    parts: Mapping[str, tuple[np.ndarray, np.ndarray]],
    times: Sequence[float],
) -> tuple[FoldData, dict[str, Any], np.ndarray]:
    """One fold of one survival task; ``parts`` maps "test"/"train" to (slide indices,
    outputs). Returns the patient-level fold data, the fold's scores and the held-out
    patients' risk groups (the fold model's cut-offs on their mean risk)."""
    cutoffs = trained.survival.get(task.name, {}).get("cutoffs", [])
    test = patient_level(_frame(lab, task, *parts["test"]))
    train = patient_level(_frame(lab, task, *parts["train"]))
    test["group"] = assign_groups(risk=test["risk"], cutoffs=cutoffs)
    bins = trained.survival.get(task.name, {}).get("bins") if task.n_bins else None
    data = FoldData(test, train, bins)
    return data, fold_metrics(data, times), test["group"].to_numpy()


def slide_groups(trained: TrainedModel, task: TaskSpec, risk: np.ndarray) -> np.ndarray:
    """Group names of slides from the fold model's cut-offs (None without cut-offs)."""
    cutoffs = trained.survival.get(task.name, {}).get("cutoffs", [])
    if not cutoffs:
        return np.full(len(risk), None, dtype=object)
    names = np.array(group_names(len(cutoffs) + 1), dtype=object)
    return names[assign_groups(risk=risk, cutoffs=cutoffs)]


def survival_entry(
    task: TaskSpec,
    folds: Sequence[FoldData],
    per_fold: Sequence[Mapping[str, Any]],
    treatment: tuple[str, Mapping[str, Any]] | None,
    n_groups: int,
    notes: Sequence[str],
    seed: int,
) -> dict[str, Any]:
    """metrics.json ``tasks.<time col>``; ``treatment``: (column, patient -> arm)."""
    pooled = pd.concat([f.test for f in folds], ignore_index=True)
    if treatment is not None:
        pooled["treatment"] = pooled["patient"].map(treatment[1])
    entry = summarise(
        folds, per_fold, pooled, n_groups=n_groups,
        treatment=None if treatment is None else treatment[0], seed=seed,
    )  # fmt: skip
    entry["groups"] = group_names(n_groups)
    entry["notes"] = [n for n in notes if n]
    entry["per_fold"] = list(per_fold)
    return entry
