"""Back ends that decode slide pixels: openslide, and a fallback for flat images.

A reader exposes level geometry, openslide-style properties, associated images and
``read_region`` returning RGB uint8 with transparent areas composited onto white.
:class:`wsi.io.slide.Slide` picks one and adds the physical scale and patch logic on top.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import openslide
from PIL import Image

from wsi.errors import SlideOpenError, SlideReadError

FALLBACK_MAX_PIXELS = 1_000_000_000
"""Largest flat image (pixels) the fallback reader decodes whole (~3 GB of RGB)."""


class Reader(Protocol):
    """What :class:`wsi.io.slide.Slide` needs from a back end."""

    backend: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, str]

    def associated_image_names(self) -> list[str]: ...

    def associated_image(self, name: str) -> Image.Image: ...

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3); ``x, y`` in level-0 pixels, size in ``level`` pixels."""
        ...

    def read_region_image(self, x: int, y: int, level: int, width: int, height: int) -> Image.Image:
        """The same region as an RGB PIL image (saves copies when PIL resizes it next)."""
        ...

    def close(self) -> None: ...


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite non-premultiplied RGBA uint8 (openslide's output) onto white: the library's
    one RGBA → RGB. ``round((c·a + 255·(255 − a)) / 255)`` per channel, the same values as
    PIL's ``alpha_composite`` onto white. Returns a new (…, 3) uint8 array."""
    alpha = rgba[..., 3]
    if alpha.size == 0 or alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha[..., None].astype(np.uint16)
    rgb = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return rgb.astype(np.uint8)


def rgba_image_to_rgb(image: Image.Image) -> Image.Image:
    """:func:`rgba_to_rgb` for an RGBA PIL image; opaque images are only converted."""
    if image.getextrema()[3][0] == 255:
        return image.convert("RGB")
    return Image.fromarray(rgba_to_rgb(np.asarray(image)))


class OpenSlideReader:
    """Every format openslide reads: SVS, NDPI, MRXS, SCN, BIF, generic tiled TIFF, DICOM…"""

    backend = "openslide"

    def __init__(self, path: Path) -> None:
        self._slide = openslide.OpenSlide(str(path))
        self.level_dimensions = tuple(self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties = _readable_properties(self._slide.properties)
        self._path = path

    def __repr__(self) -> str:
        w, h = self.level_dimensions[0]
        return (
            f"<OpenSlideReader {self._path.name!r} {w}×{h} px, {len(self.level_dimensions)} levels>"
        )

    def associated_image_names(self) -> list[str]:
        return list(self._slide.associated_images.keys())

    def associated_image(self, name: str) -> Image.Image:
        fix = "the file is damaged — re-export it, or use the slide without that image"
        try:
            w, h = openslide.lowlevel.get_associated_image_dimensions(self._slide._osr, name)
            if w * h <= FALLBACK_MAX_PIXELS:
                return self._slide.associated_images[name].convert("RGB")
        except (openslide.OpenSlideError, MemoryError) as exc:
            self._reopen()
            raise SlideReadError(
                f"{self._path.name}: cannot decode the associated {name!r} image "
                f"({type(exc).__name__}: {exc}); {fix}",
                self._path,
            ) from exc
        raise SlideReadError(
            f"{self._path.name}: the associated {name!r} image declares {w}x{h} px, more than "
            f"{FALLBACK_MAX_PIXELS:,} pixels; {fix}",
            self._path,
        )

    def _reopen(self) -> None:
        """An openslide handle stays in an error state after a failed read: open it anew so
        later reads still work."""
        self._slide.close()
        self._slide = openslide.OpenSlide(str(self._path))

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        return rgba_to_rgb(np.asarray(self._read_rgba(x, y, level, width, height)))

    def read_region_image(self, x: int, y: int, level: int, width: int, height: int) -> Image.Image:
        return rgba_image_to_rgb(self._read_rgba(x, y, level, width, height))

    def _read_rgba(self, x: int, y: int, level: int, width: int, height: int) -> Image.Image:
        try:
            return self._slide.read_region((int(x), int(y)), int(level), (int(width), int(height)))
        except openslide.OpenSlideError as exc:
            self._reopen()
            raise SlideReadError(
                f"{self._path.name}: cannot decode region x={x} y={y} level={level} "
                f"size={width}x{height}: {exc}. The file is damaged; re-export or re-scan it.",
                self._path,
            ) from exc

    def close(self) -> None:
        self._slide.close()


class FlatImageReader:
    """Flat (single-level) TIFF, JPEG or PNG images that openslide rejects.

    The image is decoded once, whole, so it is limited to :data:`FALLBACK_MAX_PIXELS`.
    Coarser levels do not exist; thumbnails are resized from level 0. TIFF resolution tags
    are exposed under openslide's ``tiff.*`` keys so the mpp resolution sees them.
    """

    backend = "flat-image"

    def __init__(self, path: Path) -> None:
        self._path = path
        self.properties: dict[str, str] = {"openslide.vendor": "flat-image"}
        if path.suffix.lower() in (".tif", ".tiff") or _is_tiff(path):
            self._rgb = self._read_tiff(path)
        else:
            self._rgb = self._read_pil(path)
        h, w = self._rgb.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)

    def _read_tiff(self, path: Path) -> np.ndarray:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                self._check_size(page.shape[0] * page.shape[1] if len(page.shape) >= 2 else 0)
                tags = page.tags
                if "XResolution" in tags and "ResolutionUnit" in tags:
                    num, den = tags["XResolution"].value
                    self.properties["tiff.XResolution"] = repr(num / den if den else 0.0)
                    if "YResolution" in tags:
                        num, den = tags["YResolution"].value
                        self.properties["tiff.YResolution"] = repr(num / den if den else 0.0)
                    unit = int(tags["ResolutionUnit"].value)
                    self.properties["tiff.ResolutionUnit"] = {2: "inch", 3: "centimeter"}.get(
                        unit, "none"
                    )
                if "ImageDescription" in tags:
                    self.properties["tiff.ImageDescription"] = str(tags["ImageDescription"].value)
                array = page.asarray()
        except SlideOpenError:
            raise
        except Exception as exc:
            what = (
                "a TIFF whose directories cannot be read"
                if _is_tiff(path)
                else ("not a readable image")
            )
            raise SlideOpenError(
                f"{path.name}: {what} ({type(exc).__name__}: {exc}); check the file is "
                "complete (re-copy it) and is a slide or TIFF/JPEG/PNG.",
                path,
            ) from exc
        return _to_rgb(array, path)

    def _read_pil(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                self._check_size(im.width * im.height)
                dpi = im.info.get("dpi")
                if dpi and dpi[0] > 0:
                    self.properties["tiff.XResolution"] = repr(float(dpi[0]))
                    self.properties["tiff.YResolution"] = repr(float(dpi[1]))
                    self.properties["tiff.ResolutionUnit"] = "inch"
                rgb = np.asarray(im.convert("RGBA"))
        except SlideOpenError:
            raise
        except Exception as exc:
            raise SlideOpenError(
                f"{path.name}: neither openslide nor the image fallback can read it "
                f"({type(exc).__name__}: {exc}); check the file is a complete slide or image.",
                path,
            ) from exc
        return rgba_to_rgb(rgb)

    def _check_size(self, pixels: int) -> None:
        if pixels > FALLBACK_MAX_PIXELS:
            raise SlideOpenError(
                f"{self._path.name}: a flat (non-pyramidal) image of {pixels:,} pixels is too large "
                "to decode whole; convert it to a tiled pyramidal TIFF (e.g. `vips tiffsave "
                "--tile --pyramid --compression jpeg`) and open that.",
                self._path,
            )

    def __repr__(self) -> str:
        w, h = self.level_dimensions[0]
        return f"<FlatImageReader {self._path.name!r} {w}×{h} px, 1 level>"

    def associated_image_names(self) -> list[str]:
        return []

    def associated_image(self, name: str) -> Image.Image:
        raise KeyError(name)

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        if level != 0:
            raise SlideReadError(f"{self._path.name}: a flat image has only level 0", self._path)
        out = np.full((height, width, 3), 255, np.uint8)
        h, w = self._rgb.shape[:2]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, w), min(y + height, h)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._rgb[y0:y1, x0:x1]
        return out

    def read_region_image(self, x: int, y: int, level: int, width: int, height: int) -> Image.Image:
        return Image.fromarray(self.read_region(x, y, level, width, height))

    def close(self) -> None:
        self._rgb = np.zeros((0, 0, 3), np.uint8)


def _readable_properties(properties: Mapping[str, str]) -> dict[str, str]:
    """openslide's properties, leaving out those whose value cannot be read (a damaged
    directory can yield a key without a decodable value)."""
    readable = {}
    for key in list(properties):
        try:
            readable[key] = properties[key]
        except (KeyError, UnicodeDecodeError):
            continue
    return readable


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _to_rgb(array: np.ndarray, path: Path) -> np.ndarray:
    """Bring a decoded TIFF page to RGB uint8 (grey, RGBA, 16-bit and planar handled)."""
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer):
            raise SlideOpenError(f"{path.name}: floating-point images are not slides", path)
        shift = max(int(np.iinfo(array.dtype).bits) - 8, 0)
        array = (array >> shift).astype(np.uint8)
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.shape[-1] == 4:
        return rgba_to_rgb(array)
    if array.ndim == 3 and array.shape[-1] == 3:
        return np.ascontiguousarray(array)
    raise SlideOpenError(f"{path.name}: unsupported image layout {array.shape}", path)
