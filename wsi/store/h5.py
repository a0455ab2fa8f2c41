"""The HDF5 files: tile coords and features, in CLAM/TRIDENT's layout. The only h5py user.

Layout (one file per slide):

- ``coords``: int64 (N, 2) ``[x, y]`` top-left, level-0 pixels, with the tiling attributes
  (``patch_size``, ``patch_level``, ``downsample``, ``level_dim``, ``patch_size_level0``,
  ``target_mpp``, ``mpp_level0``, ``achieved_mpp``, ``overlap``, ``name``, …).
- ``features`` (feature files only): float32 (N, D), row i belongs to ``coords[i]``, chunked
  by ≥ 256 rows, attributes ``encoder``, ``weights_sha256``, ``feature_dim``.
- ``tissue_fraction``: float32 (N,), per-tile tissue fraction (extra; CLAM ignores it).
- root attribute ``provenance``: JSON (library version, slide path and quickhash, parameters,
  preprocessing, dtype, timestamp).

Files are written under a temporary name in the same folder and renamed into place, so a
crash never leaves a half-written file under the final name. N = 0 is valid.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from models.atomic import AtomicTarget, atomic_path
from wsi.errors import FeatureFileError

FEATURE_CHUNK_ROWS = 256


@dataclass
class TileFile:
    """What a coords or features file holds. ``features`` is None for a coords file."""

    path: Path
    coords: np.ndarray
    coords_attrs: dict[str, Any]
    provenance: dict[str, Any]
    features: np.ndarray | None = None
    features_attrs: dict[str, Any] | None = None
    tissue_fraction: np.ndarray | None = None

    def __repr__(self) -> str:
        attrs = self.coords_attrs
        kind = "coords only"
        if self.features is not None:
            encoder = (self.features_attrs or {}).get("encoder") or "encoder unknown"
            kind = f"features {_shape(self.features.shape)} ({encoder})"
        size = attrs.get("patch_size")
        tiles = f", {size} px tiles" if size else ""
        mpp = attrs.get("target_mpp")
        scale = f" at {float(np.ravel(mpp)[0]):.4g} µm/px" if tiles and _number(mpp) else ""
        return f"<TileFile {self.path.name!r} {len(self.coords)} tiles, {kind}{tiles}{scale}>"


def _shape(shape: tuple[int, ...]) -> str:
    return " × ".join(str(int(n)) for n in shape)


def _number(value: Any) -> bool:
    """Whether an attribute holds one finite number (``target_mpp`` is "" when unset)."""
    try:
        return bool(np.isfinite(float(np.ravel(value)[0])))
    except (TypeError, ValueError, IndexError):
        return False


def _clean_attr(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return np.asarray(value)
    return value


def _write_coords(
    f: h5py.File,
    coords: np.ndarray,
    coords_attrs: Mapping[str, Any],
    provenance: Mapping[str, Any],
    tissue_fraction: np.ndarray | None,
) -> None:
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    ds = f.create_dataset("coords", data=coords, maxshape=(None, 2))
    for key, value in coords_attrs.items():
        ds.attrs[key] = _clean_attr(value)
    if tissue_fraction is not None:
        f.create_dataset(
            "tissue_fraction", data=np.asarray(tissue_fraction, np.float32), maxshape=(None,)
        )
    f.attrs["provenance"] = json.dumps(dict(provenance), sort_keys=True, default=str)


def write_coords(
    path: str | os.PathLike[str],
    coords: np.ndarray,
    coords_attrs: Mapping[str, Any],
    provenance: Mapping[str, Any],
    tissue_fraction: np.ndarray | None = None,
) -> Path:
    """Write a coords file atomically and return its path."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write_coords(f, coords, coords_attrs, provenance, tissue_fraction)
    return Path(path)


