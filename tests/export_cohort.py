"""Two reference slides (0.5 µm/px SVS ``a``, 0.25 µm/px TIFF ``b``) with random feature files
written as ``wsi embed`` writes them: the input of the export tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import write_reference_slide
from wsi.options import TileOptions
from wsi.pipeline.tile import provenance, tile_slide
from wsi.store.h5 import FeatureWriter

SLIDE_MPP = {"a": 0.5, "b": 0.25}


def write_feature_cohort(root: Path, dim: int, encoder: str = "tiny") -> Path:
    """Write ``root/slides/{a.svs,b.tiff}`` and their ``dim``-wide random feature files under
    ``root/out/features/{encoder}/``; return that folder."""
    slides = root / "slides"
    slides.mkdir()
    write_reference_slide(slides / "a.svs", SLIDE_MPP["a"], flavour="svs")
    write_reference_slide(slides / "b.tiff", SLIDE_MPP["b"])
    features = root / "out" / "features" / encoder
    rng = np.random.default_rng(0)
    for path in sorted(slides.iterdir()):
        slide, _, grid = tile_slide(path, TileOptions())
        writer = FeatureWriter(
            features / f"{slide.slide_id}.h5",
            grid.coords,
            grid.attrs(),
            provenance(slide, grid),
            dim,
            {"encoder": encoder},
        )
        with slide, writer as w:
            w.write(0, rng.normal(size=(len(grid), dim)).astype(np.float32))
            w.commit()
    return features
