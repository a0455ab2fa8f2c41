"""What subgroups are found in: one numeric row per slide, from one of three sources.

* ``embeddings``: the mean of a slide's tile features (``features/{encoder}/*.h5``);
* ``tme``: a TME table (``tme.csv`` of ``wsi tme profile``, or any CSV with ``slide_id`` and
  numeric columns; text columns are ignored);
* ``tile-clusters``: the cohort's tiles clustered with mini-batch k-means (streamed one file
  at a time), each slide described by its fraction of tiles per cluster, centred log-ratio.

Every reader returns a :class:`pandas.DataFrame` indexed by ``slide_id`` with numeric columns
only; no outcome column ever enters it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from wsi.cohort import feature_files
from wsi.errors import FeatureFileError, InvalidParameterError, LabelsError
from wsi.store.h5 import FeatureBag

INPUT_KINDS = ("embeddings", "tme", "tile-clusters")
"""The ``--input`` choices of ``wsi subgroups discover``."""

TILE_CLUSTERS = 8
"""Default number of tile clusters for the ``tile-clusters`` input."""

MAX_TILES_PER_SLIDE = 2000
"""Tiles per slide used to fit the tile clusters (a seeded random subset of larger bags)."""

_PSEUDO_COUNT = 0.5
"""Tiles added to every cluster count before the log-ratio, so an absent cluster is finite."""


def _bags(features_dir: Path) -> dict[str, FeatureBag]:
    """The non-empty feature files of a folder, one encoder and width, by slide id."""
    bags = {sid: FeatureBag(path) for sid, path in feature_files(features_dir).items()}
    encoders = {b.encoder for b in bags.values() if b.encoder}
    dims = {b.feature_dim for b in bags.values()}
    if len(encoders) > 1 or len(dims) > 1:
        raise FeatureFileError(
            f"{features_dir}: files of several encoders or widths ({sorted(encoders)}, "
            f"{sorted(dims)}); pass one OUT/features/<encoder> folder"
        )
    return {sid: b for sid, b in bags.items() if len(b) > 0}


def feature_source(features_dir: str | os.PathLike[str]) -> tuple[str, int]:
    """``(encoder, feature_dim)`` shared by the files of a features folder."""
    bags = _bags(Path(features_dir))
    if not bags:
        raise FeatureFileError(f"{features_dir}: every feature file has 0 tiles")
    first = next(iter(bags.values()))
    return first.encoder, first.feature_dim


def slide_embeddings(features_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Mean-pooled tile features per slide: (slides, D) float64, columns ``f0..f{D-1}``.

    Slides with 0 tiles are left out. Raises :class:`FeatureFileError` for a missing or
    empty folder or files of several encoders.
    """
    bags = _bags(Path(features_dir))
    rows = {sid: bag.load().astype(np.float64).mean(axis=0) for sid, bag in bags.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.columns = [f"f{i}" for i in range(frame.shape[1])]
    frame.index.name = "slide_id"
    return frame


def read_tme_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A TME table as numbers per slide: ``tme.csv`` (or a folder holding it), indexed by
    ``slide_id``, numeric columns only (``immune_phenotype`` and other text are dropped here;
    :func:`tme_text_columns` keeps them for the description)."""
    table = _read_tme(path)
    numeric = table.select_dtypes(include="number").astype(np.float64)
    numeric = numeric.drop(
        columns=[c for c in numeric if c.lower() == "evaluable"], errors="ignore"
    )
    if numeric.shape[1] == 0:
        raise LabelsError(
            f"{path}: no numeric columns besides slide_id; a TME table has "
            "fraction_<role>, lymphocytes_per_mm2, ... columns"
        )
    return numeric


def tme_text_columns(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The text columns of a TME table (``immune_phenotype`` ...), indexed by ``slide_id``."""
    table = _read_tme(path)
    return table.select_dtypes(exclude="number")


def _read_tme(path: str | os.PathLike[str]) -> pd.DataFrame:
    p = Path(path)
    if p.is_dir():
        p = p / "tme.csv"
    if not p.is_file():
        raise LabelsError(f"TME table not found: {p}; pass the tme.csv of `wsi tme profile`")
    table = pd.read_csv(p, dtype={"slide_id": str})
    if "slide_id" not in table.columns:
        raise LabelsError(f"{p}: no 'slide_id' column; columns present: {list(table.columns)}")
    if table["slide_id"].duplicated().any():
        raise LabelsError(
            f"{p}: slide_id {table['slide_id'][table['slide_id'].duplicated()].iloc[0]!r} "
            "appears twice; one row per slide"
        )
    return table.set_index("slide_id")


def fit_tile_clusters(
    features_dir: str | os.PathLike[str], *, n_clusters: int = TILE_CLUSTERS, seed: int = 0
) -> np.ndarray:
    """Cluster centres (n_clusters, D) of a cohort's tiles: scikit-learn's MiniBatchKMeans
    fitted one slide at a time (``partial_fit``), at most :data:`MAX_TILES_PER_SLIDE` tiles
    each, so the cohort never sits in memory at once."""
    from sklearn.cluster import MiniBatchKMeans

    if n_clusters < 2:
        raise InvalidParameterError(f"tile clusters must be at least 2, got {n_clusters}")
    rng = np.random.default_rng(seed)
    bags = _bags(Path(features_dir))
    total = sum(min(len(b), MAX_TILES_PER_SLIDE) for b in bags.values())
    if total < n_clusters:
        raise InvalidParameterError(
            f"{features_dir}: {total} tiles cannot make {n_clusters} tile clusters; pass fewer"
        )
    km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=3)
    pending: list[np.ndarray] = []
    for bag in bags.values():
        rows = None
        if len(bag) > MAX_TILES_PER_SLIDE:
            rows = rng.choice(len(bag), MAX_TILES_PER_SLIDE, replace=False)
        pending.append(bag.load(rows))
        if sum(len(p) for p in pending) >= 3 * n_clusters:  # partial_fit needs >= k rows
            km.partial_fit(np.concatenate(pending))
            pending = []
    if pending:
        km.partial_fit(np.concatenate(pending))
    return km.cluster_centers_.astype(np.float64)


def tile_cluster_compositions(
    features_dir: str | os.PathLike[str], centres: np.ndarray
) -> pd.DataFrame:
    """Each slide's tiles by nearest centre: centred log-ratio of the cluster fractions
    (columns ``clr_cluster_<j>``), a pseudo-count of half a tile per cluster."""
    from sklearn.metrics import pairwise_distances_argmin

    rows = {}
    for sid, bag in _bags(Path(features_dir)).items():
        if bag.feature_dim != centres.shape[1]:
            raise FeatureFileError(
                f"{bag.path}: {bag.feature_dim}-d features, the tile clusters are "
                f"{centres.shape[1]}-d; use the encoder the model was fitted on"
            )
        nearest = pairwise_distances_argmin(bag.load(), centres.astype(np.float32))
        counts = np.bincount(nearest, minlength=len(centres)) + _PSEUDO_COUNT
        logs = np.log(counts / counts.sum())
        rows[sid] = logs - logs.mean()
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.columns = [f"clr_cluster_{j}" for j in range(len(centres))]
    frame.index.name = "slide_id"
    return frame
