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

Names load their modules on first use (torch only with ``embed``), so ``import wsi`` is quick.
"""

from typing import TYPE_CHECKING, Any

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

# Everything else loads on first use, so that `import wsi` (and `wsi --help`) stay fast.
_LAZY = {
    "BagSequence": "wsi.cohort",
    "Cohort": "wsi.cohort",
    "load_cohort": "wsi.cohort",
    "read_labels": "wsi.cohort",
    "Slide": "wsi.io.slide",
    "open_slide": "wsi.io.slide",
    "RayOptions": "wsi.pipeline.ray_runner",
    "embed": "wsi.pipeline.embed",
    "embed_archive": "wsi.pipeline.embed",
    "run_embedding": "wsi.pipeline.embed",
    "EmbedSettings": "wsi.pipeline.settings",
    "embed_slide": "wsi.pipeline.slide_step",
    "TileGrid": "wsi.tiling",
    "TileOptions": "wsi.options",
    "tile": "wsi.tiling",
    "TissueMask": "wsi.tissue",
    "TissueOptions": "wsi.options",
    "detect_tissue": "wsi.tissue",
    "qc_image": "wsi.viz.qc",
    "attention_overlay": "wsi.viz.heatmap",
    "train_run": "wsi.pipeline.train",
    "predict_run": "wsi.pipeline.predict",
    "heatmap_run": "wsi.pipeline.heatmap",
    "discover_subgroups_run": "wsi.pipeline.subgroups",
    "assign_subgroups_run": "wsi.pipeline.subgroups",
}

if TYPE_CHECKING:
    from wsi.cohort import BagSequence, Cohort, load_cohort, read_labels
    from wsi.io.slide import Slide, open_slide
    from wsi.options import TileOptions, TissueOptions
    from wsi.pipeline.embed import embed, embed_archive, run_embedding
    from wsi.pipeline.heatmap import heatmap_run
    from wsi.pipeline.predict import predict_run
    from wsi.pipeline.ray_runner import RayOptions
    from wsi.pipeline.settings import EmbedSettings
    from wsi.pipeline.slide_step import embed_slide
    from wsi.pipeline.subgroups import assign_subgroups_run, discover_subgroups_run
    from wsi.pipeline.train import train_run
    from wsi.tiling import TileGrid, tile
    from wsi.tissue import TissueMask, detect_tissue
    from wsi.viz.heatmap import attention_overlay
    from wsi.viz.qc import qc_image


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from models.version import library_version

        return library_version()
    if name in ("tme", "export", "subgroups"):  # subpackages: wsi.tme works without an import line
        import importlib

        return importlib.import_module(f"wsi.{name}")
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'wsi' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BagSequence",
    "Cohort",
    "EmbedSettings",
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
    "assign_subgroups_run",
    "attention_overlay",
    "detect_tissue",
    "discover_subgroups_run",
    "embed",
    "embed_archive",
    "embed_slide",
    "heatmap_run",
    "load_cohort",
    "open_slide",
    "predict_run",
    "qc_image",
    "read_labels",
    "run_embedding",
    "tile",
    "train_run",
]
