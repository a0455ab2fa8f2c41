"""CPU runtime settings that decide encoder throughput on Linux.

A CNN forward pass on a batch of tiles allocates activation buffers of tens to hundreds
of MB. glibc's malloc serves blocks above its mmap threshold (at most 32 MB by default)
with a fresh ``mmap`` and returns them with ``munmap``, so every batch page-faults its
buffers in again: keeping them on the heap saves those page faults on every batch
(figures: benchmarks/RESULTS.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from functools import cache

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
HEAP_THRESHOLD_BYTES = 1 << 30
"""Blocks up to this size come from the heap and are kept for reuse."""


@cache
def keep_large_allocations() -> bool:
    """Make glibc keep blocks up to :data:`HEAP_THRESHOLD_BYTES` on the heap (once per
    process). Returns True when applied; does nothing off Linux/glibc or when the user
    set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` themselves."""
    if not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, HEAP_THRESHOLD_BYTES)
    ok_trim = mallopt(_M_TRIM_THRESHOLD, HEAP_THRESHOLD_BYTES)
    return bool(ok_mmap and ok_trim)
