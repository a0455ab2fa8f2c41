"""Cross-validation folds and early-stopping holdouts, grouped by patient."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold, StratifiedGroupKFold

from models.errors import TrainingDataError
from models.training.config import TrainConfig
from models.training.labels import _encode_labels, _Labels


def _check_folds(lab: _Labels, folds: int) -> None:
    if folds < 2:
        raise TrainingDataError(f"folds must be >= 2, got {folds}")
    n_groups = len(np.unique(lab.groups))
    if n_groups < folds:
        raise TrainingDataError(f"{n_groups} patients cannot fill {folds} folds: use fewer folds")
    for task in lab.tasks:
        if task.kind != "classification":
            continue
        codes = lab.values[task.name]
        for c, name in enumerate(task.classes or ()):
            in_class = codes == c
            n_patients = len(np.unique(lab.groups[in_class]))
            if n_patients < folds:
                raise TrainingDataError(
                    f"class {name!r} of {task.name!r} has {int(in_class.sum())} slides "
                    f"({n_patients} patients) but folds={folds}, so some fold would have none: "
                    "use fewer folds or merge classes"
                )


def _split_folds(lab: _Labels, folds: int, seed: int) -> np.ndarray:
    index = np.arange(len(lab.slide_ids))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if lab.stratify is not None:
            splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
            splits = list(splitter.split(index, lab.stratify, lab.groups))
        elif lab.has_patients:
            splits = list(GroupKFold(folds).split(index, groups=lab.groups))
        else:
            splits = list(KFold(folds, shuffle=True, random_state=seed).split(index))
    fold_of = np.full(len(index), -1, dtype=np.int64)
    for k, (_, test) in enumerate(splits):
        fold_of[test] = k
    return fold_of


def _assign_folds(lab: _Labels, folds: int, seed: int, tries: int = 20) -> np.ndarray:
    """Folds by patient; StratifiedGroupKFold is greedy, so when a class misses a fold the
    next ``tries`` seeds are tried (deterministically) for a split with every class in
    every fold."""
    _check_folds(lab, folds)
    first = _split_folds(lab, folds, seed)
    strata = lab.stratify
    if strata is None:
        return first
    classes = np.unique(strata[strata >= 0])
    for attempt in range(tries):
        fold_of = first if attempt == 0 else _split_folds(lab, folds, seed + attempt)
        if all(np.isin(classes, strata[fold_of == k]).all() for k in range(folds)):
            return fold_of
    return first


def assign_folds(
    labels: pd.DataFrame,
    *,
    classify: Sequence[str] = (),
    folds: int = 5,
    patient_col: str = "patient_id",
    seed: int = 0,
) -> np.ndarray:
    """Fold index (0..folds-1) of each labels row, as :func:`cross_validate` assigns them.

    Stratified by the first ``classify`` column and grouped by ``patient_col`` (a patient's
    slides share a fold): StratifiedGroupKFold; without a class target GroupKFold, or KFold
    when there is no patient column.
    """
    lab = _encode_labels(labels, classify, (), len(labels), patient_col, require_task=False)
    return _assign_folds(lab, folds, seed)


def _holdout(lab: _Labels, train_idx: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, ...]:
    """Split training slides into (fit, validation) by patient for early stopping."""
    empty = np.array([], dtype=np.int64)
    if config.val_fraction <= 0:
        return train_idx, empty
    groups = lab.groups[train_idx]
    n_splits = max(2, round(1 / config.val_fraction))
    if len(np.unique(groups)) < n_splits:
        return train_idx, empty
    strata = lab.stratify
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if strata is not None:
            splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=config.seed)
            try:
                fit, val = next(splitter.split(train_idx, strata[train_idx], groups))
                return train_idx[fit], train_idx[val]
            except ValueError:
                pass  # every class has fewer slides than splits: a plain patient split
        splitter = GroupShuffleSplit(
            n_splits=1, test_size=config.val_fraction, random_state=config.seed
        )
        fit, val = next(splitter.split(train_idx, groups=groups))
    return train_idx[fit], train_idx[val]
