"""Fit, cross-validate and apply MIL heads on bags of tile features; MIL checkpoints.

Bags are any ``Sequence`` whose item ``i`` is slide i's (N, D) float features (numpy array
or tensor): a list in memory, or an object whose ``__getitem__`` reads one slide from disk.
Training only indexes it, in shuffled order, once per epoch per bag (through a torch
DataLoader, so ``num_workers`` > 0 prefetches), and never holds all bags at once. An object
with a ``feature_dim`` attribute saves one read up front.

``labels`` is a DataFrame whose row i describes ``bags[i]``: a ``slide_id`` column (or
index), an optional patient column, and target columns. Empty cells (NaN, None, "") mean
"unknown": that slide adds no loss for that task, and still trains the others.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold, StratifiedGroupKFold
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm.auto import tqdm

from models.atomic import remove_stale_temporaries, write_atomic, write_text_atomic
from models.errors import CheckpointError, TrainingDataError
from models.metrics import classification_metrics, regression_metrics
from models.mil import MILModel, MILOutput, TaskSpec, build_model

CHECKPOINT_VERSION = 1
FINISHED_RUN = "metrics.json"  # written last: a run folder is finished when it exists
FINISHED_FOLD = "metrics.json"  # in fold_<k>/, written last: the fold is finished
RUN_KEY_VERSION = 1
_FOLD_DIR = re.compile(r"fold_(\d+)")

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

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.patience >= 1, "patience must be >= 1"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.max_tiles is None or self.max_tiles >= 1, "max_tiles must be None or >= 1"),
            (self.regression_loss in ("mse", "huber"), "regression_loss must be 'mse' or 'huber'"),
            (
                self.precision in ("auto", "fp32", "bf16", "fp16"),
                "precision must be 'auto', 'fp32', 'bf16' or 'fp16'",
            ),
            (self.num_workers >= 0, "num_workers must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingDataError(f"bad TrainConfig: {message}")


# --------------------------------------------------------------------------- labels


@dataclass
class _Labels:
    """Encoded targets for every slide: class indices (-1 unknown) or floats (NaN unknown)."""

    tasks: tuple[TaskSpec, ...]
    values: dict[str, np.ndarray]
    slide_ids: np.ndarray
    groups: np.ndarray
    has_patients: bool

    @property
    def stratify(self) -> np.ndarray | None:
        """Class indices of the first classification task (the CV strata), if any."""
        for task in self.tasks:
            if task.kind == "classification":
                return self.values[task.name]
        return None

    def known_any(self) -> np.ndarray:
        """True for slides with at least one known target."""
        known = [
            v >= 0 if t.kind == "classification" else ~np.isnan(v)
            for t, v in ((t, self.values[t.name]) for t in self.tasks)
        ]
        return np.logical_or.reduce(known)


def _is_blank(series: pd.Series) -> pd.Series:
    return series.isna() | series.astype(str).str.strip().eq("")


def _class_name(value: Any) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _encode_classes(series: pd.Series) -> tuple[tuple[str, ...], np.ndarray]:
    blank = _is_blank(series).to_numpy()
    names = [None if b else _class_name(v) for v, b in zip(series.tolist(), blank, strict=True)]
    distinct = {n for n in names if n is not None}
    try:
        classes = tuple(sorted(distinct, key=float))
    except ValueError:
        classes = tuple(sorted(distinct))
    position = {c: i for i, c in enumerate(classes)}
    codes = np.array([-1 if n is None else position[n] for n in names], dtype=np.int64)
    return classes, codes


def _encode_regression(series: pd.Series, column: str, slide_ids: np.ndarray) -> np.ndarray:
    blank = _is_blank(series).to_numpy()
    numeric = pd.to_numeric(series.where(~blank), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~blank & ~np.isfinite(numeric)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TrainingDataError(
            f"regression target {column!r} has a non-numeric value {series.iloc[i]!r} "
            f"(slide {slide_ids[i]!r}, {int(bad.sum())} such cells): use numbers, or leave "
            "the cell empty for unknown"
        )
    if np.isnan(numeric).all():
        raise TrainingDataError(
            f"regression target {column!r} is empty for every slide: fill it in or drop it "
            "from regress="
        )
    return numeric


def _read_labels(labels: pd.DataFrame, n_bags: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Check the table's shape: a slide_id column (or index), one row per bag, unique ids."""
    if not isinstance(labels, pd.DataFrame):
        raise TrainingDataError(f"labels must be a pandas DataFrame, got {type(labels).__name__}")
    if "slide_id" not in labels.columns:
        if labels.index.name != "slide_id":
            raise TrainingDataError(
                f"labels need a 'slide_id' column (or index); columns are: {list(labels.columns)}"
            )
        labels = labels.reset_index()
    labels = labels.reset_index(drop=True)
    if len(labels) != n_bags:
        raise TrainingDataError(
            f"labels has {len(labels)} rows but there are {n_bags} bags: row i of labels "
            "must describe bags[i]"
        )
    slide_ids = labels["slide_id"].astype(str).to_numpy()
    repeated = pd.Series(slide_ids)
    repeated = repeated[repeated.duplicated()].unique()
    if len(repeated):
        raise TrainingDataError(f"slide_id values repeat in labels: {list(repeated[:5])}")
    return labels, slide_ids


