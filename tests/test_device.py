"""Device and autocast-precision rules shared by encoders and MIL training; the library version."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from models import device
from models.device import autocast, resolve_device, resolve_precision
from models.version import library_version

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_device_prefers_cuda_then_mps_unless_mps_is_off(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device() == resolve_device("auto") == torch.device("mps")
    assert resolve_device("auto", mps=False) == CPU  # MIL training's rule
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == resolve_device("auto", mps=False) == CUDA
    assert resolve_device("cpu") == CPU


def test_cuda_only_precision_is_fp32_off_cuda_whatever_is_asked(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16"  # encoders use native CPU bf16
    assert resolve_precision("bf16", CPU) == "bf16"
    for asked in ("auto", "bf16", "fp16", "fp32"):  # MIL training autocasts on CUDA only
        assert resolve_precision(asked, CPU, cuda_only=True) == "fp32"
        assert resolve_precision(asked, torch.device("mps"), cuda_only=True) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", CUDA, cuda_only=True) == "fp16"
    assert resolve_precision("bf16", CUDA, cuda_only=True) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", CPU, cuda_only=True)


def test_autocast_is_off_at_fp32_and_on_at_bf16():
    x = torch.ones(2, 2)
    with autocast(CPU, "fp32"):
        assert (x @ x).dtype == torch.float32
    with autocast(CPU, "bf16"):
        assert (x @ x).dtype == torch.bfloat16


def test_library_version_is_the_wsi_distribution_or_0_unknown(monkeypatch):
    assert library_version() == importlib.metadata.version("wsi")

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr("models.version.version", missing)
    assert library_version() == "0+unknown"
