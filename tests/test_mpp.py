import math

import pytest

from wsi.errors import InvalidMppError, MissingMppError
from wsi.io.mpp import resolve_mpp


def test_argument_wins_over_metadata():
    m = resolve_mpp("a.svs", {"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.25"}, 0.5)
    assert (m.x, m.y, m.source) == (0.5, 0.5, "argument")


def test_openslide_mpp_then_tiff_resolution_then_power():
    props = {"openslide.mpp-x": "0.2525", "openslide.mpp-y": "0.2527"}
    m = resolve_mpp("a.svs", props)
    assert m.source == "openslide" and m.mean == pytest.approx(0.2526)
    m = resolve_mpp("a.tif", {"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"})
    assert m.source == "tiff-resolution" and m.x == pytest.approx(0.25)
    m = resolve_mpp("a.tif", {"tiff.XResolution": "101600", "tiff.ResolutionUnit": "inch"})
    assert m.x == pytest.approx(0.25)
    with pytest.warns(UserWarning, match="objective power 20x"):
        m = resolve_mpp("a.svs", {"openslide.objective-power": "20"})
    assert (m.x, m.source) == (0.5, "objective-power")


def test_resolution_without_unit_is_not_a_scale():
    with pytest.raises(MissingMppError, match="a.tif: no mpp in metadata.*--slide-mpp"):
        resolve_mpp("a.tif", {"tiff.XResolution": "72", "tiff.ResolutionUnit": "none"})


@pytest.mark.parametrize("bad", [0, -0.25, math.nan, math.inf, 1e6, "abc"])
def test_absurd_argument(bad):
    with pytest.raises(InvalidMppError, match="a.svs"):
        resolve_mpp("a.svs", {}, bad)


def test_absurd_metadata_names_source_and_fix():
    with pytest.raises(InvalidMppError, match="metadata mpp-x.*mpp="):
        resolve_mpp("a.svs", {"openslide.mpp-x": "0", "openslide.mpp-y": "0"})
    # 72 dpi from an image export: 352.8 µm/px is not a slide scale.
    with pytest.raises(InvalidMppError, match="TIFF resolution"):
        resolve_mpp("a.tif", {"tiff.XResolution": "72", "tiff.ResolutionUnit": "inch"})
