"""Open a whole-slide image; its geometry, physical scale and pixel reads.

Coordinates are level-0 pixels unless a name says otherwise; scales are µm per pixel
(``mpp``). A :class:`Slide` is a context manager and is picklable: a worker process
re-opens the file by path.
"""

from __future__ import annotations

import errno
import functools
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
    SlideReadError,
)
from wsi.io.dicom import DicomReader, is_dicom_file, is_dicom_series_folder
from wsi.io.fastread import FastTiffReader, native_origin
from wsi.io.mpp import Mpp, resolve_mpp
from wsi.io.readers import FlatImageReader, OpenSlideReader, Reader

_STRIP_PIXELS = 16_000_000
"""Level pixels decoded at once by :meth:`Slide.read_thumbnail` (bounded memory)."""

THUMBNAIL_MAX_LEVEL_PIXELS = 2**32
"""Most level pixels a thumbnail may decode (~4.3 G, a 65k² level without a pyramid:
about a minute); more is refused rather than costing an unattended run hours."""

MAX_SLIDE_SIDE_PX = 2**20
"""Largest plausible level-0 side: 1 048 576 px is 105 mm at 0.1 µm/px, longer than any
glass slide; a larger header value is corrupt."""

_MAX_BOX_SCALE = 256
"""Largest level-to-output pixel ratio one thumbnail pass averages (footprints stay small)."""

_NEAR_ONE_DRIFT_PX = 0.5
"""A thumbnail whose level pixels per output pixel is within 1 of 1 by so little that the
two grids drift apart by less than this (output px) over its long side is copied 1:1,
not resampled (real pyramids' downsamples are often 4.0002 or 15.9986, not 4 or 16)."""

_LEVEL_TOLERANCE = 1e-3
"""Relative slack when comparing a level's mpp with a target (float noise in downsamples)."""

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_MAX_TILE_SIDE = 8192
"""Largest TIFF tile side accepted (px): scanners write 240-4096; 8192² RGBA is 256 MiB
decoded for any read that touches the tile."""

_LEVEL_SIZE_SLACK = (1.0, 0.02)
"""A reduced level's side may differ from level 0's side / its downsample by 1 px plus 2 %
(scanners round level sizes up or down); more means the pyramid is damaged."""


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text that is always valid UTF-8: undecodable bytes of a file name become
    ``\\xNN`` (``caf\\xe9.svs``), so messages and manifests can print it."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def slide_id_of(path: str | os.PathLike[str]) -> str:
    """A slide's id: its file name without the extension (``a.ome.tiff`` → ``a``).

    Undecodable bytes of a non-UTF-8 name are written ``\\xNN`` (see :func:`display_path`).
    """
    name = display_path(Path(path).name)
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


