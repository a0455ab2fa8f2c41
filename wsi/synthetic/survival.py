"""Synthetic survival outcomes whose hazard falls with lymphocyte-rich tissue.

Two flavours: :func:`survival_outcome` gives the demo cohort's patients (see
:func:`wsi.synthetic.cohort.cohort_specs`) an overall survival driven by their immune
score, the density of lymphocytes drawn on their slides; :func:`survival_bags` makes
bags of feature vectors directly (tests and benchmarks that need no slides), with a
fraction of "lymphocyte" tiles per bag. Times are in months; censoring is uniform
(administrative); treatment arms alternate and have no effect. Deterministic given seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

SURVIVAL_COLUMNS = ("slide_id", "os_months", "os_event", "arm")
"""Columns of :func:`survival_outcome`: months, 1 = death observed / 0 = censored, arm."""

BASE_MEDIAN_MONTHS = 24.0
"""Median survival of a patient with an average immune score (hazard ratio 1)."""


def _outcome(score: np.ndarray, beta: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Exponential times with hazard log(2)/24 * exp(-beta (score - 0.5)), censored U(6, 90)."""
    hazard = np.log(2) / BASE_MEDIAN_MONTHS * np.exp(-beta * (score - 0.5))
    death = rng.exponential(1 / hazard)
    censor = rng.uniform(6, 90, len(score))
    return np.round(np.minimum(death, censor), 1), (death <= censor).astype(int)


def survival_outcome(specs: Sequence, seed: int = 0, beta: float = 3.0) -> pd.DataFrame:
    """Overall survival per slide of a synthetic cohort (:data:`SURVIVAL_COLUMNS`): each
    patient's hazard is exp(-``beta`` x (immune score - 0.5)) times a baseline with a
    median of 24 months, so lymphocyte-rich patients live longer; a patient's slides share
    one outcome. Merge it into the cohort's labels on ``slide_id``."""
    rng = np.random.default_rng([seed, 15])
    patients = list(dict.fromkeys(s.patient_id for s in specs))
    score = {p: np.mean([s.immune_score for s in specs if s.patient_id == p]) for p in patients}
    months, event = _outcome(np.array([score[p] for p in patients]), beta, rng)
    arm = {p: "drug" if i % 2 == 0 else "control" for i, p in enumerate(patients)}
    index = {p: i for i, p in enumerate(patients)}
    return pd.DataFrame(
        {
            "slide_id": [s.slide_id for s in specs],
            "os_months": [months[index[s.patient_id]] for s in specs],
            "os_event": [event[index[s.patient_id]] for s in specs],
            "arm": [arm[s.patient_id] for s in specs],
        }
    )


def survival_bags(
    n: int = 80, seed: int = 0, dim: int = 16, tiles: int = 40, beta: float = 3.0
) -> tuple[list[np.ndarray], pd.DataFrame]:
    """(bags, labels) of ``n`` one-slide patients: bag i holds a fraction f_i ~ U(0, 1) of
    "lymphocyte" tiles (feature 0 raised by 3) among ``tiles`` standard-normal
    ``dim``-vectors; its survival follows :func:`survival_outcome` with score f_i.
    ``labels``: slide_id, patient_id, os_months, os_event, arm, fraction (the truth)."""
    rng = np.random.default_rng(seed)
    fraction = rng.uniform(0, 1, n)
    bags = []
    for f in fraction:
        bag = rng.normal(size=(tiles, dim)).astype(np.float32)
        bag[rng.random(tiles) < f, 0] += 3.0
        bags.append(bag)
    months, event = _outcome(fraction, beta, rng)
    labels = pd.DataFrame(
        {
            "slide_id": [f"s{i:03d}" for i in range(n)],
            "patient_id": [f"p{i:03d}" for i in range(n)],
            "os_months": months,
            "os_event": event,
            "arm": np.where(np.arange(n) % 2 == 0, "drug", "control"),
            "fraction": fraction,
        }
    )
    return bags, labels
