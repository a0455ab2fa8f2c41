"""Tissue roles: the ten kinds of tissue every TME metric is defined on, and class → role maps.

A tile classifier predicts the user's classes (``TUM``, ``STR``, ``LYM``...); each class maps to
one role of :data:`ROLES`. Presets ship for Kather et al.'s colorectal datasets; a user map is
a small CSV (``class,role``) or JSON (``{"class": "role"}``) file::

    load_role_map("kather2019")["LYM"]        # 'immune'
    load_role_map("my_roles.csv")             # {'tumor': 'tumour', 'stroma': 'stroma', ...}
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from wsi.errors import TileClassifierError

ROLES: tuple[str, ...] = (
    "tumour",
    "stroma",
    "immune",
    "necrosis",
    "mucus",
    "muscle",
    "fat",
    "normal_epithelium",
    "background",
    "other",
)
"""The tissue roles, in the order tables and legends use."""

ROLE_COLOURS: dict[str, tuple[int, int, int]] = {
    "tumour": (200, 30, 45),
    "stroma": (240, 160, 200),
    "immune": (40, 70, 200),
    "necrosis": (110, 90, 40),
    "mucus": (120, 200, 220),
    "muscle": (150, 40, 150),
    "fat": (250, 220, 90),
    "normal_epithelium": (40, 160, 80),
    "background": (235, 235, 235),
    "other": (128, 128, 128),
}
"""One RGB colour (0-255) per role, for maps and QuPath classifications."""

ROLE_PRESETS: dict[str, dict[str, str]] = {
    # Kather JN et al., PLoS Med 2019 (NCT-CRC-HE-100K / CRC-VAL-HE-7K): nine classes.
    "kather2019": {
        "ADI": "fat",
        "BACK": "background",
        "DEB": "necrosis",
        "LYM": "immune",
        "MUC": "mucus",
        "MUS": "muscle",
        "NORM": "normal_epithelium",
        "STR": "stroma",
        "TUM": "tumour",
    },
    # Kather JN et al., Sci Rep 2016 (Kather_texture_2016_image_tiles_5000): eight classes,
    # folders 01_TUMOR ... 08_EMPTY (the number prefix is ignored when classes are matched).
    # COMPLEX is stroma with single tumour or immune cells; DEBRIS includes necrosis.
    "kather2016": {
        "TUMOR": "tumour",
        "STROMA": "stroma",
        "COMPLEX": "stroma",
        "LYMPHO": "immune",
        "DEBRIS": "necrosis",
        "MUCOSA": "normal_epithelium",
        "ADIPOSE": "fat",
        "EMPTY": "background",
    },
}
"""Class → role maps of public tile datasets, by name."""

_NUMBER_PREFIX = re.compile(r"^\d+[_\- ]")


def load_role_map(spec: str | Path | Mapping[str, str]) -> dict[str, str]:
    """A class → role map: a preset name (:data:`ROLE_PRESETS`), a CSV ``class,role`` or JSON
    file, or a mapping. Raises :class:`~wsi.errors.TileClassifierError` listing roles not in
    :data:`ROLES` (and when the file is missing or unreadable)."""
    if isinstance(spec, Mapping):
        mapping = {str(k): str(v) for k, v in spec.items()}
    elif str(spec) in ROLE_PRESETS:
        mapping = dict(ROLE_PRESETS[str(spec)])
    else:
        mapping = _read_role_file(Path(spec))
    unknown = sorted({role for role in mapping.values() if role not in ROLES})
    if unknown:
        raise TileClassifierError(
            f"unknown role(s) {', '.join(map(repr, unknown))} in the class → role map "
            f"{_describe(spec)}; use one of: {', '.join(ROLES)}"
        )
    return mapping


def _describe(spec: object) -> str:
    return "given" if isinstance(spec, Mapping) else repr(str(spec))


def _read_role_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise TileClassifierError(
            f"role map {str(path)!r} is neither a preset ({', '.join(ROLE_PRESETS)}) nor a "
            "file; pass a preset name or a CSV class,role / JSON {class: role} file"
        )
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("the JSON is not an object {class: role}")
            return {str(k): str(v) for k, v in data.items()}
        with open(path, newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row and row[0].strip()]
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise TileClassifierError(f"cannot read role map {path}: {exc}") from exc
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["class", "role"]:
        rows = rows[1:]
    bad = [row for row in rows if len(row) < 2]
    if bad:
        raise TileClassifierError(f"{path}: rows need two columns class,role; got {bad[0]}")
    return {row[0].strip(): row[1].strip() for row in rows}


def assign_roles(classes: Iterable[str], role_map: Mapping[str, str]) -> dict[str, str]:
    """The role of each class. A class matches a key exactly, else ignoring case and a number
    prefix (``01_TUMOR`` → ``TUMOR``). Raises :class:`~wsi.errors.TileClassifierError`
    listing every class without a role."""
    folded = {_fold(key): role for key, role in role_map.items()}
    roles, missing = {}, []
    for name in classes:
        role = role_map.get(name, folded.get(_fold(name)))
        if role is None:
            missing.append(name)
        else:
            roles[name] = role
    if missing:
        raise TileClassifierError(
            f"class(es) without a role: {', '.join(missing)}; the role map knows "
            f"{', '.join(sorted(role_map)) or 'no class'}. Pass roles= (--roles) a preset "
            f"({', '.join(ROLE_PRESETS)}) or a CSV class,role file covering every class"
        )
    return roles


def _fold(name: str) -> str:
    return _NUMBER_PREFIX.sub("", name.strip()).upper()