class Slide:
    """A whole-slide image opened for reading.

    Args:
        path: the slide file (SVS, NDPI, MRXS, SCN, BIF, tiled TIFF, DICOM, or a flat
            TIFF/JPEG/PNG through the fallback reader), or a folder of the DICOM instances
            of one slide (read with wsidicom, as are DICOM files openslide refuses).
        mpp: level-0 µm per pixel, overriding missing or wrong metadata.
        fast_reads: read patches of tiled JPEG TIFF/SVS slides by decoding their JPEG tiles
            directly, with DCT scaling for coarser targets (``wsi.io.fastread``; faster
            than openslide, most for 20x patches from 40x scans); openslide otherwise.

    Raises:
        SlideNotFoundError: no such file, a directory, or a symlink loop.
        SlideOpenError: empty, truncated, unreadable or not an image; a pyramid level
            whose size is not a reduction of level 0; a file name that is not UTF-8.
        InvalidMppError: ``mpp`` given and not plausible (< 0.01, NaN, > 100 µm/px).
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
        try:
            _check_levels(self.name, self.level_dimensions, self.path)
        except SlideOpenError:
            self._reader.close()
            raise
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
        """``"openslide"``, ``"wsidicom"`` (DICOM openslide refuses) or ``"flat-image"``."""
        return self._reader.backend

    @property
    def patch_backend(self) -> str:
        """What :meth:`read_patch` decodes with: ``"fast-tiff"`` or :attr:`backend`."""
        return "fast-tiff" if self._fast_reader() is not None else self._reader.backend

    def _fast_reader(self) -> FastTiffReader | None:
        # checked on first use (a patch or thumbnail read): parsing a big TIFF's tile tables
        # is not free, and opening a slide for its metadata should not pay for it
        if not self._fast_checked:
            self._fast_checked = True
            self._fast = FastTiffReader.try_open(self.path)
            if self._fast is not None and self._fast.level_dimensions != self.level_dimensions:
                self._fast.close()  # it parsed the file differently from openslide: not ours
                self._fast = None
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
        """Where mpp came from: argument, openslide, dicom-pixel-spacing, tiff-resolution,
        objective-power; or None."""
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
        When ``size_level0`` is ``out_size`` pixels of ``level`` and (x, y) a whole level-0
        pixel (a native tile grid, see :func:`wsi.tile`), the patch is the level's pixels
        read 1:1 with no resampling: from the nearest level pixel on a tiled JPEG slide
        (:mod:`wsi.io.fastread`), else openslide's ``read_region`` at (x, y) (which, on a
        level with a fractional downsample, openslide shifts by under a pixel).
        """
        fast = self._fast_reader()
        if fast is not None:
            return fast.read_patch(x, y, size_level0, out_size, level)
        ds = self.level_downsamples[level]
        if native_origin(x, y, size_level0, out_size, ds) is not None:
            region = self._reader.read_region_image(round(x), round(y), level, out_size, out_size)
            return np.asarray(region)
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
        at least as fine, in blocks of at most ~16 M level pixels, so a huge level is never
        held whole. On a tiled JPEG TIFF/SVS the tiles are decoded directly (see
        :mod:`wsi.io.fastread`), at 1/2, 1/4 or 1/8 inside the JPEG decoder when the thumbnail
        is that much coarser than the level: within ~3 grey levels (mean) of the openslide
        path, bit-identical when no DCT scaling applies. Raises :class:`SlideReadError`
        when that level holds more than :data:`THUMBNAIL_MAX_LEVEL_PIXELS` (a huge slide
        without a pyramid).
        """
        if not downsample > 0:
            raise InvalidParameterError(f"thumbnail downsample must be > 0, got {downsample!r}")
        w0, h0 = self.dimensions
        out_w, out_h = max(1, round(w0 / downsample)), max(1, round(h0 / downsample))
        level = self.best_level_for_downsample(downsample)
        lds = self.level_downsamples[level]
        scale = downsample / lds
        level_w, level_h = math.ceil(out_w * scale), math.ceil(out_h * scale)
        if level_w * level_h > THUMBNAIL_MAX_LEVEL_PIXELS:
            lw, lh = self.level_dimensions[level]
            raise SlideReadError(
                f"{self.name}: a thumbnail at downsample {downsample:.4g} would decode all of "
                f"level {level} ({lw}x{lh} px, {lw * lh / 1e9:.3g} Gpx): the slide has no "
                "coarser pyramid level. Add one, e.g. `vips tiffsave IN OUT.tif --tile "
                "--pyramid --compression jpeg`, and open that",
                self.path,
            )
        fast = self._fast_reader()
        reduce = fast.dct_reduce(level, scale) if fast is not None else 1
        scale /= reduce  # read pixels (of the level decoded at 1/reduce) per output pixel
        if scale > _MAX_BOX_SCALE:
            # a tiny thumbnail of a level with no coarser pyramid: through a finer one, so
            # that no single output pixel's footprint is read at once
            k = math.ceil(scale / _MAX_BOX_SCALE)
            return _box_reduce(self.read_thumbnail(downsample / k), k, out_w, out_h)
        if abs(scale - 1.0) * max(out_w, out_h) < _NEAR_ONE_DRIFT_PX:
            scale = 1.0  # e.g. a level of downsample 15.9986 read for 32: pixels 1:1, no resize
        if scale == 1.0 and fast is not None and out_w * out_h <= _STRIP_PIXELS:
            return fast.read_level_window(level, reduce, 0, 0, out_w, out_h)  # no copy
        return self._thumbnail_in_blocks(fast, level, reduce, scale, out_w, out_h)

    def _thumbnail_in_blocks(
        self,
        fast: FastTiffReader | None,
        level: int,
        reduce: int,
        scale: float,
        out_w: int,
        out_h: int,
    ) -> np.ndarray:
        """:meth:`read_thumbnail`'s pixels read block by block (at most ~16 M level pixels
        at once) from ``level`` decoded at 1/``reduce``, ``scale`` read pixels per output
        pixel, each block box-resampled unless ``scale`` is 1."""
        lds = self.level_downsamples[level]
        read_w = math.ceil(out_w * scale)
        out = np.empty((out_h, out_w, 3), np.uint8)
        if read_w * max(scale, 1.0) <= _STRIP_PIXELS:  # full-width strips
            cols = out_w
        else:
            cols = max(1, int(math.sqrt(_STRIP_PIXELS) / max(scale, 1.0)))
        rows = max(1, int(_STRIP_PIXELS / max(cols * scale, 1.0) / max(scale, 1.0)))
        for r0 in range(0, out_h, rows):
            r1 = min(out_h, r0 + rows)
            iy0, iy1 = math.floor(r0 * scale), math.ceil(r1 * scale)
            for c0 in range(0, out_w, cols):
                c1 = min(out_w, c0 + cols)
                ix0, ix1 = math.floor(c0 * scale), math.ceil(c1 * scale)
                if fast is not None:
                    block = fast.read_level_window(level, reduce, ix0, iy0, ix1 - ix0, iy1 - iy0)
                else:
                    block = self._reader.read_region(
                        round(ix0 * lds), round(iy0 * lds), level, ix1 - ix0, iy1 - iy0
                    )
                if scale == 1.0:
                    out[r0:r1, c0:c1] = block[: r1 - r0, : c1 - c0]
                    continue
                box = (c0 * scale - ix0, r0 * scale - iy0, c1 * scale - ix0, r1 * scale - iy0)
                resized = Image.fromarray(block).resize(
                    (c1 - c0, r1 - r0), Image.Resampling.BOX, box=box
                )
                out[r0:r1, c0:c1] = np.asarray(resized)
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
    """sha256 over a file's size, first ``chunk`` bytes and last ``chunk`` bytes.

    Remembered per process for an unchanged file (same size, mtime and inode): a batch run
    asks once while planning and again under the slide's lock, and reads the file once."""
    p = Path(path)
    if p.is_dir():  # a DICOM series folder: the hash of its instances' hashes
        h = hashlib.sha256(b"dicom-folder")
        for file in sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")):
            h.update(f"{file.name}:{quickhash(file, chunk)}".encode())
        return h.hexdigest()
    st = p.stat()
    return _quickhash(os.path.abspath(p), st.st_size, st.st_mtime_ns, st.st_ino, chunk)


