"""The frozen subgroup model: how a slide's numbers become a group, saved as JSON + npz.

Everything discovery learnt (standardisation, projection, group centres and the
method's own parameters) is stored as plain arrays (``model.npz``, read with
``allow_pickle=False``) and a JSON header (``model.json``), so a validation cohort is put
into the same groups on any machine and nothing executable is ever unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.atomic import write_atomic, write_text_atomic
from wsi.errors import FeatureFileError, InvalidParameterError

FORMAT_VERSION = 1
"""Version of the ``model.json`` + ``model.npz`` layout."""

METHODS = ("kmeans", "gmm", "agglomerative")
"""Clustering methods (scikit-learn): k-means, diagonal Gaussian mixture, Ward linkage."""

_ARRAYS = (
    "mean",
    "scale",
    "components",
    "centroids",
    "gmm_weights",
    "gmm_means",
    "gmm_vars",
    "reference_points",
    "reference_labels",
    "tile_centres",
)


@dataclass(repr=False)
class SubgroupModel:
    """A fitted, frozen set of ``k`` groups numbered 1..k (1 is the largest at discovery).

    ``columns`` are the input columns in order; ``mean``/``scale`` standardise them and
    ``components`` (optional) project onto principal axes; ``centroids`` (k, p) are the group
    centres in that space. ``gmm_*`` hold a Gaussian mixture's parameters,
    ``reference_points``/``reference_labels`` the discovery slides of an agglomerative model
    (new slides take their nearest one's group). ``tile_centres`` are the tile clusters of the
    ``tile-clusters`` input; ``encoder``/``feature_dim`` the features it expects.
    """

    method: str
    k: int
    input_kind: str
    columns: list[str]
    mean: np.ndarray
    scale: np.ndarray
    centroids: np.ndarray
    components: np.ndarray | None = None
    encoder: str = ""
    feature_dim: int = 0
    gmm_weights: np.ndarray | None = None
    gmm_means: np.ndarray | None = None
    gmm_vars: np.ndarray | None = None
    reference_points: np.ndarray | None = None
    reference_labels: np.ndarray | None = None
    tile_centres: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        source = f", {self.encoder}" if self.encoder else ""
        return (
            f"<SubgroupModel k={self.k} {self.method} on {self.input_kind}{source}, "
            f"{len(self.columns)} columns>"
        )

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        """Standardised (and projected) rows of a table with this model's ``columns``."""
        absent = [c for c in self.columns if c not in table.columns]
        if absent:
            raise InvalidParameterError(
                f"the table lacks {len(absent)} column(s) the model was fitted on "
                f"({absent[:5]}); pass the same kind of input ({self.input_kind})"
            )
        z = (table[self.columns].to_numpy(np.float64) - self.mean) / self.scale
        return z @ self.components.T if self.components is not None else z

    def labels_of(self, z: np.ndarray) -> np.ndarray:
        """Group (1..k) of each row of the model space."""
        if self.method == "kmeans":
            return _nearest(z, self.centroids) + 1
        if self.method == "gmm":
            log_p = (
                np.log(self.gmm_weights)[None, :]
                - 0.5 * np.sum(np.log(2 * np.pi * self.gmm_vars), axis=1)[None, :]
                - 0.5
                * (((z[:, None, :] - self.gmm_means[None]) ** 2) / self.gmm_vars[None]).sum(axis=2)
            )
            return np.argmax(log_p, axis=1) + 1
        return self.reference_labels[_nearest(z, self.reference_points)].astype(int)

    def assign(self, table: pd.DataFrame) -> pd.DataFrame:
        """``slide_id, group, distance`` for each row of ``table`` (indexed by slide_id):
        the frozen group and the Euclidean distance to its centre in the model space."""
        z = self.transform(table)
        groups = self.labels_of(z)
        distance = np.linalg.norm(z - self.centroids[groups - 1], axis=1)
        return pd.DataFrame(
            {"slide_id": table.index.astype(str), "group": groups, "distance": distance}
        )

    def check_features(self, encoder: str, feature_dim: int, where: str) -> None:
        """Refuse features of another encoder or width than discovery's."""
        if self.input_kind == "tme":
            return
        if feature_dim != self.feature_dim or (
            encoder and self.encoder and encoder != self.encoder
        ):
            raise FeatureFileError(
                f"{where}: features of {encoder or 'an unknown encoder'} ({feature_dim}-d), the "
                f"subgroup model was fitted on {self.encoder or 'unknown'} "
                f"({self.feature_dim}-d); embed the slides with --encoder {self.encoder}"
            )

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``folder/model.json`` and ``folder/model.npz``; returns the JSON path."""
        folder = Path(folder)
        arrays = {n: getattr(self, n) for n in _ARRAYS if getattr(self, n) is not None}
        header = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "k": self.k,
            "input": self.input_kind,
            "columns": self.columns,
            "encoder": self.encoder,
            "feature_dim": self.feature_dim,
            "arrays": sorted(arrays),
            "info": self.info,
        }
        write_atomic(folder / "model.npz", lambda tmp: _save_npz(tmp, arrays))
        return write_text_atomic(folder / "model.json", json.dumps(header, indent=2))


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _nearest(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.argmin(((z[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)


def load_subgroup_model(path: str | os.PathLike[str]) -> SubgroupModel:
    """Read a model saved by :meth:`SubgroupModel.save`: ``model.json``, its folder, or the
    ``.npz`` beside it."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.json"
    p = p.with_suffix(".json")
    if not p.is_file() or not p.with_suffix(".npz").is_file():
        raise InvalidParameterError(
            f"no subgroup model at {path}: pass the model.json written by `wsi subgroups "
            "discover` (model.npz beside it)"
        )
    header = json.loads(p.read_text(encoding="utf-8"))
    if header.get("format_version") != FORMAT_VERSION:
        raise InvalidParameterError(
            f"{p}: model format {header.get('format_version')}, this "
            f"library reads {FORMAT_VERSION}; re-run discovery"
        )
    with np.load(p.with_suffix(".npz"), allow_pickle=False) as npz:
        arrays = {n: npz[n] for n in header["arrays"]}
    return SubgroupModel(
        method=header["method"],
        k=int(header["k"]),
        input_kind=header["input"],
        columns=list(header["columns"]),
        encoder=header["encoder"],
        feature_dim=int(header["feature_dim"]),
        info=header.get("info", {}),
        **arrays,
    )
