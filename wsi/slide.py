"""Open a whole-slide image; its geometry, physical scale and pixel reads.

Coordinates are level-0 pixels unless a name says otherwise; scales are µm per pixel
(``mpp``). A :class:`Slide` is a context manager and is picklable: a worker process
re-opens the file by path.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import openslide
from PIL import Image

from wsi.errors import (
    InvalidParameterError,
    MppError,
    SlideNotFoundError,
    SlideOpenError,
)
from wsi.fastread import FastTiffReader
from wsi.mpp import Mpp, resolve_mpp
from wsi.readers import FlatImageReader, OpenSlideReader, Reader

_STRIP_PIXELS = 16_000_000
"""Level pixels decoded at once by :meth:`Slide.read_thumbnail` (bounded memory)."""

_LEVEL_TOLERANCE = 1e-3
"""Relative slack when comparing a level's mpp with a target (float noise in downsamples)."""


def slide_id_of(path: str | os.PathLike[str]) -> str:
    """A slide's id: its file name without the extension (``a.ome.tiff`` → ``a``)."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


class Slide:
    """A whole-slide image opened for reading.

    Args:
        path: the slide file (SVS, NDPI, MRXS, SCN, BIF, tiled TIFF, DICOM, or a flat
            TIFF/JPEG/PNG through the fallback reader).
        mpp: level-0 µm per pixel, overriding missing or wrong metadata.
        fast_reads: read patches of tiled JPEG TIFF/SVS slides by decoding their JPEG tiles
            directly, with DCT scaling for coarser targets (``wsi.fastread``; ~3x faster
            than openslide for 20x patches from 40x scans); openslide otherwise.

    Raises:
        SlideNotFoundError: no such file, a directory, or a symlink loop.
        SlideOpenError: empty, truncated, unreadable or not an image.
        InvalidMppError: ``mpp`` given and not plausible (≤ 0, NaN, > 100).
    """

    def __init__(
        self, path: str | os.PathLike[str], mpp: float | None = None, fast_reads: bool = True
    ) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.slide_id = slide_id_of(self.path)
        self._mpp_override = mpp
        self._fast_reads = fast_reads
        self._reader: Reader = _open_reader(self.path)
        self._fast: FastTiffReader | None = None
        self._fast_checked = not (fast_reads and self._reader.backend == "openslide")
        self.level_dimensions: tuple[tuple[int, int], ...] = self._reader.level_dimensions
        self.level_downsamples: tuple[float, ...] = self._reader.level_downsamples
        self.properties: dict[str, str] = self._reader.properties
        self._mpp: Mpp | None = None
        self._mpp_error: MppError | None = None
        try:
            self._mpp = resolve_mpp(self.name, self.properties, mpp)
        except MppError as exc:
            if mpp is not None:
                self._reader.close()
                raise
            self._mpp_error = exc

    # geometry ---------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """``"openslide"`` or ``"flat-image"`` (the fallback reader)."""
        return self._reader.backend

    @property
    def patch_backend(self) -> str:
        """What :meth:`read_patch` decodes with: ``"fast-tiff"`` or :attr:`backend`."""
        return "fast-tiff" if self._fast_reader() is not None else self._reader.backend

    def _fast_reader(self) -> FastTiffReader | None:
        # checked on first use: parsing a big TIFF's tile tables is not free, and opening
        # a slide for its thumbnail or metadata should not pay for it
        if not self._fast_checked:
            self._fast_checked = True
            self._fast = FastTiffReader.try_open(self.path)
        return self._fast

    @property
    def vendor(self) -> str | None:
        """The format openslide detected (``aperio``, ``generic-tiff``, …)."""
        return self.properties.get("openslide.vendor")

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    @property
    def objective_power(self) -> float | None:
        """Scanner objective (20, 40…) from metadata, when present."""
        value = self.properties.get("openslide.objective-power")
        try:
            return float(value) if value else None
        except ValueError:
            return None

    # physical scale ---------------------------------------------------------------------
    @property
    def mpp(self) -> float:
        """Level-0 µm per pixel (mean of x and y). Raises :class:`MissingMppError` if unknown."""
        if self._mpp is None:
            assert self._mpp_error is not None
            raise self._mpp_error
        return self._mpp.mean

    @property
    def mpp_or_none(self) -> float | None:
        """Level-0 µm per pixel, or None when neither metadata nor the caller gave one."""
        return None if self._mpp is None else self._mpp.mean

    @property
    def mpp_xy(self) -> tuple[float, float]:
        """Level-0 µm per pixel in x and in y."""
        self.mpp  # noqa: B018 - raises the stored error when unknown
        assert self._mpp is not None
        return (self._mpp.x, self._mpp.y)

    @property
    def mpp_source(self) -> str | None:
        """Where mpp came from: argument, openslide, tiff-resolution, objective-power; or None."""
        return None if self._mpp is None else self._mpp.source

    def level_mpp(self, level: int) -> float:
        """µm per pixel at ``level``."""
        return self.mpp * self.level_downsamples[level]

    def best_level_for_mpp(self, mpp: float) -> int:
        """The level with the largest downsample whose µm/px stays at or finer than ``mpp``."""
        if not mpp > 0:
            raise InvalidParameterError(f"target mpp must be > 0 µm/px, got {mpp!r}")
        return self.best_level_for_downsample(mpp / self.mpp)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The level with the largest downsample ≤ ``downsample`` (level 0 at worst)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + _LEVEL_TOLERANCE) and ds >= self.level_downsamples[best]:
                best = level
        return best

    # pixels -----------------------------------------------------------------------------
    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """RGB uint8 (height, width, 3) of ``size`` level pixels at level-0 ``location``.

        Areas outside the scanned region come back white.
        """
        if not 0 <= level < self.level_count:
            raise InvalidParameterError(
                f"{self.name}: level {level} does not exist (0..{self.level_count - 1})"
            )
        w, h = size
        if w <= 0 or h <= 0:
            raise InvalidParameterError(f"{self.name}: region size must be positive, got {size}")
        return self._reader.read_region(location[0], location[1], level, w, h)

    def read_patch(
        self, x: float, y: float, size_level0: float, out_size: int, level: int
    ) -> np.ndarray:
        """A square patch covering exactly ``size_level0`` level-0 pixels from (x, y), read at
        ``level`` and resampled to ``out_size`` px: RGB uint8 (out_size, out_size, 3).

        The sub-pixel box is honoured, so the patch spans the same µm on every scanner.
        """
        fast = self._fast_reader()
        if fast is not None:
            return fast.read_patch(x, y, size_level0, out_size, level)
        ds = self.level_downsamples[level]
        lx, ly, extent = x / ds, y / ds, size_level0 / ds
        ix, iy = math.floor(lx), math.floor(ly)
        iw = math.ceil(lx + extent) - ix
        ih = math.ceil(ly + extent) - iy
        region = self._reader.read_region_image(round(ix * ds), round(iy * ds), level, iw, ih)
        fx, fy = lx - ix, ly - iy
        if iw != out_size or ih != out_size or fx != 0 or fy != 0:
            box = (fx, fy, fx + extent, fy + extent)
            region = region.resize((out_size, out_size), Image.Resampling.BILINEAR, box=box)
        return np.asarray(region)

    def read_thumbnail(self, downsample: float) -> np.ndarray:
        """The whole slide at ``downsample`` level-0 pixels per output pixel.

        Returns RGB uint8 of shape (round(H/ds), round(W/ds), 3); output pixel (i, j) covers
        level-0 pixels [j·ds, (j+1)·ds) × [i·ds, (i+1)·ds). Reads the coarsest level that is
        at least as fine, in strips, so a huge level is never held whole.
        """
        if not downsample > 0:
            raise InvalidParameterError(f"thumbnail downsample must be > 0, got {downsample!r}")
        w0, h0 = self.dimensions
        out_w, out_h = max(1, round(w0 / downsample)), max(1, round(h0 / downsample))
        level = self.best_level_for_downsample(downsample)
        lds = self.level_downsamples[level]
        scale = downsample / lds
        level_w = math.ceil(out_w * scale)
        rows_per_strip = max(1, int(_STRIP_PIXELS / max(level_w, 1) / max(scale, 1.0)))
        out = np.empty((out_h, out_w, 3), np.uint8)
        for r0 in range(0, out_h, rows_per_strip):
            r1 = min(out_h, r0 + rows_per_strip)
            ly0, ly1 = r0 * scale, r1 * scale
            iy0, iy1 = math.floor(ly0), math.ceil(ly1)
            strip = self._reader.read_region(0, round(iy0 * lds), level, level_w, iy1 - iy0)
            if scale == 1.0:
                out[r0:r1] = strip[: r1 - r0, :out_w]
                continue
            box = (0.0, ly0 - iy0, out_w * scale, ly1 - iy0)
            resized = Image.fromarray(strip).resize(
                (out_w, r1 - r0), Image.Resampling.BOX, box=box
            )
            out[r0:r1] = np.asarray(resized)
        return out

    def get_thumbnail(self, max_size: int = 1024) -> Image.Image:
        """A PIL thumbnail whose longer side is ``max_size`` px (openslide-compatible)."""
        w0, h0 = self.dimensions
        downsample = max(w0, h0) / max_size
        return Image.fromarray(self.read_thumbnail(max(downsample, 1.0)))

    @property
    def associated_images(self) -> dict[str, Image.Image]:
        """Label, macro, thumbnail… images stored beside the pyramid (RGB PIL images)."""
        return {n: self._reader.associated_image(n) for n in self._reader.associated_image_names()}

    def quickhash(self) -> str:
        """sha256 of the file size and its first and last MiB: cheap identity for provenance."""
        return quickhash(self.path)

    # lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Release the file handles."""
        self._reader.close()
        if self._fast is not None:
            self._fast.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path), "mpp": self._mpp_override, "fast": self._fast_reads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], mpp=state["mpp"], fast_reads=state["fast"])  # type: ignore[misc]

    def __repr__(self) -> str:
        w, h = self.dimensions
        mpp = f"{self._mpp.mean:.4g} µm/px ({self._mpp.source})" if self._mpp else "mpp unknown"
        return f"Slide({self.name!r}, {w}x{h}, {self.level_count} levels, {mpp}, {self.backend})"


