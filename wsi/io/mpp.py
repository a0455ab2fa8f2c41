"""Physical scale of a slide: microns per pixel (µm/px) at level 0 and where it came from.

Resolution order (the first that gives a value wins), recorded as ``mpp_source``:

1. ``"argument"``: the caller's ``mpp=`` / ``--slide-mpp``;
2. ``"openslide"``: openslide's ``openslide.mpp-x`` / ``openslide.mpp-y``;
3. ``"dicom-pixel-spacing"``: a DICOM WSI's pixel spacing (``dicom.mpp-x`` / ``dicom.mpp-y``,
   filled by :class:`wsi.io.dicom.DicomReader`; openslide reports it as ``"openslide"``);
4. ``"tiff-resolution"``: TIFF ``XResolution``/``YResolution`` with a centimetre or inch unit;
5. ``"objective-power"``: 10 / objective power (a rough rule: 20x ≈ 0.5 µm/px), with a warning.

Values that are not numbers, NaN, infinite, below :data:`MIN_MPP` or above :data:`MAX_MPP`
are errors wherever they come from, and so is an Aperio ``MPP`` field openslide could not
parse (no silent fall-back to a guess when the scanner's own value is garbage).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

from wsi.errors import InvalidMppError, MissingMppError

MIN_MPP = 0.01
"""Smallest plausible µm/px at level 0: optical scanners resolve ~0.1 µm/px at best; finer
values are metadata garbage (a resolution tag in the wrong unit)."""

MAX_MPP = 100.0
"""Largest plausible µm/px at level 0; coarser values are metadata garbage (72-dpi exports)."""

_MICRONS_PER_UNIT = {"centimeter": 10_000.0, "inch": 25_400.0, "3": 10_000.0, "2": 25_400.0}


@dataclass(frozen=True)
class Mpp:
    """µm/px at level 0 in x and y, and the source it was read from."""

    x: float
    y: float
    source: str

    @property
    def mean(self) -> float:
        """The mean of x and y µm/px (scanners write equal values; a few differ by < 1 %)."""
        return (self.x + self.y) / 2.0


def check_mpp(value: object, *, what: str, name: str, fix: str) -> float:
    """Return ``value`` as a float µm/px, or raise :class:`InvalidMppError` naming ``what``."""
    try:
        mpp = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidMppError(
            f"{name}: {what} {value!r} is not a number of µm per pixel; {fix}", name
        ) from None
    if not math.isfinite(mpp) or mpp < MIN_MPP or mpp > MAX_MPP:
        raise InvalidMppError(
            f"{name}: {what} {value!r} µm/px is not a plausible slide scale "
            f"(expected {MIN_MPP:g} <= mpp <= {MAX_MPP:g}; 40x scans are ~0.25, 20x ~0.5); {fix}",
            name,
        )
    return mpp


def resolve_mpp(
    name: str,
    properties: Mapping[str, str],
    override: float | None = None,
) -> Mpp:
    """Resolve the level-0 mpp of slide ``name`` from an override and its properties.

    ``properties`` uses openslide's keys (``openslide.mpp-x``, ``tiff.XResolution``,
    ``tiff.ResolutionUnit``, ``openslide.objective-power``); the fallback reader fills the
    same keys. Raises :class:`MissingMppError` when nothing gives a scale and
    :class:`InvalidMppError` for absurd values.
    """
    fix = "pass the scanner's true value with mpp= (CLI: --slide-mpp), e.g. 0.25 for a 40x scan"
    if override is not None:
        v = check_mpp(override, what="mpp argument", name=name, fix="pass a value such as 0.25")
        return Mpp(v, v, "argument")
    if "openslide.mpp-x" in properties and "openslide.mpp-y" in properties:
        x = check_mpp(properties["openslide.mpp-x"], what="metadata mpp-x", name=name, fix=fix)
        y = check_mpp(properties["openslide.mpp-y"], what="metadata mpp-y", name=name, fix=fix)
        return Mpp(x, y, "openslide")
    if "aperio.MPP" in properties:  # present but not parsed by openslide: garbage
        v = check_mpp(properties["aperio.MPP"], what="Aperio MPP", name=name, fix=fix)
        return Mpp(v, v, "openslide")
    if "dicom.mpp-x" in properties and "dicom.mpp-y" in properties:
        return _dicom_mpp(name, properties, fix)
    tiff = _tiff_mpp(name, properties, fix)
    if tiff is not None:
        return tiff
    power = properties.get("openslide.objective-power")
    if power not in (None, ""):
        try:
            magnification = float(power)
        except ValueError:
            magnification = 0.0
        if magnification > 0:
            v = check_mpp(10.0 / magnification, what="objective power", name=name, fix=fix)
            warnings.warn(
                f"{name}: no mpp in metadata; assuming {v:g} µm/px from objective power "
                f"{magnification:g}x (10/power). Pass mpp= / --slide-mpp if you know better.",
                stacklevel=3,
            )
            return Mpp(v, v, "objective-power")
    raise MissingMppError(
        f"{name}: no mpp in metadata (no µm/px, DICOM pixel spacing, TIFF resolution or "
        f"objective power); {fix}",
        name,
    )


def _dicom_mpp(name: str, properties: Mapping[str, str], fix: str) -> Mpp:
    """The mpp a DICOM WSI's pixel spacing gives (``dicom.mpp-x`` / ``dicom.mpp-y``, µm/px)."""
    x = check_mpp(properties["dicom.mpp-x"], what="DICOM pixel spacing x", name=name, fix=fix)
    y = check_mpp(properties["dicom.mpp-y"], what="DICOM pixel spacing y", name=name, fix=fix)
    return Mpp(x, y, "dicom-pixel-spacing")


def _tiff_mpp(name: str, properties: Mapping[str, str], fix: str) -> Mpp | None:
    """The mpp TIFF ``XResolution``/``YResolution`` give with a centimetre or inch unit."""
    unit = str(properties.get("tiff.ResolutionUnit", "")).lower()
    if unit not in _MICRONS_PER_UNIT or "tiff.XResolution" not in properties:
        return None
    per_unit = _MICRONS_PER_UNIT[unit]
    try:
        xres = float(properties["tiff.XResolution"])
        yres = float(properties.get("tiff.YResolution", xres))
    except ValueError:
        return None
    if xres <= 0 or yres <= 0:
        return None
    what = f"TIFF resolution ({xres:g} px per {unit})"
    x = check_mpp(per_unit / xres, what=what, name=name, fix=fix)
    y = check_mpp(per_unit / yres, what=what, name=name, fix=fix)
    return Mpp(x, y, "tiff-resolution")
