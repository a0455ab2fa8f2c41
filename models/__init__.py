"""Pure-PyTorch models for whole-slide images: tile encoders and attention-MIL heads.

Knows nothing of slide files or HDF5: it takes image batches and bags of features.
"""

from models.errors import (
    CheckpointError,
    EncoderWeightsError,
    HubUnavailableError,
    ModelsError,
    TrainingDataError,
    UnknownEncoderError,
)

__all__ = [
    "CheckpointError",
    "EncoderWeightsError",
    "HubUnavailableError",
    "ModelsError",
    "TrainingDataError",
    "UnknownEncoderError",
]
