"""Labelled tile images on disk: a folder of class subfolders or a CSV ``path,label``; read as
uint8 RGB arrays of one size.

A folder is how NCT-CRC-HE-100K ships (``TUM/…png``, ``STR/…png``), or a flat folder with
its ``labels.csv``; a CSV names each image
(``path``, ``file`` or ``filename`` column, relative to the CSV's folder) and optionally its
class (``label`` or ``class`` column).
"""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi.errors import TileClassifierError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
_PATH_COLUMNS = ("path", "file", "filename", "image", "png")
_LABEL_COLUMNS = ("label", "class")
LABELS_CSV = "labels.csv"
"""A flat folder's own label table: used when the folder has no class subfolders."""


@dataclass(frozen=True)
class TileSet:
    """Tile image paths with their class (``labels`` empty strings where unknown)."""

    paths: tuple[Path, ...]
    labels: tuple[str, ...]

    def __repr__(self) -> str:
        known = Counter(label for label in self.labels if label)
        classes = ", ".join(f"{name} {n}" for name, n in sorted(known.items()))
        return f"TileSet({len(self.paths)} tiles{': ' + classes if classes else ', unlabelled'})"

    @property
    def labelled(self) -> bool:
        """Whether every tile has a class."""
        return bool(self.labels) and all(self.labels)


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def find_tiles(source: str | Path) -> TileSet:
    """The tiles of a folder (its class subfolders give the labels; a flat folder with a
    ``labels.csv`` is read through it; other images directly in it are unlabelled) or of a
    CSV. Raises :class:`~wsi.errors.TileClassifierError` for a missing
    source, empty class folders (named) or a CSV without a path column."""
    source = Path(source)
    if source.is_file():
        return _from_csv(source)
    if not source.is_dir():
        raise TileClassifierError(
            f"tiles {source}: no such folder or CSV; pass a folder of class subfolders or a "
            "CSV with columns path,label"
        )
    subfolders = sorted(p for p in source.iterdir() if p.is_dir())
    if not subfolders and (source / LABELS_CSV).is_file():
        return _from_csv(source / LABELS_CSV)
    if not subfolders:
        paths = _images_in(source)
        return TileSet(tuple(paths), ("",) * len(paths))
    per_class = {folder.name: _images_in(folder) for folder in subfolders}
    empty = [name for name, found in per_class.items() if not found]
    if empty:
        raise TileClassifierError(
            f"{source}: class folder(s) without tile images: {', '.join(empty)}; add tiles "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}) or remove the folder(s)"
        )
    pairs = [(p, name) for name, found in per_class.items() for p in found]
    return TileSet(tuple(p for p, _ in pairs), tuple(name for _, name in pairs))


def _pick(columns: list[str], wanted: tuple[str, ...]) -> str | None:
    lowered = {c.strip().lower(): c for c in columns}
    return next((lowered[name] for name in wanted if name in lowered), None)


def _from_csv(path: Path) -> TileSet:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TileClassifierError(f"cannot read tiles CSV {path}: {exc}") from exc
    columns = list(rows[0]) if rows else []
    path_col, label_col = _pick(columns, _PATH_COLUMNS), _pick(columns, _LABEL_COLUMNS)
    if path_col is None:
        raise TileClassifierError(
            f"{path}: no path column (one of {', '.join(_PATH_COLUMNS)}) among "
            f"{columns or 'no rows'}; write a CSV with columns path,label"
        )
    paths = [(path.parent / row[path_col].strip()) for row in rows]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TileClassifierError(
            f"{path}: {len(missing)} tile image(s) not found, e.g. {missing[0]}; paths are "
            "relative to the CSV's folder"
        )
    labels = [(row[label_col] or "").strip() if label_col else "" for row in rows]
    return TileSet(tuple(paths), tuple(labels))


def read_tiles(paths: list[Path] | tuple[Path, ...], size: int | None = None) -> np.ndarray:
    """uint8 RGB ``(N, size, size, 3)``. ``size`` None: the most common tile height. Tiles
    of another size are resampled to it (antialiased bicubic) with a warning, which changes
    their µm/px by the same factor."""
    from PIL import Image

    images = []
    for p in paths:
        try:
            with Image.open(p) as image:
                images.append(image.convert("RGB"))
        except OSError as exc:
            raise TileClassifierError(f"cannot read tile image {p}: {exc}") from exc
    if not images:
        return np.zeros((0, size or 0, size or 0, 3), np.uint8)
    if size is None:
        size = Counter(image.height for image in images).most_common(1)[0][0]
    odd = [p for p, image in zip(paths, images, strict=True) if image.size != (size, size)]
    if odd:
        warnings.warn(
            f"{len(odd)} of {len(images)} tiles are not {size}x{size} px (e.g. {odd[0]}); "
            f"resampled to {size}x{size}, which changes their µm/px — tile them at one size",
            stacklevel=2,
        )
    resample = Image.Resampling.BICUBIC
    return np.stack(
        [
            np.asarray(
                image if image.size == (size, size) else image.resize((size, size), resample)
            )
            for image in images
        ]
    )
