"""A trained MIL head and its checkpoint file (save / load, format version)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models.atomic import write_atomic
from models.errors import CheckpointError
from models.mil import MILModel, TaskSpec, build_model, known_heads
from models.training.config import TrainConfig
from models.training.inference import _infer, predict_table

CHECKPOINT_VERSION = 1


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
    survival: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per survival task: ``bins`` (inner edges of discrete-time bins, [] for Cox),
    ``cutoffs`` (risk-group cut-offs fixed on the training slides) and ``groups`` (names)."""

    def __repr__(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        tasks = ", ".join(_task_text(t) for t in self.tasks)
        return (
            f"TrainedModel({self.arch} on {self.feature_dim}-d features of encoder "
            f"{self.encoder!r}, {n_params:,} parameters; tasks: {tasks}; "
            f"best epoch {self.best_epoch})"
        )

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
                {
                    "name": t.name,
                    "kind": t.kind,
                    "classes": list(t.classes or []) or None,
                    "n_bins": t.n_bins,
                }
                for t in self.tasks
            ],
            "regression_stats": {k: list(v) for k, v in self.regression_stats.items()},
            "encoder": self.encoder,
            "feature_dim": self.feature_dim,
            "best_epoch": self.best_epoch,
            "curves": self.curves.to_dict(orient="list"),
            "survival": self.survival,
        }
        return write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))

    def attention(self, bag: Any) -> dict[str, np.ndarray]:
        """Per-task attention over the tiles of one (N, D) bag: task -> (N,) summing to 1."""
        maps: dict[str, np.ndarray] = {}
        _infer(self, [bag], np.array([0]), ["bag"], on_attention=lambda _, m: maps.update(m))
        return maps

    def predict(self, bags: Sequence[Any], slide_ids: Sequence[str], **kwargs: Any) -> pd.DataFrame:
        """Same as :func:`predict` with this model."""
        return predict_table(self, bags, slide_ids, **kwargs)


def _task_text(task: TaskSpec) -> str:
    """``type (3 classes)`` or ``immune (regression)``."""
    if task.kind == "classification":
        return f"{task.name} ({task.n_outputs} classes)"
    if task.kind == "survival":
        return f"{task.name} (survival, {'Cox' if task.n_bins is None else f'{task.n_bins} bins'})"
    return f"{task.name} ({task.kind})"


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
    arch = ckpt.get("arch")
    if arch not in known_heads():
        raise CheckpointError(
            f"{path} holds a MIL head {arch!r} that is not registered in this process "
            f"(known: {', '.join(known_heads())}): call models.register_head({arch!r}, builder) "
            "with the builder it was trained with, then load it again"
        )
    try:
        known = {f.name for f in fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in known})
        tasks = tuple(
            TaskSpec(t["name"], t["kind"], t["classes"], t.get("n_bins")) for t in ckpt["tasks"]
        )
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
        survival=ckpt.get("survival", {}),
    )
