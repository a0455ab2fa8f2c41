"""Apply a trained MIL head to bags: class probabilities, regression values, attention."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from models.device import autocast, resolve_precision
from models.errors import CheckpointError, TrainingDataError
from models.mil import TaskSpec
from models.survival.groups import assign_groups, group_names
from models.survival.losses import discrete_survival
from models.training.bags import _as_list, _BagDataset

if TYPE_CHECKING:
    from models.training.checkpoint import TrainedModel


@torch.no_grad()
def _infer(
    trained: TrainedModel,
    bags: Sequence[Any],
    indices: np.ndarray,
    slide_ids: Sequence[str],
    *,
    num_workers: int = 0,
    progress: bool = False,
    on_attention: Callable[[str, dict[str, np.ndarray]], None] | None = None,
) -> dict[str, np.ndarray]:
    """Outputs for ``bags[indices]``, one bag at a time: class probabilities (n, C),
    regression values (n,) on the original scale, or for a survival task (n, 1 + K): the
    risk, then (discrete-time heads) the survival probability to the end of each bin."""
    model = trained.model.eval()
    device = next(model.parameters()).device
    precision = resolve_precision(trained.config.precision, device, cuda_only=True)
    expected = f"(the model was trained on features of encoder {trained.encoder!r})"
    dataset = _BagDataset(bags, indices, trained.feature_dim, slide_ids, expected, CheckpointError)
    loader = DataLoader(dataset, batch_size=1, num_workers=num_workers, collate_fn=_as_list)
    results = {t.name: np.zeros(_output_shape(t, len(indices))) for t in trained.tasks}
    for row, items in enumerate(tqdm(loader, desc="predict", leave=False, disable=not progress)):
        bag, j = items[0]
        with autocast(device, precision):
            out = model(bag.unsqueeze(0).to(device))
        for task in trained.tasks:
            value = out.outputs[task.name].float()
            if task.kind == "classification":
                results[task.name][row] = value.softmax(dim=-1)[0].cpu().numpy()
            elif task.kind == "survival":
                results[task.name][row] = _survival_row(task, value)
            else:
                mean, std = trained.regression_stats[task.name]
                results[task.name][row] = float(value[0]) * std + mean
        if on_attention is not None:
            maps = {k: v[0].float().cpu().numpy() for k, v in out.attention.items()}
            on_attention(str(slide_ids[j]), maps)
    return results


def _output_shape(task: TaskSpec, n: int) -> tuple[int, ...]:
    if task.kind == "classification":
        return (n, task.n_outputs)
    if task.kind == "survival":
        return (n, 1 + (task.n_bins or 0))
    return (n,)


def _survival_row(task: TaskSpec, value: torch.Tensor) -> np.ndarray:
    """Risk (higher = worse), then survival to the end of each bin (discrete-time)."""
    if task.n_bins is None:
        return np.array([float(value.reshape(-1)[0])])
    curve = discrete_survival(value.reshape(1, -1))
    return np.concatenate([[-float(curve.sum())], curve[0].cpu().numpy()])


def _survival_columns(
    task: TaskSpec, out: np.ndarray, info: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``<task>_risk`` and, when the model has cut-offs, ``<task>_group`` (low/mid/high)."""
    columns: dict[str, Any] = {f"{task.name}_risk": out[:, 0]}
    cutoffs = (info or {}).get("cutoffs")
    if cutoffs:
        names = np.array(group_names(len(cutoffs) + 1), dtype=object)
        columns[f"{task.name}_group"] = names[assign_groups(risk=out[:, 0], cutoffs=cutoffs)]
    return columns


def _task_columns(
    task: TaskSpec, out: np.ndarray, survival: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``<task>_pred`` (class name or value) and ``<task>_prob_<class>`` columns; for a
    survival task ``<task>_risk`` and ``<task>_group`` (``survival``: the model's cut-offs)."""
    if task.kind == "survival":
        return _survival_columns(task, out, survival)
    if task.kind == "regression":
        return {f"{task.name}_pred": out}
    classes = np.array(task.classes, dtype=object)
    columns: dict[str, Any] = {f"{task.name}_pred": classes[out.argmax(axis=1)] if len(out) else []}
    for c, name in enumerate(task.classes or ()):
        columns[f"{task.name}_prob_{name}"] = out[:, c]
    return columns


def predict_table(
    trained: TrainedModel,
    bags: Sequence[Any],
    slide_ids: Sequence[str],
    *,
    encoder: str | None = None,
    on_attention: Callable[[str, dict[str, np.ndarray]], None] | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """The table of :func:`models.training.predict` for an in-memory ``trained`` model."""
    if len(slide_ids) != len(bags):
        raise TrainingDataError(f"{len(slide_ids)} slide_ids for {len(bags)} bags")
    if encoder is not None and trained.encoder is not None and encoder != trained.encoder:
        raise CheckpointError(
            f"the model expects features from encoder {trained.encoder!r} "
            f"(dim {trained.feature_dim}), got features from {encoder!r}: embed the slides "
            f"with {trained.encoder!r}"
        )
    ids = [str(s) for s in slide_ids]
    outputs = _infer(
        trained,
        bags,
        np.arange(len(bags)),
        ids,
        num_workers=num_workers,
        progress=progress,
        on_attention=on_attention,
    )
    columns: dict[str, Any] = {"slide_id": ids}
    for task in trained.tasks:
        columns.update(_task_columns(task, outputs[task.name], trained.survival.get(task.name)))
    return pd.DataFrame(columns)