class FeatureWriter:
    """Streams a features file: rows are written in chunks as batches arrive.

    Use as a context manager; :meth:`commit` renames the file into place. Leaving the
    block without committing (an exception) deletes the temporary file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        coords: np.ndarray,
        coords_attrs: Mapping[str, Any],
        provenance: Mapping[str, Any],
        feature_dim: int,
        feature_attrs: Mapping[str, Any],
        tissue_fraction: np.ndarray | None = None,
    ) -> None:
        self._target = AtomicTarget(path)
        self.path = self._target.path
        self._n = int(np.asarray(coords).shape[0])
        self._dim = int(feature_dim)
        self._written = 0
        self._file = h5py.File(self._target.tmp, "w")
        _write_coords(self._file, coords, coords_attrs, provenance, tissue_fraction)
        self._features = self._file.create_dataset(
            "features",
            shape=(self._n, feature_dim),
            maxshape=(None, feature_dim),
            dtype=np.float32,
            chunks=(FEATURE_CHUNK_ROWS, feature_dim),
        )
        for key, value in feature_attrs.items():
            self._features.attrs[key] = _clean_attr(value)
        self._features.attrs["feature_dim"] = int(feature_dim)

    def __repr__(self) -> str:
        state = "open" if self._file.id.valid else "closed"
        return (
            f"<FeatureWriter {self.path.name!r} {self._written} of {self._n} rows × "
            f"{self._dim} written, {state}>"
        )

    def write(self, start: int, rows: np.ndarray) -> None:
        """Write ``rows`` (B, D) at row ``start``."""
        rows = np.asarray(rows, dtype=np.float32)
        self._features[start : start + rows.shape[0]] = rows
        self._written += rows.shape[0]

    def commit(self, drop: np.ndarray | None = None) -> Path:
        """Close and rename into place. Every row must have been written.

        ``drop``: a bool (N,) mask of rows to leave out (tiles that could not be decoded);
        coords, features and tissue fractions are compacted in place, chunk by chunk.
        """
        if self._written != self._n:
            raise FeatureFileError(
                f"{self.path.name}: {self._written} of {self._n} feature rows written; not committing"
            )
        if drop is not None and np.any(drop):
            self._compact(np.flatnonzero(~np.asarray(drop, bool)))
        self._file.close()
        return self._target.commit()

    def _compact(self, keep: np.ndarray) -> None:
        names = [n for n in ("coords", "features", "tissue_fraction") if n in self._file]
        for start in range(0, len(keep), FEATURE_CHUNK_ROWS * 16):
            rows = keep[start : start + FEATURE_CHUNK_ROWS * 16]
            for name in names:
                dataset = self._file[name]
                dataset[start : start + len(rows)] = dataset[rows.min() : rows.max() + 1][
                    rows - rows.min()
                ]
        for name in names:
            dataset = self._file[name]
            dataset.resize(len(keep), axis=0)

    def abort(self) -> None:
        """Drop the temporary file."""
        if self._file.id.valid:
            self._file.close()
        self._target.discard()

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None or self._file.id.valid:
            self.abort()


def _attrs(obj: h5py.HLObject) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.attrs.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, bytes):
            value = value.decode()
        out[key] = value
    return out


_REEMBED = "delete it and re-run `wsi embed` (or `wsi embed --redo` for that slide)"
"""The fix named by every feature-file error."""


def _checked_datasets(p: Path, f: h5py.File, features: bool) -> tuple[Any, Any]:
    """The ``coords`` and (when ``features``) ``features`` datasets of an open tile file,
    checked for the layout: coords (N, 2) numbers, features (N, D >= 1) numbers."""
    coords = f.get("coords")
    if not isinstance(coords, h5py.Dataset):
        raise FeatureFileError(f"{p}: no 'coords' dataset; not a wsi/CLAM tile file; {_REEMBED}")
    if coords.ndim != 2 or coords.shape[1] != 2 or not np.issubdtype(coords.dtype, np.number):
        raise FeatureFileError(
            f"{p}: coords has shape {coords.shape} ({coords.dtype}), expected (N, 2) numbers; "
            f"{_REEMBED}"
        )
    if not features:
        return coords, None
    feats = f.get("features")
    if not isinstance(feats, h5py.Dataset):
        raise FeatureFileError(
            f"{p}: no 'features' dataset: a coords file (`wsi tile` writes those to "
            "OUT/patches/), not features; pass the OUT/features/<encoder> folder of `wsi embed`"
        )
    if not np.issubdtype(feats.dtype, np.number) or np.issubdtype(feats.dtype, np.complexfloating):
        raise FeatureFileError(f"{p}: features hold {feats.dtype}, not numbers; {_REEMBED}")
    if feats.ndim != 2 or feats.shape[1] < 1 or feats.shape[0] != coords.shape[0]:
        raise FeatureFileError(
            f"{p}: features has shape {feats.shape} but coords has {coords.shape[0]} rows; "
            f"expected ({coords.shape[0]}, D) with D >= 1; {_REEMBED}"
        )
    return coords, feats


def _finite_rows(p: Path, data: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """``data`` itself, or a FeatureFileError naming the rows (file row numbers) that hold
    NaN or infinite values (an encoder overflow: fp16 without scaling, a broken weight)."""
    finite = np.isfinite(data).all(axis=1)
    if finite.all():
        return data
    bad = np.flatnonzero(~finite) if rows is None else np.asarray(rows)[~finite]
    shown = ", ".join(str(int(r)) for r in bad[:5])
    if len(bad) > 5:
        shown += f" (+{len(bad) - 5} more)"
    raise FeatureFileError(
        f"{p}: NaN or infinite feature values in {'row' if len(bad) == 1 else 'rows'} {shown}; "
        f"{_REEMBED}"
    )


def _provenance(f: h5py.File) -> dict[str, Any] | None:
    """The root ``provenance`` JSON object, or None when absent or not a JSON object."""
    try:
        value = json.loads(f.attrs.get("provenance", "{}"))
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_tile_file(path: str | os.PathLike[str], features: bool = True) -> TileFile:
    """Read a coords or features file whole; ``features=False`` skips the feature matrix.

    Raises :class:`FeatureFileError` for truncated files, a wrong layout or shape, and
    NaN or infinite features.
    """
    p = Path(path)
    try:
        with h5py.File(p, "r") as f:
            with_features = features and "features" in f
            coords, feats = _checked_datasets(p, f, with_features)
            fraction = f.get("tissue_fraction")
            result = TileFile(
                path=p,
                coords=coords[()].astype(np.int64),
                coords_attrs=_attrs(coords),
                provenance=_provenance(f) or {},
                tissue_fraction=fraction[()] if isinstance(fraction, h5py.Dataset) else None,
            )
            if feats is not None:
                result.features = _finite_rows(p, feats[()].astype(np.float32, copy=False))
                result.features_attrs = _attrs(feats)
            return result
    except FeatureFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise FeatureFileError(
            f"{p}: unreadable HDF5 file ({exc}); it is truncated or corrupt — {_REEMBED}"
        ) from exc


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The provenance JSON of a tile file, or None when the file is missing or unreadable."""
    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f:
                return None
            return _provenance(f)
    except (OSError, ValueError, TypeError):
        return None


