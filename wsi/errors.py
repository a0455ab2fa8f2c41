"""The exceptions ``wsi`` raises, one small hierarchy.

Each message names the file and what to do about it. The CLI prints ``str(error)`` as
one line per slide and records it in the manifest; ``--debug`` shows the traceback.
The ``models`` package's errors are re-exported here so that one ``except WsiError`` or
``except ModelsError`` covers a whole notebook cell.
"""

from __future__ import annotations

from models.errors import (
    CheckpointError,
    EncoderWeightsError,
    HubUnavailableError,
    ModelsError,
    TrainingDataError,
    UnknownEncoderError,
)


class WsiError(Exception):
    """Base class of every error raised by ``wsi`` about its inputs."""


class InvalidParameterError(WsiError, ValueError):
    """A parameter out of range: ``mpp <= 0``, ``size <= 0``, overlap ≥ size, …"""


class SlideError(WsiError):
    """Something is wrong with one slide file. ``path`` names it."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The path does not exist, or is not a regular file (a directory, a symlink loop)."""


class SlideOpenError(SlideError):
    """The file exists but no reader can open it (empty, truncated, not an image, no access)."""


class MppError(SlideError):
    """The slide's physical scale (µm per pixel) is missing or absurd."""


class MissingMppError(MppError):
    """No mpp in the metadata and none given: pass ``mpp=`` / ``--slide-mpp``."""


class InvalidMppError(MppError, InvalidParameterError):
    """An mpp below 0.01 or above 100 µm/px, NaN or infinite, from metadata or from the user."""


class SlideTooSmallError(SlideError):
    """The slide is smaller than one tile at the requested scale."""


class SlideReadError(SlideError):
    """A region could not be decoded (a corrupt tile, a truncated level)."""


class FeatureFileError(WsiError):
    """An HDF5 coords/features file that is truncated, of the wrong layout or shape."""


class BackendUnavailableError(WsiError):
    """An optional backend (Ray) is not installed or its cluster cannot be reached."""


class OutputFolderError(WsiError):
    """The output folder cannot be written or locked (permissions, a filesystem without flock)."""


class LabelsError(WsiError, ValueError):
    """A labels table that cannot be used: no ``slide_id`` column, duplicates, bad values."""


class TileClassifierError(WsiError, ValueError):
    """Labelled tiles or a tile classifier that cannot be used: an empty class folder, a class
    without a role, an unknown role, a classifier file that is damaged."""


class ClassifierMismatchError(TileClassifierError):
    """Features of another encoder, weights or scale than the tile classifier was trained on."""


__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "ClassifierMismatchError",
    "EncoderWeightsError",
    "FeatureFileError",
    "HubUnavailableError",
    "InvalidMppError",
    "InvalidParameterError",
    "LabelsError",
    "MissingMppError",
    "ModelsError",
    "MppError",
    "OutputFolderError",
    "SlideError",
    "SlideNotFoundError",
    "SlideOpenError",
    "SlideReadError",
    "SlideTooSmallError",
    "TileClassifierError",
    "TrainingDataError",
    "UnknownEncoderError",
    "WsiError",
]