def _patient_groups(
    labels: pd.DataFrame, slide_ids: np.ndarray, patient_col: str | None
) -> tuple[np.ndarray, bool]:
    """Group key per slide: its patient, or the slide itself when the patient is unknown."""
    if patient_col is None or patient_col not in labels.columns:
        return slide_ids.copy(), False
    patients = labels[patient_col]
    known = ~_is_blank(patients).to_numpy()
    groups = np.where(known, "patient:" + patients.astype(str).to_numpy(), "slide:" + slide_ids)
    return groups, True


def _as_columns(columns: Sequence[str] | str) -> list[str]:
    return [columns] if isinstance(columns, str) else list(columns)


def _encode_labels(
    labels: pd.DataFrame,
    classify: Sequence[str] | str,
    regress: Sequence[str] | str,
    n_bags: int,
    patient_col: str | None,
    require_task: bool = True,
) -> _Labels:
    labels, slide_ids = _read_labels(labels, n_bags)
    classify, regress = _as_columns(classify), _as_columns(regress)
    if require_task and not classify and not regress:
        raise TrainingDataError("name at least one target: classify=[column] or regress=[column]")
    both = set(classify) & set(regress)
    if both:
        raise TrainingDataError(f"columns {sorted(both)} are in both classify and regress")
    missing = [c for c in classify + regress if c not in labels.columns]
    if missing:
        raise TrainingDataError(
            f"target column(s) {missing} not in labels; columns are: {list(labels.columns)}"
        )
    tasks, values = [], {}
    for column in classify:
        classes, codes = _encode_classes(labels[column])
        if len(classes) < 2:
            raise TrainingDataError(
                f"classification target {column!r} has {len(classes)} class(es) "
                f"{list(classes)}; it needs at least 2"
            )
        tasks.append(TaskSpec(column, "classification", classes))
        values[column] = codes
    for column in regress:
        values[column] = _encode_regression(labels[column], column, slide_ids)
        tasks.append(TaskSpec(column, "regression"))
    groups, has_patients = _patient_groups(labels, slide_ids, patient_col)
    return _Labels(tuple(tasks), values, slide_ids, groups, has_patients)


# --------------------------------------------------------------------------- splits


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


# --------------------------------------------------------------------------- bags


def _feature_dim(bags: Sequence[Any]) -> int:
    if len(bags) == 0:
        raise TrainingDataError("no bags given")
    dim = getattr(bags, "feature_dim", None)
    if dim is None:
        dim = int(np.shape(bags[0])[-1])
    return int(dim)


class _BagDataset(Dataset):
    """Bags at ``indices`` as float32 tensors, checked against the expected feature dim."""

    def __init__(
        self,
        bags: Sequence[Any],
        indices: np.ndarray,
        feature_dim: int,
        slide_ids: Sequence[str],
        describe_expected: str,
        error: type[Exception],
    ) -> None:
        self.bags, self.indices, self.feature_dim = bags, indices, feature_dim
        self.slide_ids, self.describe_expected, self.error = slide_ids, describe_expected, error

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        j = int(self.indices[i])
        bag = torch.as_tensor(self.bags[j])
        if bag.dim() != 2 or bag.shape[1] != self.feature_dim:
            raise self.error(
                f"bag of slide {self.slide_ids[j]!r} has shape {tuple(bag.shape)}, expected "
                f"(N, {self.feature_dim}) {self.describe_expected}"
            )
        return bag.float(), j


