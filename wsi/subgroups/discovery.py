"""Subgroup discovery that cannot see outcomes: k chosen by stability alone.

:func:`discover_subgroups` takes one table of slide features and nothing else (no labels
argument exists). For each candidate k, the cohort is subsampled ``resamples`` times (80 %
of slides, without replacement) and clustered; stability is the mean adjusted Rand index
(ARI) between consecutive subsamples' clusterings on the slides they share. The most
stable k wins; silhouette breaks ties (stabilities within ``STABILITY_TIE`` of the best).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from wsi.errors import InvalidParameterError
from wsi.subgroups.model import METHODS, SubgroupModel

STABILITY_TIE = 0.02
"""Mean-ARI difference under which two k count as equally stable (silhouette decides)."""

MAX_COMPONENTS = 10
"""Inputs wider than this are projected on their first principal components."""

SUBSAMPLE_FRACTION = 0.8
"""Fraction of slides in each stability resample."""


@dataclass(repr=False)
class Discovery:
    """A discovery's result: the frozen ``model``, each slide's ``assignments``
    (``slide_id, group, distance``) and the ``stability`` curve (per k: mean ARI, its SD
    over resamples, silhouette)."""

    model: SubgroupModel
    assignments: pd.DataFrame
    stability: pd.DataFrame
    dropped_columns: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        sizes = self.assignments["group"].value_counts().sort_index().tolist()
        return f"<Discovery k={self.model.k} ({self.model.method}), group sizes {sizes}>"


def parse_k(text: str) -> list[int]:
    """``"2..8"`` → [2, ..., 8]; ``"3"`` → [3]; ``"2,4,6"`` → [2, 4, 6]."""
    try:
        if ".." in text:
            low, high = (int(v) for v in text.split(".."))
            ks = list(range(low, high + 1))
        else:
            ks = [int(v) for v in text.split(",")]
    except ValueError as exc:
        raise InvalidParameterError(
            f"--k {text!r}: write a range like 2..8 or a list 2,3,4"
        ) from exc
    if not ks or min(ks) < 2:
        raise InvalidParameterError(f"--k {text!r}: k must be at least 2 (e.g. 2..8)")
    return sorted(set(ks))


def _cluster(z: np.ndarray, k: int, method: str, seed: int) -> tuple[np.ndarray, object]:
    """Labels 0..k-1 and the fitted scikit-learn estimator."""
    from sklearn.cluster import AgglomerativeClustering, KMeans
    from sklearn.mixture import GaussianMixture

    if method == "kmeans":
        est = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(z)
        return est.labels_, est
    if method == "gmm":
        est = GaussianMixture(
            n_components=k, covariance_type="diag", n_init=5, random_state=seed
        ).fit(z)
        return est.predict(z), est
    est = AgglomerativeClustering(n_clusters=k, linkage="ward").fit(z)
    return est.labels_, est


def _stability(
    z: np.ndarray, k: int, method: str, resamples: int, seed: int
) -> tuple[float, float]:
    """Mean and SD of the ARI between consecutive subsamples' clusterings on shared slides."""
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(seed)
    n = len(z)
    size = max(2 * k, int(round(SUBSAMPLE_FRACTION * n)))
    runs = []
    for b in range(resamples):
        idx = np.sort(rng.choice(n, size=min(size, n), replace=False))
        labels, _ = _cluster(z[idx], k, method, seed + b)
        full = np.full(n, -1)
        full[idx] = labels
        runs.append(full)
    scores = []
    for a, b in zip(runs, runs[1:] + runs[:1], strict=True):
        shared = (a >= 0) & (b >= 0)
        scores.append(adjusted_rand_score(a[shared], b[shared]))
    return float(np.mean(scores)), float(np.std(scores))


def _prepared(table: pd.DataFrame, max_k: int) -> tuple[pd.DataFrame, list[str]]:
    """Finite numeric columns that vary; errors for too few slides or nothing that varies."""
    if len(table) < 2 * max_k:
        raise InvalidParameterError(
            f"{len(table)} slides cannot support k up to {max_k}: discovery needs at least 2 × k "
            f"slides; pass --k 2..{max(2, len(table) // 2)} or add slides"
        )
    bad = table.columns[~np.isfinite(table.to_numpy(np.float64)).all(axis=0)].tolist()
    if bad:
        raise InvalidParameterError(
            f"column(s) {bad[:5]} have missing or infinite values; fill or drop them first"
        )
    spread = table.std(axis=0, ddof=0).to_numpy()
    constant = table.columns[spread <= 1e-12 * np.maximum(1.0, table.abs().max().to_numpy())]
    if len(constant) == table.shape[1]:
        raise InvalidParameterError(
            f"every input column is constant across the {len(table)} slides; there is nothing to "
            "cluster (check that the features or TME table differ between slides)"
        )
    if len(constant) and table.shape[1] <= MAX_COMPONENTS:  # in embeddings, dead units are usual
        warnings.warn(
            f"constant column(s) left out of discovery: {list(constant)[:10]}",
            UserWarning,
            stacklevel=3,
        )
    return table.drop(columns=constant), list(constant)