def open_slide(
    path: str | os.PathLike[str], mpp: float | None = None, fast_reads: bool = True
) -> Slide:
    """Open a slide file. ``mpp`` (level-0 µm/px) overrides missing or wrong metadata;
    ``fast_reads=False`` reads every patch through openslide."""
    return Slide(path, mpp=mpp, fast_reads=fast_reads)


def quickhash(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 over a file's size, first ``chunk`` bytes and last ``chunk`` bytes."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(size - chunk, chunk))
            h.update(f.read(chunk))
    return h.hexdigest()


def _open_reader(path: Path) -> Reader:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SlideNotFoundError(
            f"{path}: no such file; check the path (SLIDES may be files, folders or globs)", path
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SlideNotFoundError(f"{path}: symbolic link loop; fix or remove the link", path) from None
        raise SlideOpenError(f"{path}: cannot stat the file: {exc.strerror}", path) from None
    if path.is_dir():
        raise SlideNotFoundError(
            f"{path}: is a directory, not a slide file (pass the files inside it, or for MRXS "
            "the .mrxs file next to its data folder)",
            path,
        )
    if st.st_size == 0:
        raise SlideOpenError(f"{path}: empty file (0 bytes); the copy or scan did not finish", path)
    try:
        with open(path, "rb") as f:
            f.read(1)
    except PermissionError:
        raise SlideOpenError(
            f"{path}: permission denied; make the file readable (chmod a+r) for this user", path
        ) from None
    try:
        return OpenSlideReader(path)
    except openslide.OpenSlideUnsupportedFormatError:
        return FlatImageReader(path)
    except openslide.OpenSlideError as exc:
        raise SlideOpenError(
            f"{path}: openslide cannot read it ({exc}); the file may be truncated or corrupt — "
            "re-copy it or re-export it from the scanner software",
            path,
        ) from None