def _as_list(items: list[tuple[Tensor, int]]) -> list[tuple[Tensor, int]]:
    return items


def _loader(dataset: _BagDataset, config: TrainConfig, shuffle: bool) -> DataLoader:
    """Batches of ``config.batch_size`` bags. The shuffle order comes from a sampler with its
    own generator seeded by ``config.seed``, so it does not depend on ``num_workers``."""
    sampler = None
    if shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(config.seed))
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=_as_list,
        generator=torch.Generator().manual_seed(config.seed),  # worker seeds only
        persistent_workers=config.num_workers > 0,
    )


def _batch(
    items: list[tuple[Tensor, int]],
    max_tiles: int | None,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Bags -> (x (B, N, D), mask (B, N) or None for one bag, slide indices (B,))."""
    bags = [bag for bag, _ in items]
    index = torch.tensor([j for _, j in items], device=device)
    if max_tiles is not None:
        bags = [
            bag[torch.randperm(len(bag), generator=generator)[:max_tiles].sort().values]
            if len(bag) > max_tiles
            else bag
            for bag in bags
        ]
    if len(bags) == 1:
        return bags[0].unsqueeze(0).to(device, non_blocking=True), None, index
    n = max(len(bag) for bag in bags)
    x = torch.zeros(len(bags), n, bags[0].shape[1])
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, bag in enumerate(bags):
        x[i, : len(bag)] = bag
        mask[i, : len(bag)] = True
    return x.to(device, non_blocking=True), mask.to(device), index


# --------------------------------------------------------------------------- loss


def _task_losses(
    out: MILOutput,
    targets: Mapping[str, Tensor],
    tasks: Sequence[TaskSpec],
    class_weights: Mapping[str, Tensor],
    regression_loss: str,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per task: (sum of the losses of slides whose target is known, number of such slides).

    Classification: class-weighted cross-entropy (target -1 = unknown). Regression: MSE or
    Huber on standardised targets (NaN = unknown). Unknown targets add exactly zero.
    """
    terms = {}
    for task in tasks:
        pred, y = out.outputs[task.name].float(), targets[task.name]
        if task.kind == "classification":
            known = y >= 0
            safe = y.clamp(min=0)
            per = F.cross_entropy(pred, safe, reduction="none") * class_weights[task.name][safe]
        else:
            known = ~torch.isnan(y)
            safe = torch.where(known, y, torch.zeros_like(y))
            loss_fn = F.mse_loss if regression_loss == "mse" else F.huber_loss
            per = loss_fn(pred, safe, reduction="none")
        terms[task.name] = ((per * known).sum(), known.sum())
    return terms


def _batch_loss(
    out: MILOutput,
    targets: Mapping[str, Tensor],
    tasks: Sequence[TaskSpec],
    class_weights: Mapping[str, Tensor],
    regression_loss: str,
) -> Tensor:
    """Training loss of a batch: sum over tasks of the mean over known targets, plus the
    head's extra loss (CLAM's instance loss)."""
    terms = _task_losses(out, targets, tasks, class_weights, regression_loss)
    total = sum(loss / count.clamp(min=1) for loss, count in terms.values())
    if out.extra_loss is not None:
        total = total + out.extra_loss.float()
    return total


def _class_weights(codes: np.ndarray, n_classes: int, weighted: bool) -> Tensor:
    """Weights whose mean over the known training slides is 1: n / (C_present * n_c)."""
    if not weighted:
        return torch.ones(n_classes)
    counts = np.bincount(codes[codes >= 0], minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


# --------------------------------------------------------------------------- devices


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: None (fp32) on CPU or for 'fp32'."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


# --------------------------------------------------------------------------- model


@dataclass
class TrainedModel:
    """A trained MIL head with what it needs to be applied: task specs (class names),
    regression mean/std (targets were standardised), the encoder name and feature dim
    it expects, and its training curves."""

    model: MILModel
    arch: str
    config: TrainConfig
    tasks: tuple[TaskSpec, ...]
    regression_stats: dict[str, tuple[float, float]]
    feature_dim: int
    encoder: str | None = None
    best_epoch: int = 0
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a checkpoint (torch.save of a plain dict; read with :func:`load_checkpoint`),
        atomically: a crash leaves the previous file or the new one, never a partial one."""
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        checkpoint = {
            "format_version": CHECKPOINT_VERSION,
            "arch": self.arch,
            "config": asdict(self.config),
            "state_dict": state,
            "tasks": [
                {"name": t.name, "kind": t.kind, "classes": list(t.classes or []) or None}
                for t in self.tasks
            ],
            "regression_stats": {k: list(v) for k, v in self.regression_stats.items()},
            "encoder": self.encoder,
            "feature_dim": self.feature_dim,
            "best_epoch": self.best_epoch,
            "curves": self.curves.to_dict(orient="list"),
        }
        return write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))

    def attention(self, bag: Any) -> dict[str, np.ndarray]:
        """Per-task attention over the tiles of one (N, D) bag: task -> (N,) summing to 1."""
        maps: dict[str, np.ndarray] = {}
        _infer(self, [bag], np.array([0]), ["bag"], on_attention=lambda _, m: maps.update(m))
        return maps

    def predict(self, bags: Sequence[Any], slide_ids: Sequence[str], **kwargs: Any) -> pd.DataFrame:
        """Same as :func:`predict` with this model."""
        return predict(self, bags, slide_ids, **kwargs)


def load_checkpoint(path: str | os.PathLike[str], device: str = "cpu") -> TrainedModel:
    """Read a checkpoint written by :meth:`TrainedModel.save` onto ``device``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no MIL checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read MIL checkpoint {path}: {exc}. Is it a file from TrainedModel.save?"
        ) from exc
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(
            f"{path} is not a MIL checkpoint of this library (no format_version); "
            "write one with TrainedModel.save or wsi train"
        )
    if ckpt["format_version"] != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {ckpt['format_version']}, but this version "
            f"of the library reads version {CHECKPOINT_VERSION}: use the matching library "
            "version or retrain"
        )
    try:
        known = {f.name for f in fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in known})
        tasks = tuple(TaskSpec(t["name"], t["kind"], t["classes"]) for t in ckpt["tasks"])
        model = build_model(
            ckpt["arch"],
            ckpt["feature_dim"],
            tasks,
            hidden=config.hidden,
            dropout=config.dropout,
            **config.arch_kwargs,
        )
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is damaged or incomplete: {exc}") from exc
    model.to(device).eval()
    return TrainedModel(
        model=model,
        arch=ckpt["arch"],
        config=config,
        tasks=tasks,
        regression_stats={
            k: (float(v[0]), float(v[1])) for k, v in ckpt["regression_stats"].items()
        },
        feature_dim=int(ckpt["feature_dim"]),
        encoder=ckpt["encoder"],
        best_epoch=int(ckpt.get("best_epoch", 0)),
        curves=pd.DataFrame(ckpt.get("curves", {})),
    )