def _project(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Standardisation and (for wide inputs) PCA: mean, scale, components or None."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    if z.shape[1] <= MAX_COMPONENTS:
        return mean, scale, None
    from sklearn.decomposition import PCA

    n_comp = min(MAX_COMPONENTS, len(z) - 1)
    pca = PCA(n_components=n_comp, random_state=0).fit(z)
    return mean, scale, pca.components_.astype(np.float64)


def _choose_k(curve: pd.DataFrame) -> int:
    best = curve["stability"].max()
    near = curve[curve["stability"] >= best - STABILITY_TIE]
    return int(near.sort_values(["silhouette", "k"], ascending=[False, True])["k"].iloc[0])


def _frozen(z: np.ndarray, k: int, method: str, seed: int, **meta) -> SubgroupModel:
    """The final fit on every slide, groups renumbered 1..k by size (largest first)."""
    labels, est = _cluster(z, k, method, seed)
    sizes = np.bincount(labels, minlength=k)
    order = np.argsort(-sizes, kind="stable")  # new group g+1 is old cluster order[g]
    rank = np.empty(k, dtype=int)
    rank[order] = np.arange(k)
    groups = rank[labels] + 1
    means = np.stack([z[groups == g + 1].mean(axis=0) for g in range(k)])
    model = SubgroupModel(method=method, k=k, centroids=means, **meta)
    if method == "kmeans":
        model.centroids = est.cluster_centers_[order].astype(np.float64)
    elif method == "gmm":
        model.gmm_weights = est.weights_[order]
        model.gmm_means = est.means_[order]
        model.gmm_vars = est.covariances_[order]
    else:
        model.reference_points = z
        model.reference_labels = groups
    return model


def discover_subgroups(
    table: pd.DataFrame,
    *,
    k: Sequence[int] = tuple(range(2, 9)),
    method: str = "kmeans",
    resamples: int = 20,
    seed: int = 0,
    input_kind: str = "table",
    encoder: str = "",
    feature_dim: int = 0,
) -> Discovery:
    """Cluster the slides of ``table`` (indexed by slide_id, numeric columns) into groups.

    k is the most stable of ``k`` (mean ARI over ``resamples`` subsamples, silhouette as
    tie-break); ``method`` is ``"kmeans"``, ``"gmm"`` (diagonal Gaussian mixture) or
    ``"agglomerative"`` (Ward). Columns are standardised; inputs wider than
    :data:`MAX_COMPONENTS` are projected on principal components. Outcomes cannot enter:
    the function receives no labels. Raises :class:`InvalidParameterError` for fewer than
    2 × max(k) slides, non-finite values, or columns that are all constant.
    """
    from sklearn.metrics import silhouette_score

    if method not in METHODS:
        raise InvalidParameterError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    ks = sorted(set(int(v) for v in k))
    if not ks or ks[0] < 2:
        raise InvalidParameterError(f"k {list(k)}: every k must be at least 2")
    from threadpoolctl import threadpool_limits

    kept, dropped = _prepared(table.astype(np.float64), ks[-1])
    mean, scale, components = _project(kept.to_numpy(np.float64))
    z = (kept.to_numpy(np.float64) - mean) / scale
    z = z @ components.T if components is not None else z
    rows = []
    with threadpool_limits(limits=1):  # tiny fits: thread start-up costs more than it saves
        for kk in ks:
            stab, sd = _stability(z, kk, method, resamples, seed)
            labels, _ = _cluster(z, kk, method, seed)
            sil = silhouette_score(z, labels) if len(set(labels)) > 1 else -1.0
            rows.append({"k": kk, "stability": stab, "stability_sd": sd, "silhouette": float(sil)})
        curve = pd.DataFrame(rows)
        chosen = _choose_k(curve)
        model = _frozen(
            z,
            chosen,
            method,
            seed,
            input_kind=input_kind,
            columns=list(kept.columns),
            mean=mean,
            scale=scale,
            components=components,
            encoder=encoder,
            feature_dim=feature_dim,
        )
    model.info = {
        "resamples": resamples,
        "seed": seed,
        "dropped_constant": dropped,
        "n_slides": len(kept),
    }
    return Discovery(
        model=model, assignments=model.assign(kept), stability=curve, dropped_columns=dropped
    )
