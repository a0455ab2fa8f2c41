"""Exports to other tools: AnnData for scanpy/squidpy, SpatialData, QuPath GeoJSON, tile images.

::

    import wsi.export
    adata = wsi.export.to_anndata("out/features/efficientnet_lite0", tme="tme/",
                                  checkpoint="run/model.pt")          # one row per tile
    wsi.export.write_anndata(adata, "tiles.h5ad")
    # … scanpy: sc.pp.neighbors(adata); sc.tl.leiden(adata) …
    wsi.export.from_anndata(adata, ["leiden"]).to_csv("clusters.csv", index=False)
    wsi.export.export_qupath("out/features/efficientnet_lite0", "qupath/",
                             tile_labels="clusters.csv", class_column="leiden")
    wsi.export.export_tiles(["slides/"], "tiles/", fmt="png", max_tiles=100)
    wsi.export.export_spatialdata("out/features/efficientnet_lite0", "cohort.zarr")  # wsi[spatial]

Tiles are keyed everywhere by ``slide_id`` + ``tile_id`` (the row in the slide's feature
file); coordinates are level-0 pixels unless a name says µm.
"""

from wsi.export.adata import (
    export_anndata,
    from_anndata,
    tile_labels_for,
    to_anndata,
    write_anndata,
)
from wsi.export.qupath import export_qupath, slide_geojson
from wsi.export.sdata import (
    element_names,
    export_spatialdata,
    to_spatialdata,
    write_spatialdata,
)
from wsi.export.sources import SlideTiles, feature_paths, read_slide_tiles
from wsi.export.tiles import TileExport, export_tiles, tile_image_mpp

__all__ = [
    "SlideTiles",
    "TileExport",
    "element_names",
    "export_anndata",
    "export_qupath",
    "export_spatialdata",
    "export_tiles",
    "feature_paths",
    "from_anndata",
    "read_slide_tiles",
    "slide_geojson",
    "tile_image_mpp",
    "tile_labels_for",
    "to_anndata",
    "to_spatialdata",
    "write_anndata",
    "write_spatialdata",
]
