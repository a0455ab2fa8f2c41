"""Per-tile attention and per-slide predictions of a trained MIL head, for exports."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from wsi.export.sources import SlideTiles


def attention_and_predictions(
    checkpoint: str | os.PathLike[str], slides: Sequence[SlideTiles]
) -> tuple[dict[str, dict[str, np.ndarray]], pd.DataFrame]:
    """``({slide_id: {"attention_<task>": (N,) float}}, predictions)`` of the checkpoint's
    model on each slide with tiles (``models.predict``'s table: slide_id, <task>_pred, …).

    Raises :class:`models.CheckpointError` when the features come from another encoder.
    """
    import models

    trained = models.load_checkpoint(checkpoint)
    maps: dict[str, dict[str, np.ndarray]] = {}

    def keep(slide_id: str, attention: dict[str, np.ndarray]) -> None:
        maps[slide_id] = {
            f"attention_{task}": np.asarray(v, np.float64) for task, v in attention.items()
        }

    with_tiles = [s for s in slides if len(s) and s.features is not None]
    if not with_tiles:
        return {}, pd.DataFrame({"slide_id": []})
    frame = models.predict(
        trained,
        [s.features for s in with_tiles],
        [s.slide_id for s in with_tiles],
        encoder=with_tiles[0].encoder or None,
        on_attention=keep,
    )
    return maps, frame
