"""Slide-level metrics: macro one-vs-rest AUC and balanced accuracy for classification;
Spearman, Pearson and MAE for regression. NaN when a metric is undefined (one class only,
a constant prediction, no labelled slide)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score


def auc_macro(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC of class indices ``y_true`` (n,) against ``probs`` (n, C).

    Binary: the plain AUC of class 1. Classes absent from ``y_true`` are skipped.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] == 2:
        return _binary_auc(y_true == 1, probs[:, 1])
    scores = [_binary_auc(y_true == c, probs[:, c]) for c in range(probs.shape[1])]
    scores = [s for s in scores if not np.isnan(s)]
    return float(np.mean(scores)) if scores else float("nan")


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, score))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (class indices)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recalls = [np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]
    return float(np.mean(recalls)) if recalls else float("nan")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN for fewer than 2 values or a constant input."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    return pearson(pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy())


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``auc_macro`` and ``balanced_accuracy`` of class indices against probabilities (n, C)."""
    if len(y_true) == 0:
        return {"auc_macro": float("nan"), "balanced_accuracy": float("nan")}
    return {
        "auc_macro": auc_macro(y_true, probs),
        "balanced_accuracy": balanced_accuracy(y_true, np.asarray(probs).argmax(axis=1)),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``spearman``, ``pearson`` and ``mae`` (in the targets' own units)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    mae = float(np.mean(np.abs(y_true - y_pred))) if y_true.size else float("nan")
    return {"spearman": spearman(y_true, y_pred), "pearson": pearson(y_true, y_pred), "mae": mae}
