"""The notebook API of ``wsi``: every exported name keeps working after any import, in any
order and when called twice; public objects show one-line reprs (and pictures); tissue
options reach batch runs."""

import importlib
import json
import pkgutil

import h5py
import numpy as np
import pytest

import wsi
from tests import tiny_encoders
from tests.conftest import TISSUE_TILES, read_manifest
from wsi.cli import main
from wsi.synthetic.slides import PenMark, Region, write_slide

tiny_encoders.register()


def _import_every_module() -> None:
    for info in pkgutil.walk_packages(wsi.__path__, "wsi."):
        if info.name != "wsi.pipeline.ray_runner" or importlib.util.find_spec("ray"):
            importlib.import_module(info.name)


def test_no_submodule_replaces_an_exported_name():
    _import_every_module()
    assert set(wsi._LAZY) <= set(wsi.__all__)
    for name in wsi.__all__:
        value = getattr(wsi, name)
        assert not isinstance(value, type(wsi)), f"wsi.{name} is a module after imports"
    assert callable(wsi.embed) and callable(wsi.embed_archive) and callable(wsi.tile)


def test_readme_calls_twice_in_any_order(slide_025, tmp_path):
    slide = wsi.open_slide(slide_025)
    grid = wsi.tile(slide, mpp=0.5, size=224)
    first = wsi.embed(slide, grid, encoder="tiny")
    rows = wsi.embed_archive([slide_025], tmp_path / "out", encoder="tiny", progress=False)
    again = wsi.embed(slide, wsi.tile(slide, mpp=0.5, size=224), encoder="tiny")
    rows_again = wsi.embed_archive([slide_025], tmp_path / "out", encoder="tiny", progress=False)
    assert first.shape == (TISSUE_TILES, tiny_encoders.TINY_DIM)
    np.testing.assert_array_equal(first, again)
    assert rows[0]["status"] == rows_again[0]["status"] == "ok"
    assert wsi.detect_tissue(slide).tissue_fraction == wsi.detect_tissue(slide).tissue_fraction


def test_reprs_are_one_line_with_size_and_scale(slide_025):
    slide = wsi.open_slide(slide_025)
    mask = wsi.detect_tissue(slide)
    grid = wsi.tile(slide, mpp=0.5, size=224, mask=mask)
    texts = {
        "slide": repr(slide),
        "mask": repr(mask),
        "grid": repr(grid),
        "options": repr(wsi.TileOptions()),
    }
    for text in texts.values():
        assert "\n" not in text and len(text) < 400
    assert f"{TISSUE_TILES} tiles of 224 px at 0.5 µm/px (112 µm)" in texts["grid"]
    h, w = mask.array.shape
    assert f"{w}x{h} px" in texts["mask"] and "tissue" in texts["mask"]
    for picture in (grid._repr_png_(), mask._repr_png_()):
        assert picture[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def pen_slide(tmp_path):
    """Tissue at the left, a broad blue pen stroke on the glass at the right (0.5 µm/px)."""
    return write_slide(
        tmp_path / "pen.tiff",
        width=2048,
        height=1024,
        mpp=0.5,
        regions=[Region(64, 64, 896, 896)],
        pen_marks=[PenMark(1200, 512, 1900, 512, width=320, color=(30, 60, 160))],
    )


def _n_tiles(h5: str) -> int:
    with h5py.File(h5) as f:
        return int(f["coords"].shape[0])


def test_pen_option_reaches_embed_archive(pen_slide, tmp_path):
    removed = wsi.embed_archive([pen_slide], tmp_path / "a", encoder="tiny", progress=False)
    keep = wsi.TileOptions(tissue=wsi.TissueOptions(remove_pen=False))
    kept = wsi.embed_archive(
        [pen_slide], tmp_path / "b", encoder="tiny", tiling=keep, progress=False
    )
    n_removed, n_kept = int(removed[0]["n_tiles"]), int(kept[0]["n_tiles"])
    assert n_removed == 16  # 896 px of tissue at 0.5 µm/px = 4 x 4 tiles of 112 µm
    assert n_kept >= n_removed + 6  # the stroke (350 x 160 µm) counts as tissue
    with h5py.File(tmp_path / "b" / "features" / "tiny" / "pen.h5") as f:
        prov = json.loads(f.attrs["provenance"])
    assert prov["tissue"]["remove_pen"] is False
    assert prov["embed_key"]["tiling"]["tissue"]["remove_pen"] is False


def test_pen_flag_reaches_wsi_tile_and_embed(pen_slide, tmp_path):
    assert main(["tile", str(pen_slide), "--out", str(tmp_path / "t1"), "--quiet"]) == 0
    assert (
        main(["tile", str(pen_slide), "--out", str(tmp_path / "t2"), "--quiet", "--no-remove-pen"])
        == 0
    )
    assert (
        main(
            [
                "embed",
                str(pen_slide),
                "--out",
                str(tmp_path / "e"),
                "--quiet",
                "--encoder",
                "tiny",
                "--no-remove-pen",
                "--min-tissue-area-um2",
                "1000",
            ]
        )
        == 0
    )
    removed = _n_tiles(tmp_path / "t1" / "patches" / "pen.h5")
    kept = _n_tiles(tmp_path / "t2" / "patches" / "pen.h5")
    assert removed == 16 and kept >= removed + 6
    assert int(read_manifest(tmp_path / "e")["pen"]["n_tiles"]) == kept
    with h5py.File(tmp_path / "e" / "patches" / "pen.h5") as f:
        tissue = json.loads(f.attrs["provenance"])["tissue"]
    assert tissue["remove_pen"] is False and tissue["min_tissue_area_um2"] == 1000.0


def test_tissue_option_errors_name_the_option(slide_025):
    slide = wsi.open_slide(slide_025)
    with pytest.raises(wsi.InvalidParameterError, match="remove_pen"):
        wsi.detect_tissue(slide, remove_pens=False)
    with pytest.raises(wsi.InvalidParameterError, match="threshold"):
        wsi.TileOptions(tissue=wsi.TissueOptions(threshold=2.0)).check()
    assert main(["tile", str(slide_025), "--out", "x", "--tissue-threshold", "2"]) == 2


def test_tile_defaults_are_the_options_defaults():
    import inspect

    signature = inspect.signature(wsi.tile).parameters
    options = wsi.TileOptions()
    for name in ("mpp", "size", "overlap", "min_tissue"):
        assert signature[name].default == getattr(options, name)


def test_import_and_cli_help_load_no_heavy_module():
    import subprocess
    import sys

    code = (
        "import sys, wsi, wsi.cli; wsi.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'scipy', 'pandas', 'skimage', 'openslide', 'h5py', "
        "'timm', 'ray', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    assert wsi.__version__ == version("wsi")


def test_cli_head_names_come_from_the_registry(capsys):
    from models.mil import known_heads

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--features", "f", "--labels", "l.csv", "--out", "r", "--model", "nope"])
    assert exit_info.value.code == 2
    assert ", ".join(known_heads()) in capsys.readouterr().err
