"""The public ``predict``: a trained model or a checkpoint path applied to bags, as a table."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from models.training.checkpoint import TrainedModel, load_checkpoint
from models.training.inference import predict_table


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
    return predict_table(
        trained,
        bags,
        slide_ids,
        encoder=encoder,
        on_attention=on_attention,
        num_workers=num_workers,
        progress=progress,
    )
