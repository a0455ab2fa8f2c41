"""Crash-safe file writes: write a hidden temporary sibling, flush it to disk, rename it.

A process killed at any instant (SIGKILL, or a power cut after the rename) leaves either
the old file or the complete new one under the final name, never a partial one. A killed
writer leaves a ``.{name}.tmp-{host}-{pid}`` file, which :func:`remove_stale_temporaries`
deletes on the next run. The names are those of :mod:`wsi.store.folder` (``models`` does not
import ``wsi``), so either package cleans the other's leftovers.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

__all__ = ["remove_stale_temporaries", "temporary_path", "write_atomic", "write_text_atomic"]

HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
"""This machine's name as it appears in temporary file names."""


def temporary_path(path: str | os.PathLike[str]) -> Path:
    """A hidden sibling of ``path`` unique to this process: ``.{name}.tmp-{host}-{pid}``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{HOST}-{os.getpid()}")


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary sibling of ``path``, then rename it to ``path``.

    The parent folder is created. If ``write`` raises, the temporary is removed and ``path``
    is left as it was. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries in ``folder`` of this host's processes that no longer run (a
    killed run); return them. Those of running processes and of other hosts stay."""
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for tmp in root.glob(".*.tmp-*"):
        host, _, pid = tmp.name.rsplit(".tmp-", 1)[-1].rpartition("-")
        if host != HOST or not pid.isdigit() or _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
