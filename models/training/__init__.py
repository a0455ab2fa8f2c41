"""Fit, cross-validate and apply MIL heads on bags of tile features; MIL checkpoints.

Bags are any ``Sequence`` whose item ``i`` is slide i's (N, D) float features (numpy array
or tensor): a list in memory, or an object whose ``__getitem__`` reads one slide from disk.
Training only indexes it, in shuffled order, once per epoch per bag (through a torch
DataLoader, so ``num_workers`` > 0 prefetches), and never holds all bags at once. An object
with a ``feature_dim`` attribute saves one read up front.

``labels`` is a DataFrame whose row i describes ``bags[i]``: a ``slide_id`` column (or
index), an optional patient column, and target columns. Empty cells (NaN, None, "") mean
"unknown": that slide adds no loss for that task, and still trains the others.

One module per job: :mod:`~models.training.config` (TrainConfig),
:mod:`~models.training.labels` (targets), :mod:`~models.training.folds` (patient-grouped
splits), :mod:`~models.training.bags` (loading and batching), :mod:`~models.training.losses`,
:mod:`~models.training.fit` (one model), :mod:`~models.training.crossval`,
:mod:`~models.training.runs` (resumable run folders), :mod:`~models.training.checkpoint`,
:mod:`~models.training.inference` and :mod:`~models.training.prediction`.
"""

from models.training.checkpoint import CHECKPOINT_VERSION, TrainedModel, load_checkpoint
from models.training.config import TrainConfig
from models.training.crossval import CVResult, cross_validate
from models.training.fit import train
from models.training.folds import assign_folds
from models.training.prediction import predict

__all__ = [
    "CHECKPOINT_VERSION",
    "CVResult",
    "TrainConfig",
    "TrainedModel",
    "assign_folds",
    "cross_validate",
    "load_checkpoint",
    "predict",
    "train",
]
