"""Fit one MIL head: the epoch loop, early stopping on a validation split, ``train``."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from models.device import ResolvedPrecision, autocast, resolve_device, resolve_precision
from models.errors import TrainingDataError
from models.mil import MILModel, TaskSpec, build_model
from models.training.bags import _BagDataset, _batch, _feature_dim, _loader
from models.training.checkpoint import TrainedModel
from models.training.config import TrainConfig
from models.training.folds import _holdout
from models.training.labels import _encode_labels, _Labels
from models.training.losses import _batch_loss, _class_weights, _task_losses


def _targets_on(lab: _Labels, stats: Mapping[str, tuple[float, float]], device: torch.device):
    """Per-task target tensors over all slides: class indices, or standardised floats."""
    out = {}
    for task in lab.tasks:
        v = lab.values[task.name]
        if task.kind == "classification":
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
    torch.manual_seed(config.seed)
    train_idx = train_idx[lab.known_any()[train_idx]]
    fit_idx, val_idx = _holdout(lab, train_idx, config)
    stats: dict[str, tuple[float, float]] = {}
    weights: dict[str, Tensor] = {}
    device = resolve_device(config.device, mps=False)
    for task in lab.tasks:
        v = lab.values[task.name][fit_idx]
        if task.kind == "regression":
            known = v[~np.isnan(v)]
            if known.size == 0:
                raise TrainingDataError(f"no training slide has a value for {task.name!r}")
            std = float(known.std())
            stats[task.name] = (float(known.mean()), std if std > 0 else 1.0)
        else:
            weights[task.name] = _class_weights(v, task.n_outputs, config.class_weighted).to(device)
    targets = _targets_on(lab, stats, device)
    class_targets = {t.name: targets[t.name] for t in lab.tasks if t.kind == "classification"}

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
    train_loader = _loader(_training_bags(bags, fit_idx, feature_dim, lab), config, shuffle=True)
    val_loader = None
    if len(val_idx):
        val_loader = _loader(_training_bags(bags, val_idx, feature_dim, lab), config, shuffle=False)
    subsample = torch.Generator().manual_seed(config.seed + 1)

    rows, best_loss, best_epoch, best_state, stale = [], math.inf, 0, None, 0
    epochs = tqdm(range(1, config.epochs + 1), desc=desc, leave=False, disable=not progress)
    for epoch in epochs:
        model.train()
        train_sum = torch.zeros((), device=device)
        for items in train_loader:
            x, mask, index = _batch(items, config.max_tiles, subsample, device)
            y = {name: t[index] for name, t in targets.items()}
            with autocast(device, precision):
                out = model(x, mask, {name: t[index] for name, t in class_targets.items()})
            loss = _batch_loss(out, y, lab.tasks, weights, config.regression_loss)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            train_sum += loss.detach() * len(items)
        train_loss = float(train_sum) / max(len(fit_idx), 1)
        val_losses = {f"val_loss_{t.name}": math.nan for t in lab.tasks}
        if val_loader is not None:
            val_losses = _eval_losses(
                model, val_loader, targets, lab.tasks, weights, config, precision, device
            )
        val_loss = float(np.nansum(list(val_losses.values()))) if val_loader else math.nan
        rows.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **val_losses})
        epochs.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
        if val_loader is None:
            best_epoch = epoch
            continue
        if val_loss < best_loss:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainedModel(
        model=model,
        arch=arch,
        config=config,
        tasks=lab.tasks,
        regression_stats=stats,
        feature_dim=feature_dim,
        encoder=encoder,
        best_epoch=best_epoch,
        curves=pd.DataFrame(rows),
    )


@torch.no_grad()
def _eval_losses(
    model: MILModel,
    loader: DataLoader,
    targets: Mapping[str, Tensor],
    tasks: Sequence[TaskSpec],
    weights: Mapping[str, Tensor],
    config: TrainConfig,
    precision: ResolvedPrecision,
    device: torch.device,
) -> dict[str, float]:
    """Mean loss per task over the validation slides with a known target (NaN if none)."""
    model.eval()
    sums = {t.name: torch.zeros((), device=device) for t in tasks}
    counts = {t.name: torch.zeros((), device=device) for t in tasks}
    for items in loader:
        x, mask, index = _batch(items, None, None, device)
        with autocast(device, precision):
            out = model(x, mask)
        y = {name: t[index] for name, t in targets.items()}
        for name, (loss, count) in _task_losses(
            out, y, tasks, weights, config.regression_loss
        ).items():
            sums[name] += loss
            counts[name] += count
    return {
        f"val_loss_{name}": float(sums[name] / counts[name]) if counts[name] else math.nan
        for name in sums
    }


def train(
    bags: Sequence[Any],
    labels: pd.DataFrame,
    *,
    classify: Sequence[str] = (),
    regress: Sequence[str] = (),
    arch: str = "abmil",
    config: TrainConfig | None = None,
    encoder: str | None = None,
    patient_col: str = "patient_id",
    progress: bool = True,
) -> TrainedModel:
    """Train one MIL head on all slides (early stopping on a patient-grouped validation
    split carved from them). ``labels`` row i describes ``bags[i]``; ``classify`` and
    ``regress`` name its target columns; ``encoder`` is recorded in the checkpoint."""
    config = config or TrainConfig()
    lab = _encode_labels(labels, classify, regress, len(bags), patient_col)
    dim = _feature_dim(bags)
    return _fit(bags, lab, np.arange(len(bags)), arch, config, dim, encoder, progress, "epochs")
