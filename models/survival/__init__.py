"""Survival analysis for MIL heads: losses, metrics, risk groups, cross-validated evaluation.

One sign convention: ``risk`` higher = worse. Public functions take keyword-only ``time=``,
``event=`` (1 observed, 0 censored) and ``risk=``. Modules: :mod:`~models.survival.losses`
(Cox with Efron ties and a risk memory; discrete-time NLL), :mod:`~models.survival.metrics`
(Harrell's and Uno's C, cumulative/dynamic AUC, integrated Brier score),
:mod:`~models.survival.groups` (cut-offs fixed on training risks, log-rank, hazard ratio,
treatment interaction), :mod:`~models.survival.labels` (time/event columns, bad rows) and
:mod:`~models.survival.evaluate` (per fold and pooled, patient level).
"""

from models.survival.groups import (
    assign_groups,
    compare_groups,
    logrank_p,
    risk_cutoffs,
    treatment_interaction,
)
from models.survival.metrics import cumulative_auc, harrell_c, integrated_brier, uno_c

__all__ = [
    "assign_groups",
    "compare_groups",
    "cumulative_auc",
    "harrell_c",
    "integrated_brier",
    "logrank_p",
    "risk_cutoffs",
    "treatment_interaction",
    "uno_c",
]
