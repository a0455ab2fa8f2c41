"""Fast patch reads for tiled JPEG TIFF and Aperio SVS slides.

openslide decodes every tile at full resolution and hands back ARGB that is then resized.
For a pyramidal TIFF whose levels are tiled JPEG, :class:`FastTiffReader` does less work:
it reads the raw tile bytes itself (one file descriptor per process, ``os.pread``), lets
libjpeg-turbo scale the tile inside the decoder (DCT scaling by 1/2, 1/4 or 1/8) when the
patch is at least that much coarser than the stored level, pastes the tiles a patch spans,
and resamples the small remainder exactly as :meth:`wsi.io.slide.Slide.read_patch` does.
Decoded tiles stay in an LRU cache bounded in MB, so neighbouring patches share decodes;
the tiles a read still needs are decoded side by side on a few threads (Pillow releases the
GIL while decoding; :func:`set_decode_threads`, one thread in DataLoader workers).
Thumbnails (:meth:`FastTiffReader.read_level_window`) decode every tile once, at the DCT
scale the thumbnail allows, without touching the cache.

Colours follow openslide: a level stored as ``PhotometricInterpretation = YCbCr`` is
decoded as YCbCr; one stored as RGB (Aperio's ``JPEG/RGB``) is taken as RGB samples with
no colour conversion, whatever libjpeg would guess from the stream. Abbreviated JPEG
streams get the level's ``JPEGTables`` spliced in front.

Coordinates are level-0 pixels unless a name says otherwise.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openslide
import tifffile
from PIL import Image

from wsi.errors import InvalidParameterError, SlideReadError

__all__ = [
    "DCT_SCALE_TOLERANCE",
    "DEFAULT_CACHE_MB",
    "FastTiffReader",
    "native_origin",
    "set_decode_threads",
]

DEFAULT_CACHE_MB = 64.0
"""Decoded tiles kept per reader (MB): ~970 tiles of 256 px decoded at 1/2, ~240 at full scale."""

QUALIFYING_VENDORS = ("aperio", "generic-tiff")
"""openslide formats whose levels are plain TIFF directories (no stitching, no overlaps)."""

DCT_SCALE_TOLERANCE = 0.05
"""A patch may be decoded at 1/s when it is at least (1 - this) x s times coarser than its
level: 0.5 µm/px from a 0.2527 µm/px Aperio 40x scan (ratio 1.979) still decodes at 1/2,
and the last 1 % is the bilinear resize."""

_NATIVE_SLACK = 1e-9
"""Relative float noise allowed between a patch's extent in level pixels and its output size
for the patch to count as the level's pixels read 1:1."""

_MAX_DECODE_THREADS = 4
_decode: dict[str, Any] = {"threads": min(_MAX_DECODE_THREADS, os.cpu_count() or 1), "pool": None}
_decode_lock = threading.Lock()


def _forget_decode_pool_after_fork() -> None:
    """In a forked child the parent's decoding threads do not exist and the lock may have
    been held by one of them: start with a new lock and no pool."""
    global _decode_lock
    _decode_lock = threading.Lock()
    _decode["pool"] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_decode_pool_after_fork)


def set_decode_threads(threads: int) -> None:
    """How many JPEG tiles one read may decode at once in this process (1: one after the
    other, in the calling thread). Default: the cores, at most 4. Pillow's decoder releases
    the GIL, so the 2–4 tiles under a patch decode side by side; DataLoader worker processes
    set 1, since their processes already fill the cores."""
    if not (isinstance(threads, int) and threads >= 1):
        raise InvalidParameterError(f"decode threads must be an integer >= 1, got {threads!r}")
    with _decode_lock:
        _decode["threads"] = threads
        _decode["pool"] = None  # the next read starts a pool of the new size


def _decode_pool() -> ThreadPoolExecutor | None:
    """This process's decoding threads (started on first use), or None for one thread."""
    with _decode_lock:
        if _decode["threads"] <= 1:
            return None
        if _decode["pool"] is None:
            _decode["pool"] = ThreadPoolExecutor(_decode["threads"], "wsi-jpeg")
        return _decode["pool"]


