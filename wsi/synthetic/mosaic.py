"""Slides assembled from real tiles: a known composition at a known place, for validating
what is measured per tile (tissue roles, lymphocyte densities, immune phenotype).

    layout = phenotype_layout("excluded", n=16, block=10)   # (16, 16) class names
    write_mosaic("excluded.tif", layout, tiles_by_class, mpp=0.5, seed=0)

The slide is a tiled, pyramidal TIFF (deflate; levels 1, 4, 16) on white glass with a margin,
its tiles laid edge to edge on the tile grid of ``mpp`` and tile size, so a tiling at that
scale sees each source tile whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from wsi.errors import InvalidParameterError

PHENOTYPE_LAYOUTS = ("inflamed", "excluded", "desert")
"""The layouts of :func:`phenotype_layout`."""


def phenotype_layout(kind: str, *, n: int = 16, block: int = 10, ring: int = 2) -> np.ndarray:
    """An ``(n, n)`` array of class names: a centred ``block`` × ``block`` tumour (``TUM``)
    in stroma (``STR``), with lymphocyte tiles (``LYM``) where ``kind`` puts them:

    - ``inflamed``: every other tile of the block's chequerboard (inside the tumour);
    - ``excluded``: a ``ring`` tiles wide around the block (in the stroma, touching it);
    - ``desert``: nowhere.
    """
    if kind not in PHENOTYPE_LAYOUTS:
        raise InvalidParameterError(f"kind must be one of {PHENOTYPE_LAYOUTS}, got {kind!r}")
    if not 0 < block <= n - 2 * ring:
        raise InvalidParameterError(
            f"a {block}-tile block and {ring}-tile ring do not fit {n} tiles"
        )
    layout = np.full((n, n), "STR", dtype=object)
    lo, hi = (n - block) // 2, (n - block) // 2 + block
    if kind == "excluded":
        layout[lo - ring : hi + ring, lo - ring : hi + ring] = "LYM"
    layout[lo:hi, lo:hi] = "TUM"
    if kind == "inflamed":
        yy, xx = np.mgrid[lo:hi, lo:hi]
        layout[yy[(yy + xx) % 2 == 0], xx[(yy + xx) % 2 == 0]] = "LYM"
    return layout


def mosaic_image(
    layout: np.ndarray,
    tiles: Mapping[str, Sequence[np.ndarray]],
    *,
    seed: int = 0,
    margin: int = 1,
    glass: int = 243,
) -> np.ndarray:
    """uint8 (H, W, 3): tile ``layout[r, c]`` drawn (at random, by ``seed``) from
    ``tiles[class]`` at row r, column c, inside ``margin`` tiles of glass."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(layout.ravel()))
    missing = [c for c in classes if not tiles.get(c)]
    if missing:
        raise InvalidParameterError(f"no tiles for classes {missing}")
    size = int(np.asarray(tiles[classes[0]][0]).shape[0])
    rows, cols = layout.shape
    image = np.full(((rows + 2 * margin) * size, (cols + 2 * margin) * size, 3), glass, np.uint8)
    for (r, c), name in np.ndenumerate(layout):
        pick = np.asarray(tiles[name][rng.integers(len(tiles[name]))])[..., :3]
        if pick.shape[:2] != (size, size):
            raise InvalidParameterError(
                f"tiles of class {name} are {pick.shape[:2]}, not {size} px"
            )
        y, x = (r + margin) * size, (c + margin) * size
        image[y : y + size, x : x + size] = np.rot90(pick, rng.integers(4))
    return image


def write_pyramid(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    *,
    mpp: float,
    downsamples: Sequence[int] = (1, 4, 16),
    tile: int = 256,
) -> Path:
    """Write ``rgb`` as a tiled, deflate-compressed pyramidal TIFF that openslide opens
    (one page per level, resolution tags in pixels per cm)."""
    import tifffile
    from PIL import Image

    path = Path(path)
    with tifffile.TiffWriter(path) as tif:
        for d in downsamples:
            level = rgb if d == 1 else np.asarray(Image.fromarray(rgb).reduce(d))
            res = 1e4 / (mpp * d)
            tif.write(
                level,
                photometric="rgb",
                tile=(tile, tile),
                compression="zlib",
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=0 if d == 1 else 1,
                metadata=None,
            )
    return path


def write_mosaic(
    path: str | os.PathLike[str],
    layout: np.ndarray,
    tiles: Mapping[str, Sequence[np.ndarray]],
    *,
    mpp: float = 0.5,
    seed: int = 0,
) -> Path:
    """:func:`mosaic_image` written by :func:`write_pyramid` at ``mpp`` µm/px."""
    return write_pyramid(path, mosaic_image(layout, tiles, seed=seed), mpp=mpp)
