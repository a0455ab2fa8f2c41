"""Fit one MIL head: the epoch loop, early stopping on a validation split, ``train``."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from models.defaults import DEFAULT_HEAD
from models.device import ResolvedPrecision, autocast, resolve_device, resolve_precision
from models.errors import TrainingDataError
from models.mil import MILModel, TaskSpec, build_model
from models.survival.groups import group_names, risk_cutoffs
from models.survival.losses import RiskMemory, bin_index, cox_efron_nll, time_bins
from models.training.bags import _BagDataset, _batch, _feature_dim, _loader
from models.training.checkpoint import TrainedModel
from models.training.config import TrainConfig
from models.training.folds import _holdout
from models.training.inference import _infer
from models.training.labels import _encode_labels, _Labels
from models.training.losses import _batch_loss, _class_weights, _task_losses


def _targets_on(
    lab: _Labels,
    stats: Mapping[str, tuple[float, float]],
    device: torch.device,
    survival: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Tensor]:
    """Per-task target tensors over all slides: class indices, standardised floats, or
    (time, event, time bin) rows for a survival task."""
    out = {}
    for task in lab.tasks:
        v = lab.values[task.name]
        if task.kind == "survival":
            time = torch.as_tensor(v, dtype=torch.float32)
            edges = torch.as_tensor((survival or {}).get(task.name, {}).get("bins", []))
            time_bin = bin_index(time=torch.nan_to_num(time), edges=edges.float())
            event = torch.as_tensor(lab.events[task.name], dtype=torch.float32)
            out[task.name] = torch.stack([time, event, time_bin.float()], dim=1).to(device)
        elif task.kind == "classification":
            out[task.name] = torch.as_tensor(v, dtype=torch.int64, device=device)
        else:
            mean, std = stats[task.name]
            out[task.name] = torch.as_tensor((v - mean) / std, dtype=torch.float32, device=device)
    return out


def _training_bags(
    bags: Sequence[Any], indices: np.ndarray, feature_dim: int, lab: _Labels
) -> _BagDataset:
    expected = "like the first bag: all bags must come from the same encoder"
    return _BagDataset(bags, indices, feature_dim, lab.slide_ids, expected, TrainingDataError)


def _target_scaling(
    lab: _Labels, fit_idx: np.ndarray, config: TrainConfig, device: torch.device
) -> tuple[dict[str, tuple[float, float]], dict[str, Tensor]]:
    """From the fitting slides: (mean, std) of each regression target (std 1 if constant)
    and the class weights of each classification target."""
    stats: dict[str, tuple[float, float]] = {}
    weights: dict[str, Tensor] = {}
    for task in lab.tasks:
        v = lab.values[task.name][fit_idx]
        if task.kind == "survival":
            continue
        if task.kind == "regression":
            known = v[~np.isnan(v)]
            if known.size == 0:
                raise TrainingDataError(f"no training slide has a value for {task.name!r}")
            std = float(known.std())
            stats[task.name] = (float(known.mean()), std if std > 0 else 1.0)
        else:
            weights[task.name] = _class_weights(v, task.n_outputs, config.class_weighted).to(device)
    return stats, weights


@dataclass
class _Step:
    """What one optimisation step needs: the model, its optimiser and loss scaler, targets
    over all slides, class weights and where and how to compute."""

    model: MILModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    targets: dict[str, Tensor]
    weights: dict[str, Tensor]
    tasks: tuple[TaskSpec, ...]
    config: TrainConfig
    device: torch.device
    precision: ResolvedPrecision
    memory: dict[str, RiskMemory] = field(default_factory=dict)

    def train_epoch(self, loader: DataLoader, subsample: torch.Generator) -> Tensor:
        """One pass over ``loader``; the sum over bags of their batch's loss."""
        self.model.train()
        class_targets = {
            t.name: self.targets[t.name] for t in self.tasks if t.kind == "classification"
        }
        total = torch.zeros((), device=self.device)
        for items in loader:
            x, mask, index = _batch(items, self.config.max_tiles, subsample, self.device)
            y = {name: t[index] for name, t in self.targets.items()}
            with autocast(self.device, self.precision):
                out = self.model(x, mask, {name: t[index] for name, t in class_targets.items()})
            loss = _batch_loss(
                out, y, self.tasks, self.weights, self.config.regression_loss, self.memory
            )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += loss.detach() * len(items)
        return total

    @torch.no_grad()
    def eval_losses(self, loader: DataLoader) -> dict[str, float]:
        """Mean loss per task over the validation slides with a known target (NaN if none)."""
        self.model.eval()
        sums = {t.name: torch.zeros((), device=self.device) for t in self.tasks}
        counts = {t.name: torch.zeros((), device=self.device) for t in self.tasks}
        cox = [t for t in self.tasks if t.kind == "survival" and t.n_bins is None]
        risks: dict[str, list[Tensor]] = {t.name: [] for t in cox}
        rows: list[Tensor] = []
        for items in loader:
            x, mask, index = _batch(items, None, None, self.device)
            with autocast(self.device, self.precision):
                out = self.model(x, mask)
            y = {name: t[index] for name, t in self.targets.items()}
            losses = _task_losses(out, y, self.tasks, self.weights, self.config.regression_loss)
            for name, (loss, count) in losses.items():
                sums[name] += loss
                counts[name] += count
            rows.append(index)
            for task in cox:
                risks[task.name].append(out.outputs[task.name].float().reshape(-1))
        for task in cox:  # one risk set: every validation slide (per event, mean)
            sums[task.name], counts[task.name] = self._cox_validation(task, risks, rows)
        return {
            f"val_loss_{name}": float(sums[name] / counts[name]) if counts[name] else math.nan
            for name in sums
        }

    def _cox_validation(
        self, task: TaskSpec, risks: Mapping[str, list[Tensor]], rows: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """(Cox negative partial log-likelihood, events) over all validation slides."""
        if not rows:
            return torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        y = self.targets[task.name][torch.cat(rows)]
        risk = torch.cat(list(risks[task.name]))
        known = ~torch.isnan(y[:, 0])
        time, event = y[known, 0], y[known, 1]
        return cox_efron_nll(time=time, event=event, risk=risk[known]), event.sum()


@dataclass
class _EarlyStopping:
    """The best epoch so far by validation loss, its weights, and when to stop."""

    patience: int
    loss: float = math.inf
    epoch: int = 0
    state: dict[str, Tensor] | None = None
    stale: int = 0

    def stop_after(self, epoch: int, val_loss: float | None, model: MILModel) -> bool:
        """Record ``epoch``; True once ``patience`` epochs passed without a lower loss.
        ``val_loss`` None (no validation split): the last epoch is the best, never stop."""
        if val_loss is None:
            self.epoch = epoch
            return False
        if val_loss < self.loss:
            self.loss, self.epoch, self.stale = val_loss, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
            return False
        self.stale += 1
        return self.stale >= self.patience


def _fit(
    bags: Sequence[Any],
    lab: _Labels,
    train_idx: np.ndarray,
    arch: str,
    config: TrainConfig,
    feature_dim: int,
    encoder: str | None,
    progress: bool,
    desc: str,
) -> TrainedModel:
    """Train ``arch`` on the slides ``train_idx`` with a known target (early stopping on a
    patient-grouped holdout of them); seeds torch's global RNG with ``config.seed``."""
    torch.manual_seed(config.seed)
    train_idx = train_idx[lab.known_any()[train_idx]]
    fit_idx, val_idx = _holdout(lab, train_idx, config)
    device = resolve_device(config.device, mps=False)
    stats, weights = _target_scaling(lab, fit_idx, config, device)
    survival = _survival_bins(lab, fit_idx)
    model = build_model(
        arch,
        feature_dim,
        lab.tasks,
        hidden=config.hidden,
        dropout=config.dropout,
        **config.arch_kwargs,
    ).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True
    )
    precision = resolve_precision(config.precision, device, cuda_only=True)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    step = _Step(
        model,
        optimizer,
        scaler,
        _targets_on(lab, stats, device, survival),
        weights,
        lab.tasks,
        config,
        device,
        precision,
        {t.name: RiskMemory(config.survival_memory) for t in lab.tasks if t.kind == "survival"},
    )
    train_loader = _loader(_training_bags(bags, fit_idx, feature_dim, lab), config, shuffle=True)
    val_loader = None
    if len(val_idx):
        val_loader = _loader(_training_bags(bags, val_idx, feature_dim, lab), config, shuffle=False)
    subsample = torch.Generator().manual_seed(config.seed + 1)

    rows, best = [], _EarlyStopping(config.patience)
    epochs = tqdm(range(1, config.epochs + 1), desc=desc, leave=False, disable=not progress)
    for epoch in epochs:
        train_loss = float(step.train_epoch(train_loader, subsample)) / max(len(fit_idx), 1)
        val_losses = {f"val_loss_{t.name}": math.nan for t in lab.tasks}
        val_loss = math.nan
        if val_loader is not None:
            val_losses = step.eval_losses(val_loader)
            val_loss = float(np.nansum(list(val_losses.values())))
        rows.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **val_losses})
        epochs.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
        if best.stop_after(epoch, None if val_loader is None else val_loss, model):
            break
    if best.state is not None:
        model.load_state_dict(best.state)
    model.eval()
    trained = TrainedModel(
        model=model,
        arch=arch,
        config=config,
        tasks=lab.tasks,
        regression_stats=stats,
        feature_dim=feature_dim,
        encoder=encoder,
        best_epoch=best.epoch,
        curves=pd.DataFrame(rows),
        survival=survival,
    )
    _fix_risk_groups(trained, bags, lab, train_idx)
    return trained