_DCT_SCALES = (8, 4, 2)
_BLUR_KERNEL = np.array([1.0, 10.0, 1.0], np.float32) / 12.0
"""The (1, 10, 1)/12 blur applied, separably, after a DCT-scaled decode that needs no resize.

A DCT-scaled tile is about a box average, sharper than the bilinear resize of the openslide
path (a (1, 3, 3, 1)/8 kernel at 1/2); this blur closes most of the gap: mean absolute
difference on a real Aperio slide 2.5 → 0.7 grey levels at 1/2, 3.5 → 1.4 at 1/4."""
_WHITE = (255, 255, 255)
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2})
"""Baseline, extended and progressive Huffman DCT: what the libjpeg-turbo decoder scales."""
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})
_COMPRESSION_JPEG = 7
_PHOTOMETRIC_JPEGMODE = {2: "RGB", 6: "YCbCr"}
"""TIFF PhotometricInterpretation → the colour space libjpeg must assume for the stream."""


@dataclass(frozen=True)
class _Level:
    """One pyramid level: geometry in level pixels and where its JPEG tiles lie in the file."""

    width: int
    height: int
    tile_width: int
    tile_height: int
    offsets: np.ndarray
    bytecounts: np.ndarray
    tables: bytes
    """JPEGTables without their EOI (spliced before a tile stream minus its SOI), or b""."""
    jpegmode: str

    @property
    def tiles_across(self) -> int:
        return -(-self.width // self.tile_width)

    def tile_index(self, col: int, row: int) -> int:
        return row * self.tiles_across + col


class _TileCache:
    """Thread-safe LRU of decoded tiles (PIL images), bounded by their pixel memory."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._tiles: OrderedDict[tuple[int, int, int], Image.Image | None] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int, int]) -> tuple[bool, Image.Image | None]:
        """``(hit, tile)``; a hit may hold None (an empty tile, painted white)."""
        with self._lock:
            if key not in self._tiles:
                return False, None
            self._tiles.move_to_end(key)
            return True, self._tiles[key]

    def put(self, key: tuple[int, int, int], tile: Image.Image | None) -> None:
        size = _nbytes(tile)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._tiles:
                return
            self._tiles[key] = tile
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._tiles.popitem(last=False)
                self._bytes -= _nbytes(old)

    def clear(self) -> None:
        with self._lock:
            self._tiles.clear()
            self._bytes = 0


def _nbytes(tile: Image.Image | None) -> int:
    """Memory of a decoded tile: PIL stores RGB as 4 bytes per pixel."""
    return 64 if tile is None else 4 * tile.width * tile.height + 64


class FastTiffReader:
    """Patch reads from a pyramidal tiled JPEG TIFF / Aperio SVS without openslide's decoder.

    Open with :meth:`try_open`, which returns None for slides that do not qualify. The
    reader is picklable (a worker process re-opens the file lazily and starts an empty
    cache) and thread-safe.

    Args:
        path: the slide file.
        levels: the levels found by :meth:`try_open`, finest first.
        cache_mb: memory for decoded tiles (MB).
    """

    backend = "fast-tiff"

    def __init__(self, path: Path, levels: tuple[_Level, ...], cache_mb: float) -> None:
        self.path = Path(path)
        self._levels = levels
        self._cache_mb = cache_mb
        self._cache = _TileCache(int(cache_mb * 1e6))
        self._fd: int | None = None
        self._fd_pid = -1
        self._fd_lock = threading.Lock()
        self.tiles_decoded = 0
        """JPEG tiles decoded since opening (cache misses): a diagnostic for cache tuning."""
        w0, h0 = levels[0].width, levels[0].height
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
            (lv.width, lv.height) for lv in levels
        )
        self.level_downsamples: tuple[float, ...] = tuple(
            (w0 / lv.width + h0 / lv.height) / 2 for lv in levels
        )

    @classmethod
    def try_open(
        cls, path: str | os.PathLike[str], cache_mb: float = DEFAULT_CACHE_MB
    ) -> FastTiffReader | None:
        """A reader for ``path``, or None when the slide does not qualify.

        Qualifies: a file openslide reads as ``aperio`` or ``generic-tiff`` whose every
        level is tiled, JPEG-compressed (TIFF compression 7), 8-bit, 3-sample, contiguous,
        YCbCr or RGB, with a decodable first tile. Anything else (flat TIFFs, JPEG 2000
        SVS, other vendors, non-TIFF files, missing files) gives None: read it with openslide.
        """
        path = Path(path)
        try:
            vendor = openslide.OpenSlide.detect_format(str(path))
        except (OSError, openslide.OpenSlideError):
            return None
        if vendor not in QUALIFYING_VENDORS:
            return None
        try:
            with tifffile.TiffFile(path) as tif:
                levels = _find_levels(tif, vendor)
        except (
            OSError,
            ValueError,
            TypeError,
            LookupError,
            ArithmeticError,
            tifffile.TiffFileError,
        ):
            return None  # a directory tifffile cannot make sense of: openslide decides
        if not levels:
            return None
        reader = cls(path, levels, cache_mb)
        if not reader._first_tiles_decode():
            reader.close()
            return None
        return reader

    # pixels ------------------------------------------------------------------------------
    def read_patch(
        self, x: float, y: float, size_level0: float, out_size: int, level: int
    ) -> np.ndarray:
        """RGB uint8 (out_size, out_size, 3) of the level-0 box ``[x, x + size_level0)²``.

        The box is read at ``level`` and resampled (bilinear) to ``out_size`` px, as
        :meth:`wsi.io.slide.Slide.read_patch` does; when the patch is about 2, 4 or 8 times
        coarser than the level (see :data:`DCT_SCALE_TOLERANCE`), tiles are decoded at that
        scale first, then resized for the remainder, or lightly blurred to match the
        openslide path when no remainder is left. Areas outside the level are white.
        A patch that is ``out_size`` pixels of the level from a whole level-0 pixel (see
        :func:`native_origin`) is the level's own pixels, decoded at full scale from the
        nearest level pixel, neither resampled nor blurred.
        Raises :class:`~wsi.errors.SlideReadError` on a corrupt tile.
        """
        self._check_level(level)
        if not size_level0 > 0 or out_size <= 0:
            raise InvalidParameterError(
                f"{self.path.name}: patch size must be positive, got size_level0="
                f"{size_level0!r} px and out_size={out_size!r} px"
            )
        ds = self.level_downsamples[level]
        origin = native_origin(x, y, size_level0, out_size, ds)
        if origin is not None:
            return np.asarray(self._window(level, 1, origin[0], origin[1], out_size, out_size))
        extent = size_level0 / ds
        scale = self._dct_scale(level, extent / out_size)
        sx, sy, s_extent = x / ds / scale, y / ds / scale, extent / scale
        ix, iy = math.floor(sx), math.floor(sy)
        iw = math.ceil(sx + s_extent) - ix
        ih = math.ceil(sy + s_extent) - iy
        window = self._window(level, scale, ix, iy, iw, ih)
        fx, fy = sx - ix, sy - iy
        if iw != out_size or ih != out_size or fx != 0 or fy != 0:
            box = (fx, fy, fx + s_extent, fy + s_extent)
            window = window.resize((out_size, out_size), Image.Resampling.BILINEAR, box=box)
        elif scale > 1:
            return _blur_like_openslide(np.asarray(window))
        return np.asarray(window)

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) of ``level`` pixels whose top-left is level-0 (x, y)."""
        self._check_level(level)
        if width <= 0 or height <= 0:
            raise InvalidParameterError(
                f"{self.path.name}: region size must be positive, got {width}x{height}"
            )
        ds = self.level_downsamples[level]
        return self.read_level_window(level, 1, round(x / ds), round(y / ds), width, height)

    def read_level_window(
        self, level: int, reduce: int, ix: int, iy: int, width: int, height: int
    ) -> np.ndarray:
        """RGB uint8 (height, width, 3) of ``level`` decoded at 1/``reduce`` (1, 2, 4 or 8;
        see :meth:`dct_reduce`), top-left at pixel (ix, iy) of that reduced level.

        For whole-area reads (thumbnails): the tiles are decoded once and not cached.
        """
        self._check_level(level)
        if reduce not in (1, *_DCT_SCALES) or width <= 0 or height <= 0:
            raise InvalidParameterError(
                f"{self.path.name}: a window needs reduce in 1, 2, 4, 8 and a positive size, "
                f"got reduce={reduce!r}, {width}x{height}"
            )
        return self._window_array(level, reduce, ix, iy, width, height)

    def dct_reduce(self, level: int, ratio: float) -> int:
        """The largest factor (8, 4, 2, else 1) by which ``level`` can be decoded inside the
        JPEG decoder for an output ``ratio`` level pixels per output pixel."""
        self._check_level(level)
        return self._dct_scale(level, ratio)

    # internals ---------------------------------------------------------------------------
    def _check_level(self, level: int) -> None:
        if not 0 <= level < len(self._levels):
            raise InvalidParameterError(
                f"{self.path.name}: level {level} does not exist (0..{len(self._levels) - 1})"
            )

    def _dct_scale(self, level: int, ratio: float) -> int:
        """The largest DCT scale (8, 4, 2) that ``ratio`` level px per output px allows
        (within :data:`DCT_SCALE_TOLERANCE`) and the tile size divides, else 1."""
        lv = self._levels[level]
        for scale in _DCT_SCALES:
            fits = lv.tile_width % scale == 0 and lv.tile_height % scale == 0
            if fits and ratio >= scale * (1 - DCT_SCALE_TOLERANCE):
                return scale
        return 1

    def _window(
        self, level: int, scale: int, ix: int, iy: int, iw: int, ih: int, cache: bool = True
    ) -> Image.Image:
        """Pixels ``[ix, ix + iw) x [iy, iy + ih)`` of ``level`` decoded at 1/``scale``;
        ``cache=False`` neither uses nor fills the tile cache."""
        out = Image.new("RGB", (iw, ih), _WHITE)
        cells = list(self._tiles_under(level, scale, ix, iy, iw, ih))
        for (_, _, left, top), tile in zip(
            cells, self._tiles(level, scale, cells, cache), strict=True
        ):
            if tile is not None:
                out.paste(tile, (left - ix, top - iy))
        return out

    def _tiles_under(
        self, level: int, scale: int, ix: int, iy: int, iw: int, ih: int
    ) -> Iterator[tuple[int, int, int, int]]:
        """``(col, row, left, top)`` of each tile of ``level`` (decoded at 1/``scale``) that
        the window ``[ix, ix + iw) x [iy, iy + ih)`` touches, with the tile's top-left in the
        reduced level."""
        lv = self._levels[level]
        tw, th = lv.tile_width // scale, lv.tile_height // scale
        x0, y0 = max(ix, 0), max(iy, 0)
        x1, y1 = min(ix + iw, _scaled(lv.width, scale)), min(iy + ih, _scaled(lv.height, scale))
        if x1 <= x0 or y1 <= y0:
            return
        for row in range(y0 // th, (y1 - 1) // th + 1):
            for col in range(x0 // tw, (x1 - 1) // tw + 1):
                yield col, row, col * tw, row * th

    def _window_array(
        self, level: int, scale: int, ix: int, iy: int, iw: int, ih: int
    ) -> np.ndarray:
        """:meth:`_window` as a numpy array, tiles copied straight into it and not cached
        (for whole-area reads: ~1.6x faster than pasting into a PIL image and converting)."""
        out = np.full((ih, iw, 3), 255, np.uint8)
        cells = list(self._tiles_under(level, scale, ix, iy, iw, ih))
        for (_, _, left, top), tile in zip(
            cells, self._tiles(level, scale, cells, False), strict=True
        ):
            if tile is None:
                continue
            cx0, cy0 = max(left, ix), max(top, iy)
            cx1, cy1 = min(left + tile.width, ix + iw), min(top + tile.height, iy + ih)
            if cx1 > cx0 and cy1 > cy0:
                pixels = np.asarray(tile)
                out[cy0 - iy : cy1 - iy, cx0 - ix : cx1 - ix] = pixels[
                    cy0 - top : cy1 - top, cx0 - left : cx1 - left
                ]
        return out

    def _tiles(
        self, level: int, scale: int, cells: list[tuple[int, int, int, int]], cache: bool
    ) -> list[Image.Image | None]:
        """The tiles of ``cells`` (from :meth:`_tiles_under`) decoded at 1/``scale``, in
        order: cached ones from the cache, the others decoded side by side on this
        process's decoding threads (see :func:`set_decode_threads`) and then cached."""
        lv = self._levels[level]
        keys = [(level, scale, lv.tile_index(col, row)) for col, row, _, _ in cells]
        tiles: list[Image.Image | None] = [None] * len(cells)
        misses = []
        for i, key in enumerate(keys):
            hit, tiles[i] = self._cache.get(key) if cache else (False, None)
            if not hit:
                misses.append(i)
        pool = _decode_pool() if len(misses) > 1 else None
        run = pool.map if pool is not None else map
        n = len(misses)
        cols, rows = [cells[i][0] for i in misses], [cells[i][1] for i in misses]
        done = run(self._load_tile, [level] * n, [scale] * n, cols, rows)
        for i, tile in zip(misses, done, strict=True):
            tiles[i] = tile
            self.tiles_decoded += tile is not None
            if cache:
                self._cache.put(keys[i], tile)
        return tiles

    def _load_tile(self, level: int, scale: int, col: int, row: int) -> Image.Image | None:
        """Tile (col, row) of ``level`` read and decoded at 1/``scale`` (no cache), clipped
        to the level; None for a tile with no data."""
        lv = self._levels[level]
        index = lv.tile_index(col, row)
        data = self._raw_tile(level, index)
        if data is None:
            return None
        tile = self._decode(data, level, index, scale)
        valid_w = _scaled(lv.width, scale) - col * (lv.tile_width // scale)
        valid_h = _scaled(lv.height, scale) - row * (lv.tile_height // scale)
        if valid_w < tile.width or valid_h < tile.height:
            tile = tile.crop((0, 0, min(valid_w, tile.width), min(valid_h, tile.height)))
        return tile

    def _raw_tile(self, level: int, index: int) -> bytes | None:
        lv = self._levels[level]
        offset, count = int(lv.offsets[index]), int(lv.bytecounts[index])
        if count == 0:
            return None  # openslide paints empty tiles transparent: white here
        data = self._pread(count, offset)
        if len(data) != count:
            raise self._tile_error(
                level, index, f"the file ends {count - len(data)} bytes early (truncated copy?)"
            )
        return data

    def _decode(self, data: bytes, level: int, index: int, scale: int) -> Image.Image:
        lv = self._levels[level]
        if not data.startswith(_SOI):
            raise self._tile_error(level, index, "the tile does not start with a JPEG marker")
        # libjpeg only warns about a premature end of image (openslide fails on it): in the
        # entropy-coded data 0xFF is stuffed, so the only end-of-image marker is the last one.
        start_of_scan = max(data.find(b"\xff\xda"), 0)
        if data.find(b"\xff\xd9", start_of_scan) != len(data.rstrip(b"\x00")) - 2:
            raise self._tile_error(level, index, "premature or missing JPEG end-of-image marker")
        stream = lv.tables + data[2:] if lv.tables else data
        try:
            width, height = _jpeg_size(stream)
            if width > lv.tile_width or height > lv.tile_height:
                raise ValueError(
                    f"JPEG frame of {width}x{height} px in a {lv.tile_width}x"
                    f"{lv.tile_height} px tile"
                )
            size = (-(-width // scale), -(-height // scale))
            return Image.frombytes("RGB", size, stream, "jpeg", "RGB", lv.jpegmode, scale, 0)
        except (OSError, ValueError, SyntaxError) as exc:
            raise self._tile_error(level, index, str(exc)) from exc

    def _tile_error(self, level: int, index: int, reason: str) -> SlideReadError:
        across = self._levels[level].tiles_across
        return SlideReadError(
            f"{self.path.name}: cannot decode JPEG tile {index} (column {index % across}, "
            f"row {index // across}) of level {level}: {reason}. The file is damaged; "
            "re-copy or re-export it from the scanner software.",
            self.path,
        )

    def _first_tiles_decode(self) -> bool:
        """Whether the first non-empty tile of every level decodes (probes the stream type)."""
        for level, lv in enumerate(self._levels):
            nonempty = np.flatnonzero(lv.bytecounts)
            if nonempty.size == 0:
                continue
            index = int(nonempty[0])
            try:
                data = self._raw_tile(level, index)
                if data is not None:
                    self._decode(data, level, index, 1)
            except (SlideReadError, OSError):
                return False
        return True

    def _pread(self, count: int, offset: int) -> bytes:
        """``count`` bytes at ``offset`` through this process's descriptor (re-opened after fork)."""
        pid = os.getpid()
        if self._fd is None or self._fd_pid != pid:
            with self._fd_lock:
                if self._fd is None or self._fd_pid != pid:
                    self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                    self._fd_pid = pid
        if hasattr(os, "pread"):
            return os.pread(self._fd, count, offset)
        with self._fd_lock:  # no pread (Windows): seek + read under the lock
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.read(self._fd, count)

    # lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close this process's file descriptor and drop the decoded tiles."""
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)
        self._fd = None
        self._cache.clear()

    def __enter__(self) -> FastTiffReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path), "levels": self._levels, "cache_mb": self._cache_mb}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(Path(state["path"]), state["levels"], state["cache_mb"])  # type: ignore[misc]

    def __repr__(self) -> str:
        w, h = self.level_dimensions[0]
        return f"FastTiffReader({self.path.name!r}, {w}x{h}, {len(self._levels)} levels)"


def native_origin(
    x: float, y: float, size_level0: float, out_size: int, downsample: float
) -> tuple[int, int] | None:
    """The level pixel ``(ix, iy)`` where a patch starts when it is its level's own pixels
    read 1:1: ``size_level0`` level-0 px are ``out_size`` px of a level of ``downsample``
    (up to float noise) and ``(x, y)`` is a whole level-0 pixel (a tile grid's coords), which
    is snapped to the nearest level pixel. None for any other patch (it is resampled)."""
    exact_size = abs(size_level0 / downsample - out_size) <= _NATIVE_SLACK * out_size
    if not exact_size or x != round(x) or y != round(y):
        return None
    return round(x / downsample), round(y / downsample)


def _blur_like_openslide(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` (uint8, H x W x 3) blurred by (1, 10, 1)/12 along rows and columns, edges
    repeated. OpenCV's separable filter: 3x faster than the same integer arithmetic in
    numpy, within 1 grey level of it (pinned in tests/test_fastread.py)."""
    return cv2.sepFilter2D(rgb, -1, _BLUR_KERNEL, _BLUR_KERNEL, borderType=cv2.BORDER_REPLICATE)


def _scaled(length: int, scale: int) -> int:
    """Level pixels ``length`` in pixels decoded at 1/``scale`` (a half-covered pixel counts)."""
    return (length + scale // 2) // scale


def _find_levels(tif: tifffile.TiffFile, vendor: str) -> tuple[_Level, ...] | None:
    """The pyramid levels as openslide orders them, or None if one is not tiled JPEG.

    Aperio: every tiled directory, in file order. Generic TIFF: the first directory and
    tiled reduced-resolution ones (NewSubfileType bit 0), widest first.
    """
    pages = []
    for index in range(len(tif.pages)):
        page = tif.pages[index]
        if not isinstance(page, tifffile.TiffPage) or not page.is_tiled:
            continue
        if vendor == "generic-tiff" and index > 0 and not page.subfiletype & 1:
            continue
        pages.append(page)
    if vendor == "generic-tiff":
        pages.sort(key=lambda page: -page.imagewidth)
    levels = tuple(_level_of(page) for page in pages)
    if not levels or any(level is None for level in levels):
        return None
    return levels  # type: ignore[return-value]


def _level_of(page: tifffile.TiffPage) -> _Level | None:
    """A level for a tiled page stored as 8-bit RGB/YCbCr JPEG tiles, else None."""
    jpegmode = _PHOTOMETRIC_JPEGMODE.get(int(page.photometric))
    orientation = page.tags.valueof(274, 1)
    if (
        jpegmode is None
        or int(page.compression) != _COMPRESSION_JPEG
        or page.samplesperpixel != 3
        or page.bitspersample != 8
        or int(page.planarconfig) != 1
        or page.imagedepth != 1
        or page.tiledepth != 1
        or orientation != 1
    ):
        return None
    tw, th = page.tilewidth, page.tilelength
    sizes = (tw, th, page.imagewidth, page.imagelength)
    if not all(isinstance(v, int) and v > 0 for v in sizes):
        return None
    tiles = -(-page.imagewidth // tw) * -(-page.imagelength // th)
    offsets = np.asarray(page.dataoffsets, np.int64)
    bytecounts = np.asarray(page.databytecounts, np.int64)
    if offsets.size != tiles or bytecounts.size != tiles:
        return None
    tables = bytes(page.jpegtables or b"")
    if tables.endswith(_EOI):
        tables = tables[:-2]
    return _Level(
        width=int(page.imagewidth),
        height=int(page.imagelength),
        tile_width=int(tw),
        tile_height=int(th),
        offsets=offsets,
        bytecounts=bytecounts,
        tables=tables,
        jpegmode=jpegmode,
    )


def _jpeg_size(stream: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG stream's frame header.

    The decoder is then asked for exactly that size, so a tile that disagrees with its
    directory can never overrun the output. Raises ValueError for anything but an 8-bit,
    3-component, Huffman-coded DCT frame.
    """
    pos, end = 2, len(stream)
    while pos + 4 <= end:
        if stream[pos] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {pos}")
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        length = int.from_bytes(stream[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            header = stream[pos + 4 : pos + 10]
            if marker not in _SOF_MARKERS or len(header) < 6:
                raise ValueError(f"unsupported JPEG frame type 0x{marker:02X}")
            precision, components = header[0], header[5]
            height = int.from_bytes(header[1:3], "big")
            width = int.from_bytes(header[3:5], "big")
            if precision != 8 or components != 3 or width == 0 or height == 0:
                raise ValueError(
                    f"unsupported JPEG frame: {precision}-bit, {components} components, "
                    f"{width}x{height}"
                )
            return width, height
        if marker in (0xD9, 0xDA):
            break
        pos += 2 + length
    raise ValueError("no JPEG frame header before the image data")
