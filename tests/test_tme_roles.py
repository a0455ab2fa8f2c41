"""wsi.tme.roles: the ten tissue roles, the Kather presets and user class → role maps."""

from __future__ import annotations

import json

import pytest

from wsi.errors import TileClassifierError
from wsi.tme import ROLE_COLOURS, ROLE_PRESETS, ROLES, assign_roles, load_role_map


def test_presets_cover_kathers_classes_with_known_roles():
    assert set(ROLE_PRESETS["kather2019"]) == {
        "ADI",
        "BACK",
        "DEB",
        "LYM",
        "MUC",
        "MUS",
        "NORM",
        "STR",
        "TUM",
    }
    assert set(ROLE_PRESETS["kather2016"]) == {
        "TUMOR",
        "STROMA",
        "COMPLEX",
        "LYMPHO",
        "DEBRIS",
        "MUCOSA",
        "ADIPOSE",
        "EMPTY",
    }
    for preset in ROLE_PRESETS.values():
        assert set(preset.values()) <= set(ROLES)
    assert load_role_map("kather2019")["LYM"] == "immune"
    assert load_role_map("kather2019")["TUM"] == "tumour"
    assert load_role_map("kather2016")["EMPTY"] == "background"
    # Kather 2019's nine classes reach nine different roles (all but "other")
    assert set(ROLE_PRESETS["kather2019"].values()) == set(ROLES) - {"other"}


def test_every_role_has_its_own_colour():
    assert set(ROLE_COLOURS) == set(ROLES) and len(ROLES) == 10
    assert len(set(ROLE_COLOURS.values())) == len(ROLES)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in ROLE_COLOURS.values())


def test_user_map_from_csv_and_json(tmp_path):
    csv_file = tmp_path / "roles.csv"
    csv_file.write_text("class,role\ntumor,tumour\nstroma,stroma\nlymph,immune\n")
    assert load_role_map(csv_file) == {"tumor": "tumour", "stroma": "stroma", "lymph": "immune"}
    headerless = tmp_path / "plain.csv"
    headerless.write_text("a,fat\nb,other\n")
    assert load_role_map(str(headerless)) == {"a": "fat", "b": "other"}
    json_file = tmp_path / "roles.json"
    json_file.write_text(json.dumps({"T": "tumour", "N": "necrosis"}))
    assert load_role_map(json_file) == {"T": "tumour", "N": "necrosis"}
    assert load_role_map({"x": "muscle"}) == {"x": "muscle"}


def test_unknown_roles_are_listed(tmp_path):
    bad = tmp_path / "roles.csv"
    bad.write_text("class,role\nT,tumor\nS,stroma\nL,lymphocytes\n")
    with pytest.raises(TileClassifierError, match="'lymphocytes', 'tumor'.*use one of: tumour"):
        load_role_map(bad)
    with pytest.raises(TileClassifierError, match="neither a preset"):
        load_role_map(tmp_path / "missing.csv")


def test_classes_match_ignoring_case_and_number_prefix_and_missing_ones_are_listed():
    roles = assign_roles(["01_TUMOR", "lympho", "08_EMPTY"], load_role_map("kather2016"))
    assert roles == {"01_TUMOR": "tumour", "lympho": "immune", "08_EMPTY": "background"}
    with pytest.raises(TileClassifierError, match="without a role: FAT, GLAND"):
        assign_roles(["TUM", "FAT", "GLAND"], load_role_map("kather2019"))
