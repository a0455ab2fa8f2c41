"""DICOM whole-slide images (VL Whole Slide Microscopy) read with wsidicom.

openslide reads standard DICOM WSI, but refuses many real exports (``Couldn't get image
flavor``: no ``ImageType``, pixel spacing or dimension organisation) and a folder of
instances given as one slide. :class:`DicomReader` reads both, through wsidicom
(Apache-2.0), behind the same reader interface as the others.

A single file or a folder that wsidicom turns away for missing attributes is repaired in
memory before wsidicom reads it (:func:`repair_dataset`): the standard's defaults for the
attributes it lacks, never a made-up scale. A slide without pixel spacing has no mpp in
its properties, so :class:`wsi.io.slide.Slide` raises :class:`wsi.errors.MissingMppError`
unless the user passes one (``mpp=`` / ``--slide-mpp``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsi.errors import SlideOpenError, SlideReadError

DICOM_REPAIR_MAX_BYTES = 2 << 30
"""Largest set of DICOM files (bytes, all instances together) repaired in memory (2 GiB);
larger non-standard exports must be fixed on disk (``dcmodify``) first."""

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
"""SOP class UID of VL Whole Slide Microscopy Image Storage."""

_PLACEHOLDER_SPACING_MM = 0.001
"""Pixel spacing (mm) given to wsidicom for an instance that has none; never shown as mpp."""

_JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` is a file with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly inside ``folder`` (any extension, hidden files skipped),
    sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and is_dicom_file(p)
    )


def series_uid(path: Path) -> str | None:
    """The ``SeriesInstanceUID`` of a DICOM file (header only), or None if unreadable."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception:  # noqa: BLE001 - not a readable DICOM header: not part of a series
        return None
    return str(ds.get("SeriesInstanceUID", "")) or None


def is_dicom_series_folder(folder: Path) -> bool:
    """True when ``folder`` holds two or more DICOM files that all belong to one series:
    the instances (pyramid levels, label, overview) of one slide."""
    files = dicom_files(folder) if folder.is_dir() else []
    if len(files) < 2:
        return False
    uids = {series_uid(p) for p in files}
    return len(uids) == 1 and None not in uids


def group_dicom_series(paths: list[Path]) -> list[Path]:
    """``paths`` with the files of each DICOM series folder (see
    :func:`is_dicom_series_folder`) replaced by that folder, at the first file's place."""
    out: list[Path] = []
    seen: dict[Path, bool] = {}
    for p in paths:
        parent = p.parent
        if p.suffix.lower() == ".dcm":
            if parent not in seen:
                seen[parent] = is_dicom_series_folder(parent)
                if seen[parent]:
                    out.append(parent)
            if seen[parent]:
                continue
        out.append(p)
    return out


