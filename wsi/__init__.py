"""wsi: whole-slide-image analysis for translational oncology.

Slides → tissue masks → tile grids at an exact µm/px → CNN features in CLAM/TRIDENT HDF5 →
attention-MIL heads. The notebook API::

    import wsi
    slide = wsi.open_slide("a.svs")            # mpp=... overrides missing/wrong metadata
    mask = wsi.detect_tissue(slide)            # .array, .downsample, .to_geojson()
    grid = wsi.tile(slide, mpp=0.5, size=224)  # .coords (N, 2) int64, level-0, top-left
    feats = wsi.embed(slide, grid, encoder="efficientnet_lite0")   # (N, D) float32
    wsi.embed_archive(["slides/"], "out/")     # batch: files, folders or globs
    wsi.embed_archive(["slides/"], "out/", backend="ray")   # one Ray task per slide

``embed`` and ``embed_archive`` import torch on first use, so ``import wsi`` stays light.
"""

from typing import Any

from wsi.cohort import BagSequence, Cohort, load_cohort, read_labels
from wsi.errors import (
    FeatureFileError,
    InvalidMppError,
    InvalidParameterError,
    LabelsError,
    MissingMppError,
    MppError,
    SlideError,
    SlideNotFoundError,
    SlideOpenError,
    SlideReadError,
    SlideTooSmallError,
    WsiError,
)
from wsi.io.slide import Slide, open_slide
from wsi.pipeline.ray_runner import RayOptions
from wsi.tiling import TileGrid, TileOptions, tile
from wsi.tissue import TissueMask, TissueOptions, detect_tissue

_LAZY = {"embed": "wsi.pipeline.embed", "embed_archive": "wsi.pipeline.embed"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wsi' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "BagSequence",
    "Cohort",
    "FeatureFileError",
    "InvalidMppError",
    "InvalidParameterError",
    "LabelsError",
    "MissingMppError",
    "MppError",
    "RayOptions",
    "Slide",
    "SlideError",
    "SlideNotFoundError",
    "SlideOpenError",
    "SlideReadError",
    "SlideTooSmallError",
    "TileGrid",
    "TileOptions",
    "TissueMask",
    "TissueOptions",
    "WsiError",
    "detect_tissue",
    "embed",
    "embed_archive",
    "load_cohort",
    "read_labels",
    "open_slide",
    "tile",
]