@functools.lru_cache(maxsize=4096)
def _quickhash(path: str, size: int, mtime_ns: int, inode: int, chunk: int) -> str:
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(size - chunk, chunk))
            h.update(f.read(chunk))
    return h.hexdigest()


def _box_reduce(rgb: np.ndarray, k: int, out_w: int, out_h: int) -> np.ndarray:
    """Means of ``k`` x ``k`` blocks of ``rgb``, as uint8 (out_h, out_w, 3); padded with
    white (what lies past the slide) where ``rgb`` is short of ``k·out`` pixels, cut where
    it is longer."""
    h, w = out_h * k, out_w * k
    rgb = rgb[:h, :w]
    pad = ((0, h - rgb.shape[0]), (0, w - rgb.shape[1]), (0, 0))
    rgb = np.pad(rgb, pad, constant_values=255)
    means = rgb.reshape(out_h, k, out_w, k, 3).mean(axis=(1, 3))
    return np.rint(means).astype(np.uint8)


def _check_tiff_layout(path: Path, shown: str, file_size: int) -> None:
    """Refuse a TIFF whose directories promise what the file cannot hold, before a C reader
    trusts them and takes the whole process down (glib aborts on a failed allocation;
    openslide divides by zero on some damaged pyramids): tiles too large to allocate, fewer
    tile offsets than the image size needs, an Aperio level larger than the first (level 0;
    Aperio levels are in file order), and image data past the end of the file (a truncated
    copy). Directories tifffile cannot parse are left to openslide and the fallback reader
    to judge."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            aperio = str(getattr(tif.pages.first, "description", "")).startswith("Aperio")
            first: tuple[int, int, int] | None = None
            for index, page in enumerate(tif.pages):
                if not isinstance(page, tifffile.TiffPage):
                    continue
                if page.is_tiled and aperio:
                    first = _check_aperio_level(path, shown, index, page, first)
                if page.is_tiled:
                    _check_tile_size(path, shown, index, page)
                offsets = np.asarray(page.dataoffsets, np.uint64)
                counts = np.asarray(page.databytecounts, np.uint64)
                if page.is_tiled:
                    _check_tile_count(path, shown, index, page, min(offsets.size, counts.size))
                _check_data_end(path, shown, index, offsets, counts, file_size)
    except SlideOpenError:
        raise
    except Exception:  # noqa: BLE001 - tifffile's verdict is advisory; the readers decide
        return


def _check_aperio_level(
    path: Path, shown: str, index: int, page: Any, first: tuple[int, int, int] | None
) -> tuple[int, int, int]:
    """Refuse an Aperio tiled directory larger than the first one (level 0); return the
    first one's (directory, width, height)."""
    size = (index, page.imagewidth, page.imagelength)
    first = first or size
    if size[1] > first[1] or size[2] > first[2]:
        raise SlideOpenError(
            f"{shown}: tiled directory {index} is {size[1]}x{size[2]} px, "
            f"larger than level 0 (directory {first[0]}, {first[1]}x{first[2]} "
            "px); the pyramid is damaged — re-copy the file or re-export it",
            path,
        )
    return first


