"""What an export reads: the feature files of one encoder, one slide at a time.

A slide's tiles are the rows of its ``{slide_id}.h5`` feature file (``wsi embed``): row ``i``
is ``tile_id`` ``i``, its top-left corner ``coords[i]`` in level-0 pixels. Every export
(AnnData, QuPath, tile images) keys tiles by ``slide_id`` + ``tile_id``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi.cohort import feature_files
from wsi.errors import FeatureFileError, InvalidParameterError
from wsi.store.h5 import FeatureBag, read_tile_file
from wsi.store.tile_geometry import first_number, tile_size_level0, tile_size_px

PathLike = str | os.PathLike[str]


@dataclass
class SlideTiles:
    """One slide's tiles from its feature (or coords) file.

    ``coords``: int64 (N, 2) ``[x, y]`` top-left in level-0 px; ``tile_size_level0``: a
    tile's side in level-0 px; ``mpp_level0``: the slide's µm/px at level 0 (None when the
    file does not say); ``tile_mpp``: µm per pixel of the encoded tiles.
    """

    slide_id: str
    path: Path
    coords: np.ndarray
    tile_size_level0: float
    tile_size_px: int
    mpp_level0: float | None
    tile_mpp: float | None
    encoder: str = ""
    features: np.ndarray | None = field(default=None, repr=False)
    provenance: dict[str, Any] = field(default_factory=dict, repr=False)
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        width = "" if self.features is None else f" × {self.features.shape[1]}"
        return (
            f"<SlideTiles {self.slide_id!r} {len(self)} tiles{width} ({self.encoder or 'coords'})>"
        )

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @property
    def centres_px(self) -> np.ndarray:
        """float64 (N, 2) tile centres in level-0 px."""
        return self.coords.astype(np.float64) + self.tile_size_level0 / 2

    @property
    def centres_um(self) -> np.ndarray:
        """float64 (N, 2) tile centres in µm from the slide's top-left corner (NaN without mpp)."""
        return self.centres_px * (np.nan if self.mpp_level0 is None else self.mpp_level0)

    @property
    def slide_path(self) -> Path | None:
        """The slide file named in the provenance (None when not recorded)."""
        path = self.provenance.get("slide_path")
        return Path(path) if path else None


def read_slide_tiles(path: PathLike, *, features: bool = True) -> SlideTiles:
    """One feature (or, with ``features=False``, coords) file as :class:`SlideTiles`."""
    tiles = read_tile_file(path, features=features)
    attrs = tiles.coords_attrs
    mpp0 = first_number(attrs.get("mpp_level0"))
    return SlideTiles(
        slide_id=Path(path).stem,
        path=Path(path),
        coords=tiles.coords,
        tile_size_level0=tile_size_level0(attrs, mpp0),
        tile_size_px=tile_size_px(attrs),
        mpp_level0=mpp0,
        tile_mpp=first_number(attrs.get("achieved_mpp")) or first_number(attrs.get("target_mpp")),
        encoder=str((tiles.features_attrs or {}).get("encoder", "")),
        features=tiles.features,
        provenance=tiles.provenance,
        attrs=attrs,
    )


def feature_paths(features: PathLike | Sequence[PathLike]) -> dict[str, Path]:
    """``{slide_id: path}`` of the ``*.h5`` files in one or more folders (or files).

    Raises :class:`FeatureFileError` when a slide id appears twice, and when the files come
    from different encoders or feature widths (naming them: one export holds one encoder's
    features, since rows of different encoders are not comparable).
    """
    items = [features] if isinstance(features, str | os.PathLike) else list(features)
    found: dict[str, Path] = {}
    for item in items:
        item = Path(item)
        batch = {item.stem: item} if item.is_file() else _feature_files(item)
        for slide_id, path in batch.items():
            if slide_id in found:
                raise FeatureFileError(
                    f"slide {slide_id!r} has two feature files: {found[slide_id]} and {path}; "
                    "pass one folder per encoder, each slide once"
                )
            found[slide_id] = path
    check_one_encoder(found.values())
    return found


def _feature_files(folder: Path) -> dict[str, Path]:
    """:func:`wsi.cohort.feature_files`, pointing at ``OUT/features/<encoder>`` when given a
    `wsi embed` output folder."""
    encoders = sorted(p.name for p in (folder / "features").glob("*") if p.is_dir())
    if encoders and not any(folder.glob("*.h5")):
        raise FeatureFileError(
            f"{folder} is a `wsi embed` output folder; pass one encoder's features: "
            + ", ".join(str(folder / "features" / e) for e in encoders)
        )
    return feature_files(folder)


def check_one_encoder(paths: Iterable[Path]) -> str:
    """The encoder the files share; :class:`FeatureFileError` naming each encoder (or
    width) with a file of it when they differ."""
    by_kind: dict[str, list[Path]] = {}
    for path in paths:
        bag = FeatureBag(path)
        by_kind.setdefault(f"{bag.encoder or 'unknown encoder'} ({bag.feature_dim}-d)", []).append(
            path
        )
    if len(by_kind) > 1:
        listed = "; ".join(
            f"{kind}: {files[0]}" + (f" and {len(files) - 1} more" if len(files) > 1 else "")
            for kind, files in by_kind.items()
        )
        raise FeatureFileError(
            f"feature files of different encoders in one export: {listed}. Export one "
            "encoder's folder (OUT/features/<encoder>) at a time"
        )
    return next(iter(by_kind), "").split(" (")[0]


def check_level(level: str) -> str:
    """``"tile"`` or ``"slide"``, else :class:`InvalidParameterError`."""
    if level not in ("tile", "slide"):
        raise InvalidParameterError(f"level must be 'tile' or 'slide', got {level!r}")
    return level
