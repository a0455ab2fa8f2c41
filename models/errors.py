"""Exceptions raised by the ``models`` package.

Every error a user can cause (a wrong name, wrong weights, a bad labels table, a
checkpoint from elsewhere) is one of these, with a message that says what to do.
``wsi.errors`` re-exports them so that a notebook can catch one hierarchy.
"""

from __future__ import annotations


class ModelsError(Exception):
    """Base class of every error raised by ``models``."""


class UnknownEncoderError(ModelsError, ValueError):
    """An encoder name that is neither registered, ``timm:<name>`` nor ``hf-hub:<repo>``."""


class EncoderWeightsError(ModelsError):
    """A weights file that is missing, unreadable, or of another architecture."""


class HubUnavailableError(ModelsError):
    """Weights were to come from a model hub that cannot be reached (pass ``weights=PATH``)."""


class CheckpointError(ModelsError):
    """A MIL checkpoint that is unreadable, of an unknown format version, or that does not
    match the features it is applied to (another encoder or feature dimension)."""


class TrainingDataError(ModelsError, ValueError):
    """Labels or bags that cannot be trained on: a missing target column, a class with fewer
    slides than folds, an all-empty or non-numeric regression target, mismatched dims."""
