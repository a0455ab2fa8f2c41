"""Tile tissue classifier: a linear probe (scikit-learn) on a tile encoder's features.

Trained on the user's labelled tiles (a folder of class subfolders or a CSV ``path,label``)
with HED colour jitter, and applied to a slide's feature file without re-reading pixels::

    from wsi.tme import TileClassifier, train_tile_classifier, classify_feature_file
    clf = train_tile_classifier("NCT-CRC-HE-100K/", tile_mpp=0.5, roles="kather2019")
    clf.save("tissue_classifier")                       # folder: classifier.json + probe.npz
    tiles = classify_feature_file(clf, "out/features/efficientnet_lite0/slide.h5")
    tiles[["x", "y", "class", "role"]]                  # one row per tile, level-0 px

A classifier remembers its encoder, the encoder's weights hash and the tiles' µm/px and size,
and refuses features of another encoder, weights or scale
(:class:`~wsi.errors.ClassifierMismatchError`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from models.defaults import DEFAULT_ENCODER
from wsi.errors import ClassifierMismatchError, TileClassifierError
from wsi.tme.roles import ROLES, assign_roles, load_role_map

if TYPE_CHECKING:
    from models.encoders import Encoder

FORMAT_VERSION = 1
_JSON_NAME, _ARRAYS_NAME = "classifier.json", "probe.npz"
_FEATURE_CHUNK_ROWS = 8192
"""Rows of a feature file classified at a time: memory stays flat on a 100k-tile slide."""


@dataclass(eq=False)
class TileClassifier:
    """A linear probe from encoder features to tissue classes, and each class's role.

    ``predict_proba(features)`` is the multinomial logistic regression of scikit-learn on
    standardised features, evaluated in numpy from the saved coefficients (pinned to
    scikit-learn's own ``predict_proba`` in the tests) so that the file holds no pickle.
    """

    classes: tuple[str, ...]
    roles: dict[str, str]
    """Class → role (one of :data:`wsi.tme.ROLES`)."""
    encoder: str
    weights_sha256: str
    """sha256 of the encoder's weights file ("" when unknown: random or in-memory weights)."""
    tile_mpp: float
    """µm/px of the training tiles."""
    tile_size: int
    """Side of the training tiles in pixels (at ``tile_mpp``)."""
    mean: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)
    coef: np.ndarray = field(repr=False)
    """(C, D), or (1, D) for two classes (scikit-learn's binary layout)."""
    intercept: np.ndarray = field(repr=False)
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    """Training record: tiles per class, jitter, seed, library version."""

    def __repr__(self) -> str:
        return (
            f"TileClassifier({len(self.classes)} classes → {len(set(self.roles.values()))} roles, "
            f"{self.encoder} {self.feature_dim}-d features, tiles of {self.tile_size} px at "
            f"{self.tile_mpp:g} µm/px)"
        )

    @property
    def feature_dim(self) -> int:
        """D, the feature width the probe expects."""
        return int(self.coef.shape[1])

    @property
    def sha256(self) -> str:
        """A hash of everything that decides the predictions (for provenance)."""
        digest = hashlib.sha256(json.dumps(self._header(), sort_keys=True).encode())
        for array in (self.mean, self.scale, self.coef, self.intercept):
            digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
        return digest.hexdigest()

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """float64 ``(N, C)`` class probabilities (columns in :attr:`classes` order) of
        ``(N, D)`` features."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise ClassifierMismatchError(
                f"features of shape {x.shape} do not fit this classifier ({self.feature_dim}-d "
                f"{self.encoder} features); embed the tiles with {self.encoder}"
            )
        logits = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:
            positive = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.column_stack([1.0 - positive, positive])
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=1, keepdims=True)

    def role_probabilities(self, features: np.ndarray) -> pd.DataFrame:
        """Per tile, the probability of each role present (summed over its classes); columns
        in :data:`wsi.tme.ROLES` order."""
        proba = self.predict_proba(features)
        present = [role for role in ROLES if role in self.roles.values()]
        return pd.DataFrame(
            {
                role: proba[
                    :, [i for i, c in enumerate(self.classes) if self.roles[c] == role]
                ].sum(1)
                for role in present
            }
        )

    def check_features(
        self,
        *,
        encoder: str,
        weights_sha256: str | None,
        mpp: float,
        tile_size: int | None = None,
        tol: float = 0.05,
    ) -> None:
        """Raise :class:`~wsi.errors.ClassifierMismatchError` unless features come from this
        encoder (and weights, when both hashes are known) at this scale: ``mpp`` (µm/px) within
        ``tol`` (relative) of :attr:`tile_mpp` and, when ``tile_size`` is given, the same tile
        width in µm (the encoder resizes every tile to its input)."""
        if encoder != self.encoder:
            raise ClassifierMismatchError(
                f"features of encoder {encoder!r}, but the classifier was trained on "
                f"{self.encoder!r} features; embed with --encoder {self.encoder} or train a "
                f"classifier with --encoder {encoder}"
            )
        if weights_sha256 and self.weights_sha256 and weights_sha256 != self.weights_sha256:
            raise ClassifierMismatchError(
                f"features of other {encoder} weights (sha256 {weights_sha256[:12]}…) than the "
                f"classifier's ({self.weights_sha256[:12]}…); embed and train with one weights file"
            )
        if not abs(float(mpp) / self.tile_mpp - 1.0) <= tol:
            raise ClassifierMismatchError(
                f"features at {float(mpp):g} µm/px, but the classifier was trained on tiles at "
                f"{self.tile_mpp:g} µm/px; embed the slides with --mpp {self.tile_mpp:g} or "
                f"train on tiles at {float(mpp):g} µm/px (--tile-mpp)"
            )
        width_um, own_um = float(mpp) * (tile_size or 0), self.tile_mpp * self.tile_size
        if tile_size is not None and not abs(width_um / own_um - 1.0) <= tol:
            raise ClassifierMismatchError(
                f"tiles of {tile_size} px ({width_um:g} µm), but the classifier was trained on "
                f"{self.tile_size} px tiles ({own_um:g} µm): the encoder would see another "
                f"scale; embed with --size {self.tile_size}"
            )

    def _header(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "classes": list(self.classes),
            "roles": dict(self.roles),
            "encoder": self.encoder,
            "weights_sha256": self.weights_sha256,
            "tile_mpp": self.tile_mpp,
            "tile_size": self.tile_size,
            "feature_dim": self.feature_dim,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the folder ``path`` (``classifier.json`` + ``probe.npz``, no pickle); returns it."""
        from models.atomic import atomic_path

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / _ARRAYS_NAME) as tmp, open(tmp, "wb") as f:
            np.savez(f, mean=self.mean, scale=self.scale, coef=self.coef, intercept=self.intercept)
        header = {**self._header(), "sha256": self.sha256, "metadata": self.metadata}
        with atomic_path(folder / _JSON_NAME) as tmp:
            Path(tmp).write_text(json.dumps(header, indent=2, default=str), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TileClassifier:
        """Read a classifier written by :meth:`save` (its folder or its ``classifier.json``)."""
        folder = Path(path)
        folder = folder.parent if folder.name == _JSON_NAME else folder
        try:
            header = json.loads((folder / _JSON_NAME).read_text(encoding="utf-8"))
            with np.load(folder / _ARRAYS_NAME, allow_pickle=False) as arrays:
                data = {key: arrays[key] for key in ("mean", "scale", "coef", "intercept")}
            return cls(
                classes=tuple(header["classes"]),
                roles=dict(header["roles"]),
                encoder=header["encoder"],
                weights_sha256=header["weights_sha256"] or "",
                tile_mpp=float(header["tile_mpp"]),
                tile_size=int(header["tile_size"]),
                metadata=dict(header.get("metadata") or {}),
                **data,
            )
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise TileClassifierError(
                f"{folder}: not a readable tile classifier ({exc}); write one with "
                "`wsi tme train-classifier` or TileClassifier.save"
            ) from exc


def fit_tile_classifier(
    features: np.ndarray,
    labels: Sequence[str],
    *,
    encoder: str,
    weights_sha256: str | None,
    tile_mpp: float,
    tile_size: int,
    roles: str | Path | Mapping[str, str] = "kather2019",
    c: float = 1.0,
    metadata: Mapping[str, Any] | None = None,
) -> TileClassifier:
    """Fit the probe on ``(N, D)`` features and their class ``labels``: scikit-learn's
    ``StandardScaler`` then multinomial ``LogisticRegression`` (L2, inverse strength ``c``,
    balanced class weights)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    classes = tuple(sorted(set(labels)))
    role_of = assign_roles(classes, load_role_map(roles))
    if len(classes) < 2:
        raise TileClassifierError(
            f"tiles of {len(classes)} class(es) {list(classes)}; a classifier needs at least 2"
        )
    x = np.asarray(features, dtype=np.float64)
    scaler = StandardScaler().fit(x)
    probe = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    probe.fit(scaler.transform(x), np.asarray(labels))
    counts = {name: int(np.sum(np.asarray(labels) == name)) for name in classes}
    return TileClassifier(
        classes=tuple(str(c_) for c_ in probe.classes_),
        roles=role_of,
        encoder=encoder,
        weights_sha256=weights_sha256 or "",
        tile_mpp=float(tile_mpp),
        tile_size=int(tile_size),
        mean=scaler.mean_,
        scale=scaler.scale_,
        coef=probe.coef_,
        intercept=probe.intercept_,
        metadata={"tiles_per_class": counts, "C": c, **dict(metadata or {})},
    )


def embed_tiles(
    tiles: np.ndarray, encoder: Encoder, *, batch_size: int = 32, progress: bool = False
) -> np.ndarray:
    """float32 ``(N, D)`` features of uint8 RGB tiles ``(N, H, W, 3)``, in batches."""
    from tqdm.auto import tqdm

    rows = [
        encoder(tiles[first : first + batch_size]).numpy()
        for first in tqdm(
            range(0, len(tiles), batch_size), desc="tiles", unit="batch", disable=not progress
        )
    ]
    return np.concatenate(rows) if rows else np.zeros((0, encoder.feature_dim), np.float32)


def _jittered(tiles: np.ndarray, copies: int, scale: float, shift: float, seed: int) -> np.ndarray:
    from wsi.tme.jitter import hed_jitter

    rng = np.random.default_rng(seed)
    extra = [hed_jitter(t, scale=scale, shift=shift, rng=rng) for _ in range(copies) for t in tiles]
    return np.concatenate([tiles, np.stack(extra)]) if extra else tiles


def train_tile_classifier(
    tiles: str | os.PathLike[str],
    *,
    encoder: str = DEFAULT_ENCODER,
    tile_mpp: float = 0.5,
    roles: str | Path | Mapping[str, str] = "kather2019",
    weights: str | os.PathLike[str] | None = None,
    jitter: float = 0.05,
    jitter_shift: float = 0.01,
    copies: int = 2,
    seed: int = 0,
    c: float = 1.0,
    batch_size: int = 32,
    device: str | None = None,
    progress: bool = False,
) -> TileClassifier:
    """Train a tile classifier on labelled tiles (a folder of class subfolders, or a CSV
    ``path,label``) at ``tile_mpp`` µm/px, embedded with ``encoder`` (any registered name).

    Each tile is embedded as it is plus ``copies`` HED-jittered copies (stain densities
    scaled by ``U(1 ± jitter)`` and shifted by ``U(± jitter_shift)``, see
    :func:`wsi.tme.jitter.hed_jitter`). ``roles``: a preset name, a role-map file or a
    mapping; every class needs a role.
    """
    from models.encoders import load_encoder
    from wsi.tme.tile_images import find_tiles, read_tiles

    tile_set = find_tiles(tiles)
    if not tile_set.labelled:
        raise TileClassifierError(
            f"{tiles}: the tiles have no classes; put them in one subfolder per class, or "
            "list them in a CSV with columns path,label (a flat folder's own labels.csv is "
            "read)"
        )
    assign_roles(sorted(set(tile_set.labels)), load_role_map(roles))  # fail before embedding
    pixels = read_tiles(tile_set.paths)
    model = load_encoder(encoder, weights, device=device)
    images = _jittered(pixels, copies, jitter, jitter_shift, seed)
    features = embed_tiles(images, model, batch_size=batch_size, progress=progress)
    from models.version import library_version

    return fit_tile_classifier(
        features,
        list(tile_set.labels) * (copies + 1),
        encoder=model.name,
        weights_sha256=model.weights_sha256,
        tile_mpp=tile_mpp,
        tile_size=pixels.shape[1],
        roles=roles,
        c=c,
        metadata={
            "jitter": jitter,
            "jitter_shift": jitter_shift,
            "copies": copies,
            "seed": seed,
            "tiles_per_class": {
                n: list(tile_set.labels).count(n) for n in sorted(set(tile_set.labels))
            },
            "source": str(tiles),
            "library_version": library_version(),
        },
    )


def _table(classifier: TileClassifier, proba: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(proba, columns=[f"prob_{c}" for c in classifier.classes])
    best = np.asarray(classifier.classes, dtype=object)[proba.argmax(axis=1)] if len(proba) else []
    frame["class"] = pd.Series(best, dtype=object)
    frame["role"] = frame["class"].map(classifier.roles)
    return frame


def _file_mpp(attrs: Mapping[str, Any], path: Path) -> float:
    for key in ("achieved_mpp", "target_mpp"):
        try:
            value = float(np.ravel(attrs.get(key, ""))[0])
        except (TypeError, ValueError, IndexError):
            continue
        if np.isfinite(value) and value > 0:
            return value
    raise ClassifierMismatchError(
        f"{path}: the feature file records no µm/px (achieved_mpp/target_mpp); re-embed the "
        "slide with `wsi embed --mpp X`, or pass mpp= to classify_feature_file"
    )


def classify_feature_file(
    classifier: TileClassifier, h5_path: str | os.PathLike[str], *, mpp: float | None = None
) -> pd.DataFrame:
    """One row per tile of a feature file, in its order: ``x``, ``y`` (level-0 px, top-left,
    from ``coords``), ``prob_<class>`` for each class, ``class`` and ``role``. No pixels are
    read. The file's encoder, weights hash and µm/px (``mpp`` overrides a file without one)
    are checked against the classifier's; features are read in chunks."""
    from wsi.store.h5 import FeatureBag, read_feature_attrs, read_tile_file

    path = Path(h5_path)
    head = read_tile_file(path, features=False)
    bag = FeatureBag(path)
    attrs = read_feature_attrs(path)
    classifier.check_features(
        encoder=bag.encoder,
        weights_sha256=str(attrs.get("weights_sha256", "") or ""),
        mpp=mpp if mpp is not None else _file_mpp(head.coords_attrs, path),
        tile_size=_int_attr(head.coords_attrs.get("patch_size")),
    )
    proba = [
        classifier.predict_proba(
            bag.load(np.arange(first, min(first + _FEATURE_CHUNK_ROWS, len(bag))))
        )
        for first in range(0, len(bag), _FEATURE_CHUNK_ROWS)
    ]
    table = _table(
        classifier, np.concatenate(proba) if proba else np.zeros((0, len(classifier.classes)))
    )
    table.insert(0, "y", head.coords[:, 1])
    table.insert(0, "x", head.coords[:, 0])
    return table


def _int_attr(value: Any) -> int | None:
    try:
        number = int(np.ravel(value)[0])
    except (TypeError, ValueError, IndexError):
        return None
    return number if number > 0 else None


def classify_tiles(
    classifier: TileClassifier,
    tiles_folder_or_csv: str | os.PathLike[str],
    *,
    tile_mpp: float | None = None,
    weights: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    device: str | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Classify tile images (a folder, searched recursively, or a CSV with a path column):
    one row per tile with ``path``, ``class`` (predicted), ``prob_<class>`` for each class,
    ``role``, and ``label`` when the source gives one (class subfolder or CSV column).
    Tiles are taken to be at the classifier's µm/px unless ``tile_mpp`` says otherwise (then
    refused), and resampled to its tile size with a warning when they differ."""
    from models.encoders import load_encoder
    from wsi.tme.tile_images import find_tiles, read_tiles

    tile_set = find_tiles(tiles_folder_or_csv)
    if not tile_set.paths:
        raise TileClassifierError(f"{tiles_folder_or_csv}: no tile images found")
    model = load_encoder(classifier.encoder, weights, device=device)
    classifier.check_features(
        encoder=model.name,
        weights_sha256=model.weights_sha256,
        mpp=classifier.tile_mpp if tile_mpp is None else tile_mpp,
    )
    pixels = read_tiles(tile_set.paths, classifier.tile_size)
    table = _table(
        classifier,
        classifier.predict_proba(
            embed_tiles(pixels, model, batch_size=batch_size, progress=progress)
        ),
    )
    columns = ["class", *[f"prob_{c}" for c in classifier.classes], "role"]
    table = table[columns]
    table.insert(0, "path", [str(p) for p in tile_set.paths])
    if any(tile_set.labels):
        table["label"] = list(tile_set.labels)
    return table


def tile_accuracy(table: pd.DataFrame) -> dict[str, float] | None:
    """``accuracy``, ``balanced_accuracy`` (scikit-learn; over the classes present in
    ``label``) and ``n`` of a :func:`classify_tiles` table whose tiles have a ``label``;
    None without labels."""
    from sklearn.metrics import balanced_accuracy_score

    if "label" not in table or not len(table):
        return None
    truth, predicted = table["label"].astype(str), table["class"].astype(str)
    return {
        "accuracy": float((truth == predicted).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
        "n": len(table),
    }


def write_table(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a table as CSV atomically (parent folders created); returns the path."""
    from models.atomic import atomic_path

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        table.to_csv(tmp, index=False)
    return target
