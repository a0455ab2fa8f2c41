"""Hyper-parameters of a MIL training run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from models.device import PRECISIONS
from models.errors import TrainingDataError


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (stored in checkpoints to rebuild the model).

    ``epochs`` is the maximum; training stops after ``patience`` epochs without a lower
    validation loss and restores the best epoch's weights. The validation split is
    ``val_fraction`` of the training patients (stratified by the first class target);
    ``val_fraction=0`` trains all epochs without early stopping. ``max_tiles`` subsamples
    each training bag to at most that many tiles, freshly each epoch (inference always uses
    all tiles). ``batch_size`` bags per step (>1: zero-padded with masks). ``precision``
    applies to CUDA only ("auto": bf16 where supported, else fp16); CPU always runs fp32 and
    is bit-deterministic for a given ``seed`` and number of torch threads (whatever
    ``num_workers``); another thread count changes float32 rounding (~1e-8: torch's CPU
    softmax backward, for one, depends on it). Each fit seeds torch's global RNG with
    ``seed``, so a fold's model does not depend on the folds trained before it.

    Survival tasks: ``survival_loss`` "cox" (partial likelihood, Efron ties; each step's
    bags are scored against the risks of the last ``survival_memory`` training slides,
    kept without gradient, since one bag alone has no risk set) or "nll" (discrete-time
    hazards in ``survival_bins`` bins whose edges are quantiles of the training slides'
    event times). ``risk_groups`` "median" or "tertiles": the cut-offs, quantiles of the
    training slides' risks, stored with the model.
    """

    epochs: int = 40
    lr: float = 2e-4
    weight_decay: float = 1e-2
    hidden: int = 256
    dropout: float = 0.25
    patience: int = 8
    val_fraction: float = 0.2
    batch_size: int = 1
    max_tiles: int | None = None
    regression_loss: Literal["mse", "huber"] = "huber"
    class_weighted: bool = True
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    survival_loss: Literal["cox", "nll"] = "cox"
    survival_bins: int = 4
    survival_memory: int = 64
    risk_groups: Literal["median", "tertiles"] = "median"

    @property
    def n_bins(self) -> int | None:
        """Discrete-time bins of survival heads: None for Cox heads."""
        return self.survival_bins if self.survival_loss == "nll" else None

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.patience >= 1, "patience must be >= 1"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.max_tiles is None or self.max_tiles >= 1, "max_tiles must be None or >= 1"),
            (self.regression_loss in ("mse", "huber"), "regression_loss must be 'mse' or 'huber'"),
            (self.precision in PRECISIONS, "precision must be 'auto', 'fp32', 'bf16' or 'fp16'"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.survival_loss in ("cox", "nll"), "survival_loss must be 'cox' or 'nll'"),
            (self.survival_bins >= 2, "survival_bins must be >= 2"),
            (self.survival_memory >= 0, "survival_memory must be >= 0"),
            (
                self.risk_groups in ("median", "tertiles"),
                "risk_groups must be 'median' or 'tertiles'",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingDataError(f"bad TrainConfig: {message}")
