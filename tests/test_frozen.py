"""models.frozen and Encoder.cpu_graph: the frozen CPU graph gives the eager features."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import timm
import torch
from torch import nn

import models.frozen
from models.encoders import load_encoder
from models.frozen import freeze_for_cpu


@pytest.mark.slow
def test_frozen_efficientnet_matches_eager_on_other_batch_sizes() -> None:
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    model = model.to(memory_format=torch.channels_last)
    probe = torch.randn(2, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    frozen = freeze_for_cpu(model, probe)
    assert isinstance(frozen, torch.jit.ScriptModule)
    x = torch.randn(5, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = model(x)
        assert torch.allclose(frozen(x), expected, atol=1e-4 * float(expected.abs().max()))


class _DictOutput(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": x.mean((2, 3))}


def test_untraceable_large_or_unfaithful_modules_stay_eager(monkeypatch) -> None:
    probe = torch.randn(2, 3, 8, 8)
    assert freeze_for_cpu(_DictOutput(), probe) is None
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    monkeypatch.setattr(models.frozen, "MAX_PARAMETERS", 10)
    assert freeze_for_cpu(small, probe) is None
    monkeypatch.undo()
    assert freeze_for_cpu(small, probe) is not None
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    monkeypatch.setattr(torch.jit, "optimize_for_inference", lambda module: other)
    assert freeze_for_cpu(small, probe) is None  # other weights: refused


@pytest.mark.slow
def test_the_default_encoder_runs_a_frozen_graph_with_eager_features() -> None:
    encoder = load_encoder("efficientnet_lite0", weights="random", device="cpu", precision="fp32")
    tiles = np.random.default_rng(0).integers(0, 256, (6, 224, 224, 3), np.uint8)
    features = encoder(tiles)
    assert isinstance(encoder._graphs["cpu"], torch.jit.ScriptModule)
    eager = dataclasses.replace(encoder, cpu_graph=False)
    expected = eager(tiles)
    assert not eager._graphs
    assert torch.allclose(features, expected, atol=1e-4 * float(expected.abs().max()))
    copy = pickle.loads(pickle.dumps(encoder))  # the graph stays behind, rebuilt on use
    assert not copy._graphs
    assert torch.allclose(copy(tiles[:2]), features[:2], atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16"])
def test_autocast_precisions_stay_eager(precision: str) -> None:
    encoder = load_encoder(
        "efficientnet_lite0", weights="random", device="cpu", precision=precision
    )
    encoder(np.zeros((1, 224, 224, 3), np.uint8))
    assert not encoder._graphs


def test_user_modules_stay_eager_unless_asked() -> None:
    from models.encoders import encoder_from_module

    calls = []

    class Logged(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])  # a Python side effect tracing would drop
            return x.mean((2, 3))

    encoder = encoder_from_module(Logged(), 3, 32, (0.5,) * 3, (0.25,) * 3)
    for _ in range(3):
        encoder(np.zeros((2, 32, 32, 3), np.uint8))
    assert calls == [2, 2, 2] and not encoder._graphs