class FeatureBag:
    """Lazy access to one features file: shape without reading, rows on demand.

    Opening checks the layout (coords (N, 2), features (N, D >= 1) numbers); loading checks
    that the values are finite. Both raise :class:`FeatureFileError` naming the file and the
    fix (re-embed the slide).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            with h5py.File(self.path, "r") as f:
                _, feats = _checked_datasets(self.path, f, features=True)
                self.shape: tuple[int, int] = (int(feats.shape[0]), int(feats.shape[1]))
                self.encoder = str(_attrs(feats).get("encoder", ""))
        except FeatureFileError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise FeatureFileError(
                f"{self.path}: not a readable features file ({exc}); it is truncated or "
                f"corrupt — {_REEMBED}"
            ) from exc

    @property
    def feature_dim(self) -> int:
        """D, the width of each feature row."""
        return self.shape[1]

    def __repr__(self) -> str:
        encoder = self.encoder or "encoder unknown"
        return f"<FeatureBag {self.path.name!r} {len(self)} tiles × {self.feature_dim} ({encoder})>"

    def __len__(self) -> int:
        return self.shape[0]

    def load(self, rows: np.ndarray | None = None) -> np.ndarray:
        """float32 (N, D), or only ``rows`` (sorted indices) when given."""
        picked = None if rows is None else np.sort(rows)
        try:
            with h5py.File(self.path, "r") as f:
                feats = f["features"]
                data = feats[()] if picked is None else feats[picked]
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise FeatureFileError(
                f"{self.path}: read failed ({exc}); the file is damaged — {_REEMBED}"
            ) from exc
        return _finite_rows(self.path, data.astype(np.float32, copy=False), picked)

    def coords(self) -> np.ndarray:
        """int64 (N, 2) level-0 top-left coordinates."""
        try:
            with h5py.File(self.path, "r") as f:
                return f["coords"][()].astype(np.int64)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise FeatureFileError(
                f"{self.path}: read failed ({exc}); the file is damaged — {_REEMBED}"
            ) from exc


def read_feature_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``features`` dataset's attributes (``encoder``, ``weights_sha256``,
    ``feature_dim``) without reading the matrix; {} for a coords-only file."""
    p = Path(path)
    try:
        with h5py.File(p, "r") as f:
            feats = f.get("features")
            return _attrs(feats) if isinstance(feats, h5py.Dataset) else {}
    except (OSError, ValueError, TypeError) as exc:
        raise FeatureFileError(
            f"{p}: unreadable HDF5 file ({exc}); it is truncated or corrupt — {_REEMBED}"
        ) from exc
