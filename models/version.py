"""The library's version, as recorded in checkpoints and run keys."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["library_version"]


def library_version() -> str:
    """Installed version of the ``wsi`` distribution (which ships ``models``), or
    ``"0+unknown"`` when it is not installed (running from a source tree)."""
    try:
        return version("wsi")
    except PackageNotFoundError:
        return "0+unknown"
