"""Labels table -> encoded targets per slide: class indices, floats, patient groups.

Empty cells (NaN, None, "") mean "unknown": class -1, or NaN for a regression target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.errors import TrainingDataError
from models.mil import TaskSpec
from models.survival.labels import encode_survival, parse_survival_spec


@dataclass
class _Labels:
    """Encoded targets for every slide: class indices (-1 unknown) or floats (NaN unknown)."""

    tasks: tuple[TaskSpec, ...]
    values: dict[str, np.ndarray]
    slide_ids: np.ndarray
    groups: np.ndarray
    has_patients: bool
    events: dict[str, np.ndarray] = field(default_factory=dict)  # survival: 1 event, 0 censored
    notes: dict[str, str] = field(default_factory=dict)  # survival rows left out, and why

    @property
    def stratify(self) -> np.ndarray | None:
        """Class indices of the first classification task (the CV strata), if any."""
        for task in self.tasks:
            if task.kind == "classification":
                return self.values[task.name]
        return None

    def known_any(self) -> np.ndarray:
        """True for slides with at least one known target."""
        known = [
            v >= 0 if t.kind == "classification" else ~np.isnan(v)
            for t, v in ((t, self.values[t.name]) for t in self.tasks)
        ]
        return np.logical_or.reduce(known)


def _is_blank(series: pd.Series) -> pd.Series:
    return series.isna() | series.astype(str).str.strip().eq("")


def _class_name(value: Any) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _encode_classes(series: pd.Series) -> tuple[tuple[str, ...], np.ndarray]:
    blank = _is_blank(series).to_numpy()
    names = [None if b else _class_name(v) for v, b in zip(series.tolist(), blank, strict=True)]
    distinct = {n for n in names if n is not None}
    try:
        classes = tuple(sorted(distinct, key=float))
    except ValueError:
        classes = tuple(sorted(distinct))
    position = {c: i for i, c in enumerate(classes)}
    codes = np.array([-1 if n is None else position[n] for n in names], dtype=np.int64)
    return classes, codes


def _encode_regression(series: pd.Series, column: str, slide_ids: np.ndarray) -> np.ndarray:
    blank = _is_blank(series).to_numpy()
    numeric = pd.to_numeric(series.where(~blank), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~blank & ~np.isfinite(numeric)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TrainingDataError(
            f"regression target {column!r} has a non-numeric value {series.iloc[i]!r} "
            f"(slide {slide_ids[i]!r}, {int(bad.sum())} such cells): use numbers, or leave "
            "the cell empty for unknown"
        )
    if np.isnan(numeric).all():
        raise TrainingDataError(
            f"regression target {column!r} is empty for every slide: fill it in or drop it "
            "from regress="
        )
    return numeric


def _read_labels(labels: pd.DataFrame, n_bags: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Check the table's shape: a slide_id column (or index), one row per bag, unique ids."""
    if not isinstance(labels, pd.DataFrame):
        raise TrainingDataError(f"labels must be a pandas DataFrame, got {type(labels).__name__}")
    if "slide_id" not in labels.columns:
        if labels.index.name != "slide_id":
            raise TrainingDataError(
                f"labels need a 'slide_id' column (or index); columns are: {list(labels.columns)}"
            )
        labels = labels.reset_index()
    labels = labels.reset_index(drop=True)
    if len(labels) != n_bags:
        raise TrainingDataError(
            f"labels has {len(labels)} rows but there are {n_bags} bags: row i of labels "
            "must describe bags[i]"
        )
    slide_ids = labels["slide_id"].astype(str).to_numpy()
    repeated = pd.Series(slide_ids)
    repeated = repeated[repeated.duplicated()].unique()
    if len(repeated):
        raise TrainingDataError(f"slide_id values repeat in labels: {list(repeated[:5])}")
    return labels, slide_ids


def _patient_groups(
    labels: pd.DataFrame, slide_ids: np.ndarray, patient_col: str | None
) -> tuple[np.ndarray, bool]:
    """Group key per slide: its patient, or the slide itself when the patient is unknown."""
    if patient_col is None or patient_col not in labels.columns:
        return slide_ids.copy(), False
    patients = labels[patient_col]
    known = ~_is_blank(patients).to_numpy()
    groups = np.where(known, "patient:" + patients.astype(str).to_numpy(), "slide:" + slide_ids)
    return groups, True


def _as_columns(columns: Sequence[str] | str) -> list[str]:
    return [columns] if isinstance(columns, str) else list(columns)


def _encode_labels(
    labels: pd.DataFrame,
    classify: Sequence[str] | str,
    regress: Sequence[str] | str,
    n_bags: int,
    patient_col: str | None,
    require_task: bool = True,
    survival: Sequence[str | Sequence[str]] | str = (),
    n_bins: int | None = None,
) -> _Labels:
    labels, slide_ids = _read_labels(labels, n_bags)
    classify, regress = _as_columns(classify), _as_columns(regress)
    pairs = [parse_survival_spec(s) for s in _as_columns(survival)]
    if require_task and not classify and not regress and not pairs:
        raise TrainingDataError(
            "name at least one target: classify=[column], regress=[column] or "
            "survival=['time_col:event_col']"
        )
    both = set(classify) & set(regress)
    if both:
        raise TrainingDataError(f"columns {sorted(both)} are in both classify and regress")
    missing = [c for c in classify + regress if c not in labels.columns]
    if missing:
        raise TrainingDataError(
            f"target column(s) {missing} not in labels; columns are: {list(labels.columns)}"
        )
    tasks, values = [], {}
    for column in classify:
        classes, codes = _encode_classes(labels[column])
        if len(classes) < 2:
            raise TrainingDataError(
                f"classification target {column!r} has {len(classes)} class(es) "
                f"{list(classes)}; it needs at least 2"
            )
        tasks.append(TaskSpec(column, "classification", classes))
        values[column] = codes
    for column in regress:
        values[column] = _encode_regression(labels[column], column, slide_ids)
        tasks.append(TaskSpec(column, "regression"))
    events, notes = {}, {}
    for time_col, event_col in pairs:
        if time_col in values:
            raise TrainingDataError(f"column {time_col!r} is named as two targets")
        values[time_col], events[time_col], note = encode_survival(labels, time_col, event_col)
        if note is not None:
            notes[time_col] = note
        tasks.append(TaskSpec(time_col, "survival", n_bins=n_bins))
    groups, has_patients = _patient_groups(labels, slide_ids, patient_col)
    return _Labels(tuple(tasks), values, slide_ids, groups, has_patients, events, notes)
