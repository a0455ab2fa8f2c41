"""DICOM WSI files written with pydicom for tests: uncompressed TILED_FULL frames, so every
pixel is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def write_dicom_level(
    path: Path,
    rgb: np.ndarray,
    *,
    tile: int = 256,
    spacing_mm: float | None = 0.00025,
    image_type: bool = True,
    series_uid: str | None = None,
    study_uid: str | None = None,
    column_major: bool = False,
) -> Path:
    """One VL Whole Slide Microscopy instance holding ``rgb`` (H, W, 3) uint8 in ``tile``-px
    frames (padded with black), row by row unless ``column_major``. ``spacing_mm=None``
    writes no pixel spacing; ``image_type=False`` no ImageType (a non-standard export)."""
    h, w = rgb.shape[:2]
    rows, cols = -(-h // tile), -(-w // tile)
    padded = np.zeros((rows * tile, cols * tile, 3), np.uint8)
    padded[:h, :w] = rgb
    grid = [(r, c) for r in range(rows) for c in range(cols)]
    if column_major:
        grid = [(r, c) for c in range(cols) for r in range(rows)]
    frames = [padded[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] for r, c in grid]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = WSI_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = WSI_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = ds.StudyInstanceUID
    ds.Modality = "SM"
    if image_type:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
        ds.DimensionOrganizationType = "TILED_FULL"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.NumberOfFrames = len(frames)
    ds.Rows = ds.Columns = tile
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.TotalPixelMatrixColumns = w
    ds.TotalPixelMatrixRows = h
    ds.ImagedVolumeWidth = w * (spacing_mm or 0.00025)
    ds.ImagedVolumeHeight = h * (spacing_mm or 0.00025)
    ds.ImagedVolumeDepth = 0.001
    if spacing_mm is not None:
        measures = Dataset()
        measures.PixelSpacing = [spacing_mm, spacing_mm]
        measures.SliceThickness = 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = Sequence([measures])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_pyramid(
    folder: Path, rgb: np.ndarray, *, spacing_mm: float = 0.00025, levels: int = 2
) -> Path:
    """A folder of one slide's instances: ``levels`` levels, each half the previous (2 x 2
    pixel means), one series."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    level = rgb
    for i in range(levels):
        write_dicom_level(
            folder / f"level{i}.dcm",
            level,
            spacing_mm=spacing_mm * 2**i,
            series_uid=series,
            study_uid=study,
        )
        h, w = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
        level = level[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round()
        level = level.astype(np.uint8)
    return folder
