"""Feature files → a SpatialData ``.zarr`` (scverse's spatial omics format): ``pip install
"wsi[spatial]"``.

Per slide, three linked elements, named after ``S``, the slide id (characters spatialdata does
not allow in names replaced by ``_``, see :func:`element_names`):

- ``shapes['S_tiles']``: one geometry per tile in **level-0 pixels** (squares of the tile's
  side, or circles of that diameter with ``shape="circle"``), indexed by ``tile_id`` (the row
  in the slide's feature file);
- ``images['S_thumbnail']``: the slide's RGB thumbnail (``c, y, x``, uint8), thumbnail
  pixel ``(i, j)`` covering level-0 pixels ``[j·ds, (j+1)·ds) × [i·ds, (i+1)·ds)``;
- one row per tile in ``tables['table']`` (the AnnData of :func:`wsi.export.to_anndata`: same
  ``X``, ``obs``, ``obsm``; ``uns['spatial']``'s thumbnails live in the image elements instead),
  annotating ``S_tiles`` through ``obs['region']`` (region key) and ``obs['tile_id']``
  (instance key).

Two coordinate systems per slide: ``S_px`` (level-0 pixels; identity for the tiles, a scale
of ``ds`` for the thumbnail) and ``S_um`` (µm from the slide's top-left corner; a scale of the
slide's µm/px at level 0, ``ds`` × that for the thumbnail), so the thumbnail lies under its
tiles in either. A slide without µm/px gets only ``S_px``; a slide whose file is not found
gets no image (a warning says so).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from wsi.errors import InvalidParameterError
from wsi.export.adata import HIRES_LONG_SIDE_PX, to_anndata
from wsi.export.sources import PathLike

if TYPE_CHECKING:
    import anndata
    import spatialdata

SHAPES = ("square", "circle")
"""How :func:`to_spatialdata` draws a tile."""
TABLE_NAME = "table"
"""The name of the features table in ``SpatialData.tables``."""
REGION_KEY = "region"
"""The obs column naming the shapes element a row annotates."""
INSTANCE_KEY = "tile_id"
"""The obs column matching a row to its shape (the shapes' index)."""


def to_spatialdata(
    features: PathLike | Sequence[PathLike],
    *,
    tme: PathLike | None = None,
    labels: PathLike | pd.DataFrame | None = None,
    checkpoint: PathLike | None = None,
    slides: Sequence[PathLike] | None = None,
    shape: str = "square",
    thumbnail_px: int = HIRES_LONG_SIDE_PX,
    progress: bool = False,
) -> spatialdata.SpatialData:
    """A SpatialData of one encoder's feature files (layout: the module docstring).

    ``tme``, ``labels``, ``checkpoint``, ``slides``: as :func:`wsi.export.to_anndata` (they
    add obs columns). ``shape``: ``"square"`` (default: the tile itself) or ``"circle"``
    (diameter = the tile's side). ``thumbnail_px``: long side of each slide's image (px).

    Raises :class:`ImportError` naming the extra when spatialdata is not installed.
    """
    sd = _spatialdata()
    if shape not in SHAPES:
        raise InvalidParameterError(f"shape must be one of {SHAPES}, got {shape!r}")
    adata = to_anndata(
        features,
        tme=tme,
        labels=labels,
        checkpoint=checkpoint,
        slides=slides,
        thumbnail_px=thumbnail_px,
        hires_px=0,
        progress=progress,
    )
    spatial = adata.uns.pop("spatial")
    names = element_names(list(spatial))
    shapes, images = {}, {}
    for slide_id, entry in spatial.items():
        name = names[slide_id]
        rows = (adata.obs["slide_id"] == slide_id).to_numpy()
        systems = _coordinate_systems(name, entry["metadata"]["mpp_level0"])
        shapes[f"{name}_tiles"] = _tile_shapes(
            adata.obs.loc[rows], entry["scalefactors"]["spot_diameter_fullres"], shape, systems
        )
        if "lowres" in entry["images"]:
            images[f"{name}_thumbnail"] = _thumbnail(
                entry["images"]["lowres"],
                1.0 / entry["scalefactors"]["tissue_lowres_scalef"],
                systems,
            )
    table = _table(adata, names)
    return sd.SpatialData(images=images, shapes=shapes, tables={TABLE_NAME: table})


def element_names(slide_ids: Sequence[str]) -> dict[str, str]:
    """``{slide_id: S}``: the prefix of a slide's element and coordinate-system names, its id
    with each character spatialdata does not allow in names (anything but letters, digits,
    ``_``, ``-``, ``.``) replaced by ``_``. Raises :class:`InvalidParameterError` when two
    slides would get the same name."""
    names: dict[str, str] = {}
    for slide_id in slide_ids:
        name = "".join(c if c.isalnum() or c in "_-." else "_" for c in slide_id)
        if name.startswith("__") or name in (".", ".."):
            name = f"slide{name}"
        clash = [s for s, n in names.items() if n == name]
        if clash:
            raise InvalidParameterError(
                f"slides {clash[0]!r} and {slide_id!r} both become SpatialData element "
                f"{name!r}; rename one of their feature files"
            )
        names[slide_id] = name
    return names


def write_spatialdata(sdata: spatialdata.SpatialData, path: PathLike) -> Path:
    """Write ``sdata`` to the ``.zarr`` folder ``path`` (replacing one there): written under a
    temporary sibling name and renamed into place, so a crash never leaves a half store."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with warnings.catch_warnings():  # zarr's note on a future default, not on this store
        warnings.filterwarnings("ignore", message="zarr v3 autosharding")
        sdata.write(tmp)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def export_spatialdata(
    features: PathLike | Sequence[PathLike], out: PathLike, **kwargs: Any
) -> Path:
    """:func:`to_spatialdata` (same keyword arguments) written to ``out`` (``.zarr``)."""
    return write_spatialdata(to_spatialdata(features, **kwargs), out)


# ----------------------------------------------------------------------------- elements


def _spatialdata() -> Any:
    try:
        import spatialdata
    except ImportError as error:
        raise ImportError(
            'SpatialData export needs the spatial extra: pip install "wsi[spatial]"'
        ) from error
    return spatialdata


def _coordinate_systems(slide_id: str, mpp_level0: float) -> dict[str, float]:
    """``{name: µm (or px) per level-0 px}`` of a slide's coordinate systems."""
    systems = {f"{slide_id}_px": 1.0}
    if np.isfinite(mpp_level0) and mpp_level0 > 0:
        systems[f"{slide_id}_um"] = float(mpp_level0)
    return systems


def _scales(per_level0_px: float, systems: dict[str, float]) -> dict[str, Any]:
    """The transformations of an element whose pixel is ``per_level0_px`` level-0 px."""
    from spatialdata.transformations import Identity, Scale

    return {
        name: Identity()
        if factor * per_level0_px == 1.0
        else Scale([factor * per_level0_px] * 2, axes=("x", "y"))
        for name, factor in systems.items()
    }


def _tile_shapes(
    obs: pd.DataFrame, side_level0: float, shape: str, systems: dict[str, float]
) -> Any:
    """One slide's tiles as a shapes element in level-0 px, indexed by ``tile_id``."""
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel

    x0 = obs["x"].to_numpy(dtype=np.float64)
    y0 = obs["y"].to_numpy(dtype=np.float64)
    index = pd.Index(obs[INSTANCE_KEY].to_numpy(dtype=np.int64), name=INSTANCE_KEY)
    if shape == "circle":
        frame = gpd.GeoDataFrame(
            {"radius": np.full(len(obs), side_level0 / 2)},
            geometry=shapely.points(x0 + side_level0 / 2, y0 + side_level0 / 2),
            index=index,
        )
    else:
        frame = gpd.GeoDataFrame(
            geometry=shapely.box(x0, y0, x0 + side_level0, y0 + side_level0), index=index
        )
    return ShapesModel.parse(frame, transformations=_scales(1.0, systems))


def _thumbnail(rgb: np.ndarray, downsample: float, systems: dict[str, float]) -> Any:
    """An RGB thumbnail (H, W, 3) as an image element whose pixel is ``downsample`` level-0 px."""
    from spatialdata.models import Image2DModel

    return Image2DModel.parse(
        np.ascontiguousarray(np.moveaxis(rgb, -1, 0)),
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        transformations=_scales(downsample, systems),
    )


def _table(adata: anndata.AnnData, names: dict[str, str]) -> anndata.AnnData:
    """The features AnnData annotating each slide's ``{S}_tiles`` shapes."""
    from spatialdata.models import TableModel

    regions = [f"{names[s]}_tiles" for s in adata.obs["slide_id"].cat.categories]
    adata.obs[REGION_KEY] = pd.Categorical(
        [f"{names[s]}_tiles" for s in adata.obs["slide_id"]], categories=regions
    )
    adata.uns["wsi"]["obs_columns"] = list(adata.obs.columns)
    if not np.isfinite(adata.obsm["spatial_um"]).all():
        warnings.warn(
            "some slides have no µm/px: their obsm['spatial_um'] is NaN and they have no "
            "'<slide_id>_um' coordinate system",
            UserWarning,
            stacklevel=3,
        )
    return TableModel.parse(adata, region=regions, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
