"""Survival targets from a labels table: follow-up time and event per slide.

Events read 1/0, true/false, yes/no (any case). A slide whose time is missing, negative or
not a number, or whose event is missing or anything else, has an *unknown* survival
target: it adds no survival loss and no metric, trains the other tasks, and is counted in
a warning that says what to fix. Never an exception for a bad row.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from models.errors import TrainingDataError

EVENT_WORDS = {
    "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0, "true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0,
}  # fmt: skip
"""Event spellings read: 1 = event observed, 0 = censored."""


def parse_survival_spec(spec: str | Sequence[str]) -> tuple[str, str]:
    """``"os_months:os_event"`` (or a pair) -> (time column, event column)."""
    if isinstance(spec, str):
        parts = spec.split(":")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise TrainingDataError(
                f"survival target {spec!r} must be TIME_COL:EVENT_COL, e.g. os_months:os_event"
            )
        return parts[0].strip(), parts[1].strip()
    time_col, event_col = spec
    return str(time_col), str(event_col)


def _read_events(series: pd.Series) -> np.ndarray:
    words = series.map(lambda v: None if pd.isna(v) else str(v).strip().lower())
    return words.map(lambda w: EVENT_WORDS.get(w, np.nan) if w is not None else np.nan).to_numpy(
        dtype=np.float64
    )


def encode_survival(
    labels: pd.DataFrame, time_col: str, event_col: str
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(time, event, note): time NaN where the target is unknown; ``note`` counts the rows
    left out and why (None when every row with a time is usable)."""
    missing = [c for c in (time_col, event_col) if c not in labels.columns]
    if missing:
        raise TrainingDataError(
            f"survival column(s) {missing} not in labels; columns are: {list(labels.columns)}"
        )
    time = pd.to_numeric(labels[time_col], errors="coerce").to_numpy(dtype=np.float64)
    event = _read_events(labels[event_col])
    problems = {
        "missing or non-numeric time": ~np.isfinite(time),
        "negative time": np.isfinite(time) & (time < 0),
        "event not 0/1 (or true/false, yes/no)": np.isfinite(time) & np.isnan(event),
    }
    bad = np.logical_or.reduce(list(problems.values()))
    time = np.where(bad, np.nan, time)
    event = np.where(bad, 0.0, event)
    if bad.all():
        raise TrainingDataError(
            f"survival target {time_col}:{event_col} is unusable for every slide "
            f"({', '.join(k for k, v in problems.items() if v.any())}): fix the columns"
        )
    note = None
    if bad.any():
        counts = ", ".join(f"{int(v.sum())} {k}" for k, v in problems.items() if v.any())
        note = f"{int(bad.sum())} slide(s) left out of survival task {time_col!r}: {counts}"
        warnings.warn(note, stacklevel=3)
    return time, event, note