# --------------------------------------------------------------------------- fit


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
    device = _device(config.device)
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
    amp = _amp_dtype(config.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
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
            with _autocast(device, amp):
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
                model, val_loader, targets, lab.tasks, weights, config, amp, device
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
    amp: torch.dtype | None,
    device: torch.device,
) -> dict[str, float]:
    """Mean loss per task over the validation slides with a known target (NaN if none)."""
    model.eval()
    sums = {t.name: torch.zeros((), device=device) for t in tasks}
    counts = {t.name: torch.zeros((), device=device) for t in tasks}
    for items in loader:
        x, mask, index = _batch(items, None, None, device)
        with _autocast(device, amp):
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


# --------------------------------------------------------------------------- inference


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
    """Outputs for ``bags[indices]``, one bag at a time: class probabilities (n, C), or
    regression values (n,) on the original scale."""
    model = trained.model.eval()
    device = next(model.parameters()).device
    amp = _amp_dtype(trained.config.precision, device)
    expected = f"(the model was trained on features of encoder {trained.encoder!r})"
    dataset = _BagDataset(bags, indices, trained.feature_dim, slide_ids, expected, CheckpointError)
    loader = DataLoader(dataset, batch_size=1, num_workers=num_workers, collate_fn=_as_list)
    results = {
        t.name: np.zeros(
            (len(indices), t.n_outputs) if t.kind == "classification" else len(indices),
            dtype=np.float64,
        )
        for t in trained.tasks
    }
    for row, items in enumerate(tqdm(loader, desc="predict", leave=False, disable=not progress)):
        bag, j = items[0]
        with _autocast(device, amp):
            out = model(bag.unsqueeze(0).to(device))
        for task in trained.tasks:
            value = out.outputs[task.name].float()
            if task.kind == "classification":
                results[task.name][row] = value.softmax(dim=-1)[0].cpu().numpy()
            else:
                mean, std = trained.regression_stats[task.name]
                results[task.name][row] = float(value[0]) * std + mean
        if on_attention is not None:
            maps = {k: v[0].float().cpu().numpy() for k, v in out.attention.items()}
            on_attention(str(slide_ids[j]), maps)
    return results


