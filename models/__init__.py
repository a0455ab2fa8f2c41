"""Pure-PyTorch models for whole-slide images: tile encoders and attention-MIL heads.

Knows nothing of slide files or HDF5: it takes image batches and bags of features::

    import models
    enc = models.load_encoder("efficientnet_lite0")          # offline ImageNet weights
    feats = enc(uint8_batch)                                  # (B, 1280) float32
    cv = models.cross_validate(bags, labels, classify=["type"], regress=["immune"])
    model = models.train(bags, labels, classify=["type"])
    table = models.predict(model, bags, slide_ids)
"""

from models.encoders import (
    Encoder,
    encoder_from_module,
    known_encoders,
    load_encoder,
    register_encoder,
)
from models.errors import (
    CheckpointError,
    EncoderWeightsError,
    HubUnavailableError,
    ModelsError,
    TrainingDataError,
    UnknownEncoderError,
)
from models.mil import ARCHITECTURES, MILModel, TaskSpec, build_model
from models.training import (
    CVResult,
    TrainConfig,
    TrainedModel,
    cross_validate,
    load_checkpoint,
    predict,
    train,
)

__all__ = [
    "ARCHITECTURES",
    "CVResult",
    "CheckpointError",
    "Encoder",
    "EncoderWeightsError",
    "HubUnavailableError",
    "MILModel",
    "ModelsError",
    "TaskSpec",
    "TrainConfig",
    "TrainedModel",
    "TrainingDataError",
    "UnknownEncoderError",
    "build_model",
    "cross_validate",
    "encoder_from_module",
    "known_encoders",
    "load_checkpoint",
    "load_encoder",
    "predict",
    "register_encoder",
    "train",
]