class DicomReader:
    """A DICOM WSI file, or a folder of the instances of one slide, read with wsidicom.

    Levels are wsidicom's pyramid levels (finest first); ``read_region`` takes level-0
    pixels like openslide and returns white past the image. Properties use openslide's
    ``openslide.vendor`` (``dicom``) and ``dicom.mpp-x``/``dicom.mpp-y`` (µm/px from the
    pixel spacing, absent when the slide has none); ``dicom.repaired`` lists the
    attributes filled in memory for a non-standard export.
    """

    backend = "wsidicom"

    def __init__(self, path: Path) -> None:
        self._path = path
        self._wsi, repaired, spacing_known = _open_wsidicom(path)
        self._levels = list(self._wsi.levels)
        w0, h0 = self._levels[0].size.width, self._levels[0].size.height
        self.level_dimensions = tuple((lv.size.width, lv.size.height) for lv in self._levels)
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2 for w, h in self.level_dimensions)
        self.properties: dict[str, str] = {"openslide.vendor": "dicom"}
        if repaired:
            self.properties["dicom.repaired"] = ",".join(repaired)
        if spacing_known:
            mpp = self._levels[0].mpp  # SizeMm in µm/px (pixel spacing x 1000)
            self.properties["dicom.mpp-x"] = repr(float(mpp.width))
            self.properties["dicom.mpp-y"] = repr(float(mpp.height))

    def __repr__(self) -> str:
        w, h = self.level_dimensions[0]
        return f"<DicomReader {self._path.name!r} {w}×{h} px, {len(self._levels)} levels>"

    def associated_image_names(self) -> list[str]:
        names = []
        if self._wsi.labels is not None:
            names.append("label")
        if self._wsi.overviews is not None:
            names.append("macro")
        return names

    def associated_image(self, name: str) -> Image.Image:
        if name == "label" and self._wsi.labels is not None:
            return self._wsi.read_label().convert("RGB")
        if name == "macro" and self._wsi.overviews is not None:
            return self._wsi.read_overview().convert("RGB")
        raise KeyError(name)

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        lx, ly = int(x // ds), int(y // ds)
        out = np.full((height, width, 3), 255, np.uint8)
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + width, lw), min(ly + height, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            region = self._wsi.read_region((x0, y0), self._levels[level].level, (x1 - x0, y1 - y0))
        except Exception as exc:  # noqa: BLE001 - wsidicom and its codecs raise many types
            raise SlideReadError(
                f"{self._path.name}: cannot decode region x={x} y={y} level={level} "
                f"size={width}x{height} ({type(exc).__name__}: {exc}); the DICOM file is "
                "damaged — re-export it",
                self._path,
            ) from exc
        out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = np.asarray(region.convert("RGB"))
        return out

    def read_region_image(self, x: int, y: int, level: int, width: int, height: int) -> Image.Image:
        return Image.fromarray(self.read_region(x, y, level, width, height))

    def close(self) -> None:
        self._wsi.close()


def _open_wsidicom(path: Path) -> tuple[Any, list[str], bool]:
    """The opened ``WsiDicom``, the attributes repaired in memory and whether the base
    level has a real pixel spacing."""
    import wsidicom
    from wsidicom import errors

    refusals = (
        errors.WsiDicomError,
        errors.WsiDicomNotFoundError,
        errors.WsiDicomNoResolutionError,
        errors.WsiDicomNotSupportedError,
        errors.WsiDicomFileError,
        errors.WsiDicomMatchError,
        ValueError,
        KeyError,
        AttributeError,
    )
    logging.getLogger("wsidicom").setLevel(logging.CRITICAL)  # its refusals are ours to word
    try:
        return wsidicom.WsiDicom.open(path), [], True
    except refusals:
        pass  # a non-standard export: repair it in memory below
    files = dicom_files(path) if path.is_dir() else [path]
    with _quiet_pydicom():
        return _open_repaired(path, files)


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings about the very non-conformities the repair fixes (long
    UIDs, RGB-labelled JFIF frames) while a non-standard export is repaired."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _open_repaired(path: Path, files: list[Path]) -> tuple[Any, list[str], bool]:
    import pydicom
    import wsidicom
    from upath import UPath
    from wsidicom.file.io.wsidicom_io import WsiDicomReadIO
    from wsidicom.file.wsidicom_file_source import WsiDicomFileSource

    total = sum(p.stat().st_size for p in files)
    if total > DICOM_REPAIR_MAX_BYTES:
        raise SlideOpenError(
            f"{path.name}: a non-standard DICOM WSI ({total / 2**30:.1f} GiB) that wsidicom "
            "refuses and that is too large to repair in memory; add the missing attributes "
            'on disk (e.g. `dcmodify -i "(0008,0008)=ORIGINAL\\PRIMARY\\VOLUME\\NONE"`) '
            "or convert it (e.g. `wsidicomizer`), then open it again",
            path,
        )
    streams, repaired, spacing_known = [], set(), True
    for file in files:
        try:
            ds = pydicom.dcmread(file)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
            raise SlideOpenError(
                f"{path.name}: {file.name} is not a readable DICOM file ({exc}); re-copy it",
                path,
            ) from exc
        if str(ds.get("SOPClassUID", "")) != WSI_SOP_CLASS:
            continue
        fixed, known = repair_dataset(ds)
        repaired.update(fixed)
        spacing_known = spacing_known and known
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        streams.append(WsiDicomReadIO(buffer, UPath(file)))
    if not streams:
        raise SlideOpenError(
            f"{path.name}: no DICOM VL Whole Slide Microscopy image in it (other DICOM "
            "objects, e.g. radiology, are not slides)",
            path,
        )
    try:
        wsi = wsidicom.WsiDicom(WsiDicomFileSource(streams), True)
    except Exception as exc:  # noqa: BLE001 - wsidicom raises many types for bad files
        raise SlideOpenError(
            f"{path.name}: wsidicom cannot read this DICOM WSI ({type(exc).__name__}: {exc}); "
            "convert it with the scanner software or `wsidicomizer` and open that",
            path,
        ) from exc
    return wsi, sorted(repaired), spacing_known


def repair_dataset(ds: Any) -> tuple[list[str], bool]:
    """Fill, in place, what a WSI instance lacks for wsidicom, by the standard's rules:

    - ``ImageType`` → ``ORIGINAL\\PRIMARY\\VOLUME\\NONE`` (a pyramid level);
    - ``DimensionOrganizationType`` → ``TILED_FULL`` when there are no per-frame positions
      (frames then lie row by row over the total pixel matrix);
    - ``PhotometricInterpretation`` ``RGB`` of JPEG-baseline frames that carry a JFIF
      header → ``YBR_FULL_422`` (JFIF frames are YCbCr: read as RGB, colours are wrong);
    - frames stored column by column (some exports do; told apart by where the padding of
      the partial edge frames lies) → put back in the standard's row-by-row order;
    - no pixel spacing → a placeholder of :data:`_PLACEHOLDER_SPACING_MM`, which the reader
      never reports as mpp.

    Returns the names of the attributes filled and whether the pixel spacing is real.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    fixed = []
    if "ImageType" not in ds:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
        fixed.append("ImageType")
    if "DimensionOrganizationType" not in ds and "PerFrameFunctionalGroupsSequence" not in ds:
        ds.DimensionOrganizationType = "TILED_FULL"
        fixed.append("DimensionOrganizationType")
        if _frames_column_major(ds):
            _reorder_row_major(ds)
            fixed.append("frame-order")
    if _jfif_frames_called_rgb(ds):
        ds.PhotometricInterpretation = "YBR_FULL_422"
        fixed.append("PhotometricInterpretation")
    if _pixel_spacing(ds) is not None:
        return fixed, True
    measures = Dataset()
    measures.PixelSpacing = [_PLACEHOLDER_SPACING_MM, _PLACEHOLDER_SPACING_MM]
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    return fixed, False


def _pixel_spacing(ds: Any) -> list[float] | None:
    """The shared functional groups' pixel spacing (mm: row, column), or None."""
    try:
        return list(ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing)
    except (AttributeError, IndexError):
        return None


def _jfif_frames_called_rgb(ds: Any) -> bool:
    """True for JPEG-baseline frames labelled RGB whose first frame has a JFIF (YCbCr) header."""
    if str(ds.get("PhotometricInterpretation", "")) != "RGB":
        return False
    if str(ds.file_meta.get("TransferSyntaxUID", "")) != _JPEG_BASELINE:
        return False
    from pydicom.encaps import generate_frames

    frames = generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1)))
    first = next(frames, b"")
    return first[2:4] == b"\xff\xe0" and first[6:11] == b"JFIF\x00"


