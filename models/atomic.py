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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "AtomicTarget",
    "atomic_path",
    "remove_stale_temporaries",
    "temporary_path",
    "write_atomic",
    "write_text_atomic",
]

HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
"""This machine's name as it appears in temporary file names."""


def temporary_path(path: str | os.PathLike[str]) -> Path:
    """A hidden sibling of ``path`` unique to this process: ``.{name}.tmp-{host}-{pid}``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{HOST}-{os.getpid()}")


class AtomicTarget:
    """A file being written under its temporary name: fill :attr:`tmp`, then :meth:`commit`
    (flush to disk, rename to :attr:`path`) or :meth:`discard`. For writers whose life is not
    one ``with`` block (a features file filled batch by batch); otherwise use
    :func:`atomic_path`. The parent folder is created."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_path(self.path)

    def commit(self) -> Path:
        """Flush the temporary to disk and rename it to :attr:`path` (removed if that fails)."""
        try:
            with open(self.tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        """Remove the temporary; :attr:`path` stays as it was."""
        self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it to ``path`` when the block
    ends normally, remove it when the block raises (``path`` is then left as it was).

        with atomic_path(out / "a.h5") as tmp:
            with h5py.File(tmp, "w") as f:
                ...
    """
    target = AtomicTarget(path)
    try:
        yield target.tmp
    except BaseException:
        target.discard()
        raise
    target.commit()


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary sibling of ``path``, then rename it to ``path``.

    The parent folder is created. If ``write`` raises, the temporary is removed and ``path``
    is left as it was. Returns ``path``.
    """
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


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
