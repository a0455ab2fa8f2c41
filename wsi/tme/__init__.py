"""Tumour micro-environment (TME) from tiles.

Tissue classes and roles from a slide's features (:mod:`wsi.tme.classifier`,
:mod:`wsi.tme.roles`)::

    from wsi.tme import train_tile_classifier, classify_feature_file, TileClassifier
    clf = train_tile_classifier("NCT-CRC-HE-100K/", tile_mpp=0.5, roles="kather2019")
    clf.save("tissue_classifier")
    tiles = classify_feature_file(TileClassifier.load("tissue_classifier"), "slide.h5")

Nuclei and lymphocyte-like cells from a tile's pixels (:mod:`wsi.tme.nuclei`)::

    from wsi.tme import detect_nuclei, nuclei_summary
    nuclei = detect_nuclei(rgb, mpp=0.5)   # x, y (px in rgb), area_um2, lymphocyte
    nuclei_summary(nuclei, area_mm2=rgb.shape[0] * rgb.shape[1] * 0.5**2 / 1e6)

Importing this package costs numpy and pandas only; scikit-image, scipy, scikit-learn and
the encoders load on first use.
"""

from typing import TYPE_CHECKING, Any

from wsi.tme.nuclei import NucleusParams, detect_nuclei, nuclei_summary

_LAZY = {
    "ROLES": "wsi.tme.roles",
    "ROLE_COLOURS": "wsi.tme.roles",
    "ROLE_PRESETS": "wsi.tme.roles",
    "assign_roles": "wsi.tme.roles",
    "load_role_map": "wsi.tme.roles",
    "TileClassifier": "wsi.tme.classifier",
    "classify_feature_file": "wsi.tme.classifier",
    "classify_tiles": "wsi.tme.classifier",
    "embed_tiles": "wsi.tme.classifier",
    "fit_tile_classifier": "wsi.tme.classifier",
    "train_tile_classifier": "wsi.tme.classifier",
    "hed_jitter": "wsi.tme.jitter",
    "TileSet": "wsi.tme.tile_images",
    "find_tiles": "wsi.tme.tile_images",
    "read_tiles": "wsi.tme.tile_images",
    # the per-slide profile (pure, from a tile table) and the run over slides
    "ProfileParams": "wsi.tme.profile",
    "TmeProfile": "wsi.tme.profile",
    "slide_profile": "wsi.tme.profile",
    "PhenotypeThresholds": "wsi.tme.phenotype",
    "morisita_horn": "wsi.tme.phenotype",
    "RegionParams": "wsi.tme.regions",
    "ProfileRunSettings": "wsi.pipeline.tme",
    "profile_run": "wsi.pipeline.tme",
}

if TYPE_CHECKING:
    from wsi.pipeline.tme import ProfileRunSettings, profile_run
    from wsi.tme.classifier import (
        TileClassifier,
        classify_feature_file,
        classify_tiles,
        embed_tiles,
        fit_tile_classifier,
        train_tile_classifier,
    )
    from wsi.tme.jitter import hed_jitter
    from wsi.tme.phenotype import PhenotypeThresholds, morisita_horn
    from wsi.tme.profile import ProfileParams, TmeProfile, slide_profile
    from wsi.tme.regions import RegionParams
    from wsi.tme.roles import ROLE_COLOURS, ROLE_PRESETS, ROLES, assign_roles, load_role_map
    from wsi.tme.tile_images import TileSet, find_tiles, read_tiles


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wsi.tme' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ROLES",
    "ROLE_COLOURS",
    "ROLE_PRESETS",
    "NucleusParams",
    "TileClassifier",
    "TileSet",
    "assign_roles",
    "classify_feature_file",
    "classify_tiles",
    "detect_nuclei",
    "embed_tiles",
    "find_tiles",
    "fit_tile_classifier",
    "hed_jitter",
    "load_role_map",
    "nuclei_summary",
    "read_tiles",
    "train_tile_classifier",
    "PhenotypeThresholds",
    "ProfileParams",
    "ProfileRunSettings",
    "RegionParams",
    "TmeProfile",
    "morisita_horn",
    "profile_run",
    "slide_profile",
]
