"""An output folder shared by several processes: temporary names, locks, stale-file cleanup.

Several ``wsi embed`` runs (on one machine, or Ray tasks on many) may write into the same
output folder. Three rules keep it consistent:

- every file is written under a temporary name ``.{name}.tmp-{host}-{pid}`` in its final
  folder and renamed into place, so a final name never holds a partial file;
- a slide is worked on only under its lock, ``DIR/.locks/{slide_id}.lock``, an exclusive
  ``flock`` that the kernel (or the NFS server, when the client's lease lapses) releases when
  its holder dies: a lock file left by a killed run is not a held lock, so stale locks recover
  by themselves. The file records who holds it (host, pid, start time) for the curious;
- temporaries of dead processes on this host are deleted at the start of a run, and the
  temporaries a slide's previous lock holder may have left (on any host) are deleted by
  whoever takes that slide's lock next. (Temporary names and
  the stale cleanup live in :mod:`models.atomic`, shared with the training outputs.)

``flock`` needs a filesystem that supports it (local disks, NFSv4, Lustre/GPFS/BeeGFS with
locking enabled); :class:`wsi.errors.OutputFolderError` says so when it is missing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from models.atomic import HOST, remove_stale_temporaries, temporary_path
from wsi.errors import OutputFolderError

__all__ = [
    "HOST",
    "FileLock",
    "lock_holder",
    "remove_stale_temporaries",
    "remove_temporaries_of",
    "slide_lock_path",
    "take_slide",
    "temporary_path",
]

LOCKS_DIR = ".locks"


def remove_temporaries_of(
    folder: str | os.PathLike[str], name: str, holder: dict[str, Any] | None
) -> list[Path]:
    """Delete the temporary that ``holder`` (a lock's previous holder: ``host_tag``, ``pid``)
    may have left of the final file ``folder/name``, from any host.

    Only call this while holding the lock that guards ``name``: nobody else can be writing
    it then. The name is built, not searched for: no directory scan per slide in a folder of
    100k files.
    """
    if not holder or not str(holder.get("pid", "")).isdigit() or not holder.get("host_tag"):
        return []
    tmp = Path(folder) / f".{name}.tmp-{holder['host_tag']}-{holder['pid']}"
    if not tmp.exists():
        return []
    tmp.unlink(missing_ok=True)
    return [tmp]


class FileLock:
    """An exclusive, non-reentrant ``flock`` on a lock file; released on :meth:`release`,
    on garbage collection, or when the process dies.

    Use :meth:`try_acquire` (None when someone else holds it) or :meth:`acquire` (waits).
    """

    def __init__(self, path: str | os.PathLike[str], fd: int) -> None:
        self.path = Path(path)
        self._fd: int | None = fd
        self.previous_holder: dict[str, Any] | None = None
        """Who held the lock before (host, host_tag, pid, since), read when it was taken."""

    @classmethod
    def try_acquire(cls, path: str | os.PathLike[str]) -> FileLock | None:
        """Take the lock now, or return None when another holder has it."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise OutputFolderError(
                f"cannot create lock file {path}: {exc.strerror}; the output folder must be "
                "writable by every process that shares it"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise OutputFolderError(
                f"cannot lock {path}: {exc.strerror}; the output folder's filesystem must "
                "support flock (local disk, NFSv4, Lustre/GPFS with locking enabled)"
            ) from exc
        lock = cls(path, fd)
        lock.previous_holder = lock._read_holder()
        lock._record_holder()
        return lock

    @classmethod
    def acquire(
        cls, path: str | os.PathLike[str], timeout_s: float | None = None, poll_s: float = 0.2
    ) -> FileLock | None:
        """Wait for the lock (polling, so a stop flag or timeout can end the wait).

        Returns None only when ``timeout_s`` passes first.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            lock = cls.try_acquire(path)
            if lock is not None:
                return lock
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(poll_s)

    def _read_holder(self) -> dict[str, Any] | None:
        assert self._fd is not None
        try:
            holder = json.loads(os.pread(self._fd, 4096, 0))
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _record_holder(self) -> None:
        assert self._fd is not None
        info = json.dumps(
            {
                "host": socket.gethostname(),
                "host_tag": HOST,
                "pid": os.getpid(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        ).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, info, 0)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let go of the lock (the file stays: deleting it would race with new takers)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def lock_holder(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who last took the lock at ``path`` (host, pid, since), or None when unknown."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def slide_lock_path(out_dir: str | os.PathLike[str], slide_id: str) -> Path:
    """``out_dir/.locks/{slide_id}.lock``: the lock guarding one slide's outputs."""
    return Path(out_dir) / LOCKS_DIR / f"{slide_id}.lock"


def slide_outputs(
    out_dir: str | os.PathLike[str], slide_id: str, features_dir: Path | None
) -> list[tuple[Path, str]]:
    """(folder, file name) of every output of one slide, for temporary cleanup."""
    out = Path(out_dir)
    items = [
        (out / "patches", f"{slide_id}.h5"),
        (out / "qc", f"{slide_id}.png"),
        (out / "qc", f"{slide_id}.geojson"),
    ]
    if features_dir is not None:
        items.append((features_dir, f"{slide_id}.h5"))
    return items


def take_slide(
    out_dir: str | os.PathLike[str],
    slide_id: str,
    features_dir: Path | None = None,
    *,
    wait: bool = False,
    timeout_s: float | None = None,
) -> FileLock | None:
    """Lock one slide's outputs in ``out_dir`` and clear its leftover temporaries.

    ``wait=False``: None at once when another process holds the slide; ``wait=True``: wait
    (up to ``timeout_s``). The caller releases the lock when the slide's files are final.
    """
    path = slide_lock_path(out_dir, slide_id)
    lock = FileLock.acquire(path, timeout_s) if wait else FileLock.try_acquire(path)
    if lock is not None:
        for folder, name in slide_outputs(out_dir, slide_id, features_dir):
            remove_temporaries_of(folder, name, lock.previous_holder)
    return lock
