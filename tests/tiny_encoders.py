"""Small deterministic encoders registered for tests (fast; one sleeps to be killable)."""

from __future__ import annotations

import time

import torch
from torch import nn

from models.encoders import encoder_from_module, known_encoders, register_encoder

TINY_DIM = 12


class TinyNet(nn.Module):
    """Mean colour of 4 x 4 cells → a fixed random projection to 12 features."""

    def __init__(self, sleep_s: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.project = nn.Linear(3 * 16, TINY_DIM)
        self.sleep_s = sleep_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        cells = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.project(cells)


def tiny_encoder(sleep_s: float = 0.0, name: str = "tiny"):
    return encoder_from_module(
        TinyNet(sleep_s), TINY_DIM, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), name=name
    )


def register() -> None:
    """Register ``tiny`` and ``tiny_slow`` (0.3 s per batch) with ``models.load_encoder``."""
    if "tiny" not in known_encoders():
        register_encoder("tiny", lambda weights, kwargs: tiny_encoder(0.0, "tiny"))
        register_encoder("tiny_slow", lambda weights, kwargs: tiny_encoder(0.3, "tiny_slow"))
