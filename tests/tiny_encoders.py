"""Small deterministic encoders registered for tests (fast; one sleeps to be killable,
one logs what it encodes)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from torch import nn

from models.encoders import encoder_from_module, known_encoders, register_encoder

TINY_DIM = 12
ENCODE_LOG_ENV = "WSI_TEST_ENCODE_LOG"
"""``tiny_logged`` appends "pid tiles" per batch to the file this variable names."""


class TinyNet(nn.Module):
    """Mean colour of 4 x 4 cells → a fixed random projection to 12 features."""

    def __init__(self, sleep_s: float = 0.0, log: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.project = nn.Linear(3 * 16, TINY_DIM)
        self.sleep_s = sleep_s
        self.log = log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.log and os.environ.get(ENCODE_LOG_ENV):
            with open(os.environ[ENCODE_LOG_ENV], "a") as f:
                f.write(f"{os.getpid()} {x.shape[0]}\n")
        cells = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.project(cells)


class KillOnce(nn.Module):
    """``TinyNet`` that SIGKILLs its own process on its first batch while ``marker`` does
    not exist (and creates it): a worker dying mid-slide, once."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.net = TinyNet()
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return self.net(x)


def kill_once_encoder(marker: str | os.PathLike[str]):
    """An encoder named ``tiny`` (same features) whose first batch kills its process."""
    return encoder_from_module(
        KillOnce(str(marker)), TINY_DIM, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), name="tiny"
    )


def tiny_encoder(sleep_s: float = 0.0, name: str = "tiny", log: bool = False):
    return encoder_from_module(
        TinyNet(sleep_s, log), TINY_DIM, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), name=name
    )


def register() -> None:
    """Register ``tiny``, ``tiny_slow`` (0.3 s per batch) and ``tiny_logged`` (0.1 s per
    batch, logged) with ``models.load_encoder``."""
    if "tiny" not in known_encoders():
        register_encoder("tiny", lambda weights, kwargs: tiny_encoder(0.0, "tiny"))
        register_encoder("tiny_slow", lambda weights, kwargs: tiny_encoder(0.3, "tiny_slow"))
        register_encoder(
            "tiny_logged", lambda weights, kwargs: tiny_encoder(0.1, "tiny_logged", log=True)
        )