def _task_columns(task: TaskSpec, out: np.ndarray) -> dict[str, Any]:
    """``<task>_pred`` (class name or value) and ``<task>_prob_<class>`` columns."""
    if task.kind == "regression":
        return {f"{task.name}_pred": out}
    classes = np.array(task.classes, dtype=object)
    columns: dict[str, Any] = {f"{task.name}_pred": classes[out.argmax(axis=1)] if len(out) else []}
    for c, name in enumerate(task.classes or ()):
        columns[f"{task.name}_prob_{name}"] = out[:, c]
    return columns


def predict(
    model: TrainedModel | str | os.PathLike[str],
    bags: Sequence[Any],
    slide_ids: Sequence[str],
    *,
    encoder: str | None = None,
    on_attention: Callable[[str, dict[str, np.ndarray]], None] | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Predict every bag with a trained model or a checkpoint path.

    Returns a DataFrame: ``slide_id``, then per task ``<task>_pred`` (class name, or value
    in the target's units) and ``<task>_prob_<class>`` per class. ``encoder``: the encoder
    that made the features; refused (CheckpointError) if the model was trained on another.
    ``on_attention(slide_id, {task: (N,) attention})`` is called per bag (for heatmaps).
    """
    trained = model if isinstance(model, TrainedModel) else load_checkpoint(model)
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
        columns.update(_task_columns(task, outputs[task.name]))
    return pd.DataFrame(columns)


# --------------------------------------------------------------------------- public API


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


@dataclass
class CVResult:
    """Cross-validation results: ``metrics`` (the metrics.json dict), out-of-fold
    ``predictions`` (one row per slide), the fold of each slide and each fold's model;
    ``final``: the model trained on every slide (``refit=True``), and ``reused_folds``: the
    folds read back from ``out_dir`` instead of trained (a resumed run)."""

    metrics: dict[str, Any]
    predictions: pd.DataFrame
    folds: np.ndarray
    models: list[TrainedModel]
    final: TrainedModel | None = None
    reused_folds: list[int] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        """One row per (task, metric): mean and sample sd over folds (NaN folds skipped)."""
        rows = []
        for task, entry in self.metrics["tasks"].items():
            names = [k for k in entry["per_fold"][0] if k not in ("fold", "n")]
            for name in names:
                values = np.array(
                    [np.nan if f[name] is None else f[name] for f in entry["per_fold"]], dtype=float
                )
                values = values[~np.isnan(values)]
                sd = float(values.std(ddof=1)) if values.size > 1 else float("nan")
                mean = float(values.mean()) if values.size else float("nan")
                rows.append({"task": task, "metric": name, "mean": mean, "sd": sd})
        return pd.DataFrame(rows, columns=["task", "metric", "mean", "sd"])


def _json_number(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _fold_metrics(task: TaskSpec, truth: np.ndarray, out: np.ndarray) -> dict[str, float]:
    if task.kind == "classification":
        known = truth >= 0
        return classification_metrics(truth[known], out[known])
    known = ~np.isnan(truth)
    return regression_metrics(truth[known], out[known])


def cross_validate(
    bags: Sequence[Any],
    labels: pd.DataFrame,
    *,
    classify: Sequence[str] = (),
    regress: Sequence[str] = (),
    folds: int = 5,
    arch: str = "abmil",
    config: TrainConfig | None = None,
    patient_col: str = "patient_id",
    out_dir: str | os.PathLike[str] | None = None,
    encoder: str | None = None,
    progress: bool = True,
    refit: bool = False,
    data_key: str | None = None,
) -> CVResult:
    """K-fold cross-validation grouped by patient and stratified by the first class target.

    Each fold trains on the others (with its own early-stopping split) and predicts its
    slides. Metrics per fold and their mean: AUC (macro one-vs-rest) and balanced accuracy,
    or Spearman, Pearson and MAE (target units). ``refit=True`` then trains the final model
    on every slide (:attr:`CVResult.final`).

    With ``out_dir`` (one run per folder; every file is written atomically):
    ``fold_<k>/model.pt``, ``fold_<k>/curves.csv`` and, last, ``fold_<k>/metrics.json``
    (the fold's scores: the fold is finished); then ``predictions.csv``, ``model.pt``
    (``refit``) and, last of all, ``metrics.json``: the run is finished when it exists.
    Whatever an earlier run left there is removed first (metrics.json before anything
    else), except the finished folds this run can reuse: ``data_key`` identifies the bags'
    contents (``wsi train`` passes a hash of the feature files' names, sizes and mtimes),
    and with it a re-run reuses every finished fold whose bags, labels, folds, arch, config
    (but ``num_workers``), device type and library versions are the same instead of
    retraining it. A crashed run re-run so ends with the outputs of an uninterrupted one
    (bit-identical on CPU with the same number of threads, see :class:`TrainConfig`).
    """
    config = config or TrainConfig()
    lab = _encode_labels(labels, classify, regress, len(bags), patient_col)
    fold_of = _assign_folds(lab, folds, config.seed)
    dim = _feature_dim(bags)
    out_path = Path(out_dir) if out_dir is not None else None
    run_key = None
    if out_path is not None and data_key is not None:
        run_key = _run_key(lab, fold_of, arch, config, dim, encoder, data_key)
    if out_path is not None:
        _start_run(out_path, folds, run_key)
    n = len(bags)
    outputs = {
        t.name: np.zeros((n, t.n_outputs) if t.kind == "classification" else n) for t in lab.tasks
    }
    per_fold: dict[str, list[dict[str, Any]]] = {t.name: [] for t in lab.tasks}
    models, reused = [], []
    for k in tqdm(range(folds), desc="folds", leave=False, disable=not progress):
        test = np.flatnonzero(fold_of == k)
        fold_dir = out_path / f"fold_{k}" if out_path is not None else None
        trained = _finished_fold(fold_dir, config) if fold_dir is not None else None
        if trained is not None:
            reused.append(k)
        else:
            if fold_dir is not None:
                fold_dir.mkdir(parents=True, exist_ok=True)
            trained = _fit(
                bags,
                lab,
                np.flatnonzero(fold_of != k),
                arch,
                config,
                dim,
                encoder,
                progress,
                f"fold {k} epochs",
            )
        fold_out = _infer(trained, bags, test, lab.slide_ids, num_workers=config.num_workers)
        scores: dict[str, dict[str, Any]] = {}
        for task in lab.tasks:
            outputs[task.name][test] = fold_out[task.name]
            truth = lab.values[task.name][test]
            found = _fold_metrics(task, truth, fold_out[task.name])
            n_known = int(
                (truth >= 0).sum() if task.kind == "classification" else (~np.isnan(truth)).sum()
            )
            scores[task.name] = {"n": n_known, **{m: _json_number(v) for m, v in found.items()}}
            per_fold[task.name].append({"fold": k, **scores[task.name]})
        models.append(trained)
        if fold_dir is not None and k not in reused:
            trained.save(fold_dir / "model.pt")
            _write_csv(trained.curves, fold_dir / "curves.csv")
            fold_metrics = {
                "fold": k,
                "run_key": run_key,
                "n_slides": len(test),
                "best_epoch": trained.best_epoch,
                "tasks": scores,
            }
            write_text_atomic(fold_dir / FINISHED_FOLD, json.dumps(fold_metrics, indent=2))

    predictions = _cv_predictions(lab, fold_of, outputs)
    metrics = {"model": arch, "folds": folds, "tasks": {}}
    for task in lab.tasks:
        entry: dict[str, Any] = {"kind": task.kind}
        if task.kind == "classification":
            entry["classes"] = list(task.classes or ())
        for name in [m for m in per_fold[task.name][0] if m not in ("fold", "n")]:
            values = [f[name] for f in per_fold[task.name] if f[name] is not None]
            entry[name] = _json_number(float(np.mean(values))) if values else None
        entry["per_fold"] = per_fold[task.name]
        metrics["tasks"][task.name] = entry
    if out_path is not None:
        _write_csv(predictions, out_path / "predictions.csv")
    final = None
    if refit:
        final = _fit(bags, lab, np.arange(n), arch, config, dim, encoder, progress, "epochs")
        if out_path is not None:
            final.save(out_path / "model.pt")
    if out_path is not None:
        write_text_atomic(out_path / FINISHED_RUN, json.dumps(metrics, indent=2))
    return CVResult(
        metrics=metrics,
        predictions=predictions,
        folds=fold_of,
        models=models,
        final=final,
        reused_folds=reused,
    )


# --------------------------------------------------------------------------- run folders


def _start_run(out: Path, folds: int, run_key: str | None) -> None:
    """Make ``out`` hold nothing of an earlier run but this run's finished folds: its
    metrics.json goes first (the folder must never look finished), then predictions.csv,
    model.pt, every fold folder that is not a finished fold of ``run_key`` (another run's,
    unfinished, or beyond ``folds``) and temporaries left by killed writers."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (FINISHED_RUN, "predictions.csv", "model.pt"):
        (out / name).unlink(missing_ok=True)
    for fold_dir in out.iterdir():
        match = _FOLD_DIR.fullmatch(fold_dir.name)
        if not match or not fold_dir.is_dir():
            continue
        if run_key is not None and int(match.group(1)) < folds and _fold_key(fold_dir) == run_key:
            continue
        _remove_fold(fold_dir)
    remove_stale_temporaries(out)


def _fold_key(fold_dir: Path) -> str | None:
    """The run key in a finished fold's metrics.json; None for an unfinished fold."""
    try:
        key = json.loads((fold_dir / FINISHED_FOLD).read_text(encoding="utf-8")).get("run_key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def _remove_fold(fold_dir: Path) -> None:
    """Delete a fold folder, its completion marker first."""
    (fold_dir / FINISHED_FOLD).unlink(missing_ok=True)
    shutil.rmtree(fold_dir)


def _finished_fold(fold_dir: Path, config: TrainConfig) -> TrainedModel | None:
    """The model of a fold that :func:`_start_run` kept (a finished fold of this run), or
    None after removing a fold whose checkpoint cannot be read."""
    if not (fold_dir / FINISHED_FOLD).is_file():
        return None
    try:
        return load_checkpoint(fold_dir / "model.pt", device=str(_device(config.device)))
    except CheckpointError:
        _remove_fold(fold_dir)
        return None


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wsi")
    except PackageNotFoundError:
        return "unknown"


def _run_key(
    lab: _Labels,
    fold_of: np.ndarray,
    arch: str,
    config: TrainConfig,
    feature_dim: int,
    encoder: str | None,
    data_key: str,
) -> str:
    """SHA-256 of everything that decides a fold's model: bags (``data_key``), slides,
    patients, encoded targets, folds, arch, config (less ``num_workers``, which changes
    nothing), device type and library versions."""
    settings = {k: v for k, v in asdict(config).items() if k != "num_workers"}
    settings["device"] = _device(config.device).type
    payload = {
        "version": RUN_KEY_VERSION,
        "library": _library_version(),
        "torch": torch.__version__,
        "data": data_key,
        "encoder": encoder,
        "feature_dim": feature_dim,
        "arch": arch,
        "config": settings,
        "tasks": [[t.name, t.kind, list(t.classes or ())] for t in lab.tasks],
        "slide_ids": lab.slide_ids.tolist(),
        "groups": lab.groups.tolist(),
        "targets": {
            name: [None if isinstance(v, float) and math.isnan(v) else v for v in values.tolist()]
            for name, values in lab.values.items()
        },
        "folds": fold_of.tolist(),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _cv_predictions(
    lab: _Labels, fold_of: np.ndarray, outputs: Mapping[str, np.ndarray]
) -> pd.DataFrame:
    columns: dict[str, Any] = {"slide_id": lab.slide_ids, "fold": fold_of}
    for task in lab.tasks:
        truth = lab.values[task.name]
        if task.kind == "classification":
            names = np.array(task.classes, dtype=object)
            columns[f"{task.name}_true"] = np.where(truth >= 0, names[truth.clip(min=0)], None)
        else:
            columns[f"{task.name}_true"] = truth
        columns.update(_task_columns(task, outputs[task.name]))
    return pd.DataFrame(columns)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    write_text_atomic(path, frame.to_csv(index=False))
