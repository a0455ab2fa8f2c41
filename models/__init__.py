"""Pure-PyTorch models for whole-slide images: tile encoders and attention-MIL heads.

Knows nothing of slide files or HDF5: it takes image batches and bags of features::

    import models
    enc = models.load_encoder("efficientnet_lite0")          # offline ImageNet weights
    feats = enc(uint8_batch)                                  # (B, 1280) float32
    cv = models.cross_validate(bags, labels, classify=["type"], regress=["immune"])
    models.register_head("mine", MyHead)                      # then arch="mine"
    model = models.train(bags, labels, classify=["type"])
    table = models.predict(model, bags, slide_ids)
"""

from typing import Any

from models.errors import (
    CheckpointError,
    EncoderWeightsError,
    HubUnavailableError,
    ModelsError,
    TrainingDataError,
    UnknownEncoderError,
)

# torch, timm and scikit-learn load on first use, so `import wsi` (which needs only the
# exception classes above) stays light.
_LAZY = {
    "Encoder": "models.encoders",
    "encoder_from_module": "models.encoders",
    "known_encoders": "models.encoders",
    "load_encoder": "models.encoders",
    "register_encoder": "models.encoders",
    "FoundationPreset": "models.foundation",
    "encoder_cards": "models.foundation",
    "ARCHITECTURES": "models.mil",
    "MILModel": "models.mil",
    "TaskSpec": "models.mil",
    "build_model": "models.mil",
    "known_heads": "models.mil",
    "register_head": "models.mil",
    "CVResult": "models.training",
    "TrainConfig": "models.training",
    "TrainedModel": "models.training",
    "cross_validate": "models.training",
    "load_checkpoint": "models.training",
    "predict": "models.training",
    "train": "models.training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES",
    "CVResult",
    "CheckpointError",
    "Encoder",
    "EncoderWeightsError",
    "FoundationPreset",
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
    "encoder_cards",
    "encoder_from_module",
    "known_encoders",
    "known_heads",
    "load_checkpoint",
    "load_encoder",
    "predict",
    "register_encoder",
    "register_head",
    "train",
]
