"""Where a model runs and at which autocast precision: one set of rules for tile encoders
and MIL heads.

``resolve_device`` turns "auto"/None into the best device present; ``resolve_precision``
turns "auto" into the fastest precision that is native on that device; ``autocast`` is the
matching ``torch.autocast`` context (a no-op at fp32).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16", "fp16"]
ResolvedPrecision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = [
    "PRECISIONS",
    "Precision",
    "ResolvedPrecision",
    "autocast",
    "autocast_dtype",
    "cpu_has_native_bf16",
    "resolve_device",
    "resolve_precision",
]


def resolve_device(device: str | torch.device | None = None, *, mps: bool = True) -> torch.device:
    """None or "auto" -> cuda if available, else mps (if ``mps`` and available), else cpu;
    anything else -> ``torch.device(device)``.

    Encoders take MPS; MIL training passes ``mps=False`` (its "auto" is cuda or cpu).
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_precision(
    precision: Precision, device: torch.device, *, cuda_only: bool = False
) -> ResolvedPrecision:
    """The autocast precision used for ``precision`` on ``device`` ("auto" resolved).

    "auto": bf16 on CUDA where supported, else fp16; bf16 on CPUs with native bf16
    (AVX512-BF16/AMX); fp32 elsewhere. ``cuda_only=True`` (MIL training) runs fp32 on every
    device but CUDA, whatever ``precision`` asks for.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    if cuda_only and device.type != "cuda":
        return "fp32"
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def autocast_dtype(precision: ResolvedPrecision) -> torch.dtype | None:
    """torch dtype of a resolved precision for ``torch.autocast``; None for fp32."""
    return _AUTOCAST_DTYPES.get(precision)


def autocast(device: torch.device, precision: ResolvedPrecision) -> torch.autocast:
    """``torch.autocast`` on ``device`` at ``precision``; disabled at fp32."""
    dtype = autocast_dtype(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


@cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX); emulated bf16 is slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