def _grid(ds: Any) -> tuple[int, int, int, int]:
    """(rows, columns) of frames over the total pixel matrix, and the frame (height, width)."""
    th, tw = int(ds.Rows), int(ds.Columns)
    rows = -(-int(ds.TotalPixelMatrixRows) // th)
    cols = -(-int(ds.TotalPixelMatrixColumns) // tw)
    return rows, cols, th, tw


def _frames_column_major(ds: Any) -> bool:
    """True when the frames lie column by column: the edge frames that order puts on the
    right and bottom edges all hold constant padding past the matrix, and those the
    standard's row-by-row order puts there do not. Needs both edges partial; False when
    it cannot tell."""
    rows, cols, th, tw = _grid(ds)
    pad_x = cols * tw - int(ds.TotalPixelMatrixColumns)
    pad_y = rows * th - int(ds.TotalPixelMatrixRows)
    frames = int(ds.get("NumberOfFrames", 1))
    if pad_x <= 0 or pad_y <= 0 or rows < 2 or cols < 2 or frames != rows * cols:
        return False
    from pydicom.pixels import pixel_array

    def flat(index: int, right: bool) -> bool:
        # raw: no colour conversion (padding is flat in any colour space); skip 16 px next
        # to the edge: JPEG's 8 x 8 blocks bleed image into the padding
        frame = pixel_array(ds, index=index, raw=True)
        strip = (
            frame[:, tw - pad_x + min(16, pad_x // 2) :]
            if right
            else (frame[th - pad_y + min(16, pad_y // 2) :])
        )
        return bool(strip.reshape(-1, strip.shape[-1]).std(0).max() < 2)

    def padded(right: list[int], bottom: list[int]) -> bool:  # stops at the first image
        return all(flat(i, True) for i in right) and all(flat(i, False) for i in bottom)

    by_row = padded(
        [r * cols + cols - 1 for r in range(rows)], [(rows - 1) * cols + c for c in range(cols)]
    )
    if by_row:
        return False
    return padded(
        [(cols - 1) * rows + r for r in range(rows)], [c * rows + rows - 1 for c in range(cols)]
    )


def _reorder_row_major(ds: Any) -> None:
    """Re-store column-by-column frames row by row (encapsulated frames moved, not decoded)."""
    from pydicom.encaps import encapsulate, generate_frames

    rows, cols, _, _ = _grid(ds)
    order = [c * rows + r for r in range(rows) for c in range(cols)]
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        frames = list(generate_frames(ds.PixelData, number_of_frames=rows * cols))
        ds.PixelData = encapsulate([frames[i] for i in order])
    else:
        native = np.frombuffer(ds.PixelData, np.uint8).reshape(rows * cols, -1)
        ds.PixelData = native[order].tobytes()