def _check_tile_size(path: Path, shown: str, index: int, page: Any) -> None:
    """Refuse a tiled directory whose tiles are too large to decode (or empty)."""
    tw, th = page.tilewidth, page.tilelength
    if not (0 < tw <= _MAX_TILE_SIDE and 0 < th <= _MAX_TILE_SIDE):
        raise SlideOpenError(
            f"{shown}: directory {index} declares {tw}x{th} px tiles, beyond what "
            f"is decoded here (1 to {_MAX_TILE_SIDE} px a side; scanners write "
            "240-4096): the header is corrupt (re-copy the file) or the image is "
            "one huge tile (re-export it, e.g. `vips tiffsave --tile --pyramid`)",
            path,
        )


def _check_tile_count(path: Path, shown: str, index: int, page: Any, listed: int) -> None:
    """Refuse a tiled directory that lists fewer tiles (``listed``: offsets and byte counts)
    than its image size needs."""
    tw, th = page.tilewidth, page.tilelength
    planes = page.samplesperpixel if int(page.planarconfig) == 2 else 1
    needed = -(-page.imagewidth // tw) * -(-page.imagelength // th) * planes
    if listed < needed:
        raise SlideOpenError(
            f"{shown}: tiled directory {index} ({page.imagewidth}x"
            f"{page.imagelength} px in {tw}x{th} px tiles) needs {needed} tiles "
            f"but lists {listed}; the header is "
            "corrupt — re-copy the file or re-export it",
            path,
        )


def _check_data_end(
    path: Path, shown: str, index: int, offsets: np.ndarray, counts: np.ndarray, file_size: int
) -> None:
    """Refuse a directory whose image data (``offsets`` + ``counts``, bytes) runs past the
    end of the file (a truncated copy)."""
    if offsets.shape != counts.shape or not offsets.size:
        return
    end = int((offsets + counts)[counts > 0].max(initial=0))
    if end > file_size:
        raise SlideOpenError(
            f"{shown}: the file ends at byte {file_size:,} but the image data of "
            f"directory {index} runs to byte {end:,}: it is truncated (an "
            "interrupted copy or upload?); re-copy it",
            path,
        )


def _check_levels(name: str, dimensions: tuple[tuple[int, int], ...], path: Path) -> None:
    """Raise :class:`SlideOpenError` unless every level is a (possibly rounded) reduction of
    level 0 by one downsample in both x and y. A level stretched in one direction would give
    silently distorted tiles."""
    w0, h0 = dimensions[0]
    fix = (
        "the pyramid is damaged; re-export the slide (e.g. `vips tiffsave --tile --pyramid`) "
        "or re-scan it"
    )
    if w0 <= 0 or h0 <= 0:
        raise SlideOpenError(f"{name}: level 0 is {w0}x{h0} px, an empty image; {fix}", path)
    if max(w0, h0) > MAX_SLIDE_SIDE_PX:
        raise SlideOpenError(
            f"{name}: level 0 is {w0}x{h0} px, longer than any glass slide at any scanner "
            f"resolution (at most {MAX_SLIDE_SIDE_PX:,} px a side); the header is corrupt — "
            "re-copy the file or re-export it from the scanner software",
            path,
        )
    px, rel = _LEVEL_SIZE_SLACK
    for level, (w, h) in enumerate(dimensions[1:], start=1):
        ds_x, ds_y = (w0 / w, h0 / h) if w > 0 and h > 0 else (math.inf, math.inf)
        ds = (ds_x + ds_y) / 2
        off = max(abs(w - w0 / ds) - px - rel * w, abs(h - h0 / ds) - px - rel * h)
        if not math.isfinite(ds) or ds < 1 - rel or off > 0:
            raise SlideOpenError(
                f"{name}: pyramid level {level} is {w}x{h} px, which is not a reduction of "
                f"level 0 ({w0}x{h0} px): downsample {ds_x:.4g} in x but {ds_y:.4g} in y; {fix}",
                path,
            )


def _open_reader(path: Path) -> Reader:
    shown = display_path(path)
    if path.is_dir() and is_dicom_series_folder(path):
        return DicomReader(path)
    size = _checked_file_size(path, shown)
    if _read_head(path, shown) in _TIFF_MAGIC:
        _check_tiff_layout(path, shown, size)
    try:
        return OpenSlideReader(path)
    except openslide.OpenSlideUnsupportedFormatError:
        return DicomReader(path) if is_dicom_file(path) else FlatImageReader(path)
    except (openslide.OpenSlideError, ValueError, LookupError, MemoryError) as exc:
        if is_dicom_file(path):  # e.g. "Couldn't get image flavor": a non-standard export
            return DicomReader(path)
        raise SlideOpenError(
            f"{shown}: openslide cannot read it ({type(exc).__name__}: {exc}); the file may be "
            "truncated or corrupt — re-copy it or re-export it from the scanner software",
            path,
        ) from None


def _checked_file_size(path: Path, shown: str) -> int:
    """The size (bytes) of ``path``, once it is known to be a non-empty file with a UTF-8
    name; otherwise :class:`SlideNotFoundError` or :class:`SlideOpenError` saying why."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SlideNotFoundError(
            f"{shown}: no such file; check the path (SLIDES may be files, folders or globs)", path
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SlideNotFoundError(
                f"{shown}: symbolic link loop; fix or remove the link", path
            ) from None
        raise SlideOpenError(f"{shown}: cannot stat the file: {exc.strerror}", path) from None
    if path.is_dir():
        raise SlideNotFoundError(
            f"{shown}: is a directory, not a slide file (pass the files inside it, or for MRXS "
            "the .mrxs file next to its data folder; a folder is one slide only when it holds "
            "the DICOM instances of one series)",
            path,
        )
    if display_path(path.name) != path.name:
        raise SlideOpenError(
            f"{shown}: the file name is not valid UTF-8 (bytes shown as \\xNN); slide ids "
            "become output file names, manifest rows and labels keys, which must be text: "
            "rename the file to UTF-8 (e.g. `convmv -f latin1 -t utf-8 --notest FILE`)",
            path,
        )
    if st.st_size == 0:
        raise SlideOpenError(
            f"{shown}: empty file (0 bytes); the copy or scan did not finish", path
        )
    return st.st_size


def _read_head(path: Path, shown: str) -> bytes:
    """The first 4 bytes of ``path`` (a format's magic number)."""
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except PermissionError:
        raise SlideOpenError(
            f"{shown}: permission denied; make the file readable (chmod a+r) for this user", path
        ) from None
    except OSError as exc:
        raise SlideOpenError(
            f"{shown}: cannot read the file ({exc.strerror}); check the disk or network share",
            path,
        ) from None