def _survival_bins(lab: _Labels, fit_idx: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per survival task, the discrete-time bin edges from the fitting slides' events
    ([] for a Cox head)."""
    out = {}
    for task in lab.tasks:
        if task.kind != "survival":
            continue
        bins: list[float] = []
        if task.n_bins is not None:
            time, event = lab.values[task.name][fit_idx], lab.events[task.name][fit_idx]
            bins = time_bins(time=time, event=event, n_bins=task.n_bins)
        out[task.name] = {"bins": bins}
    return out


def _fix_risk_groups(
    trained: TrainedModel, bags: Sequence[Any], lab: _Labels, train_idx: np.ndarray
) -> None:
    """Risk-group cut-offs of each survival task from the risks of its training slides
    (known target), stored in ``trained.survival``: fixed here, applied unchanged later."""
    tasks = [t for t in lab.tasks if t.kind == "survival"]
    if not tasks:
        return
    out = _infer(trained, bags, train_idx, lab.slide_ids, num_workers=trained.config.num_workers)
    for task in tasks:
        known = ~np.isnan(lab.values[task.name][train_idx])
        risk = out[task.name][:, 0][known]
        cutoffs = risk_cutoffs(risk=risk, scheme=trained.config.risk_groups) if known.any() else []
        trained.survival[task.name].update(
            cutoffs=cutoffs, groups=group_names(len(cutoffs) + 1), scheme=trained.config.risk_groups
        )


def train(
    bags: Sequence[Any],
    labels: pd.DataFrame,
    *,
    classify: Sequence[str] = (),
    regress: Sequence[str] = (),
    arch: str = DEFAULT_HEAD,
    config: TrainConfig | None = None,
    encoder: str | None = None,
    patient_col: str = "patient_id",
    progress: bool = True,
    survival: Sequence[str] = (),
) -> TrainedModel:
    """Train one MIL head on all slides (early stopping on a patient-grouped validation
    split carved from them). ``labels`` row i describes ``bags[i]``; ``classify`` and
    ``regress`` name its target columns, ``survival`` its ``"time_col:event_col"`` pairs;
    ``encoder`` is recorded in the checkpoint."""
    config = config or TrainConfig()
    lab = _encode_labels(
        labels, classify, regress, len(bags), patient_col, survival=survival, n_bins=config.n_bins
    )
    dim = _feature_dim(bags)
    return _fit(bags, lab, np.arange(len(bags)), arch, config, dim, encoder, progress, "epochs")
