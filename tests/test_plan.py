"""The one planning step of wsi tile, wsi embed and the Ray runner."""

from dataclasses import replace

from tests import tiny_encoders
from tests.conftest import write_reference_slide
from wsi.pipeline.embed import embed_archive, plan_embedding
from wsi.pipeline.plan import plan_slides
from wsi.pipeline.settings import EmbedSettings
from wsi.tiling import TileOptions

tiny_encoders.register()


def test_duplicates_fail_and_done_slides_are_answered(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
    a = write_reference_slide(tmp_path / "x" / "a.tiff", 0.5, texture=12.0)
    b = write_reference_slide(tmp_path / "x" / "b.tiff", 0.5, texture=12.0)
    dup = write_reference_slide(tmp_path / "y" / "a.tiff", 0.5, texture=12.0)
    out = tmp_path / "out"
    settings = EmbedSettings(encoder="tiny", workers=0, progress=False)

    plan = plan_embedding([a, b, dup], out, settings)
    assert plan.todo == (0, 1) and set(plan.rows) == {2}
    assert "duplicate slide id 'a'" in plan.rows[2]["error"]
    assert repr(plan) == "Plan(3 slides: 2 to do, 0 done, 1 duplicate ids)"

    rows = embed_archive([a, b, dup], out, encoder="tiny", workers=0, progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    plan = plan_embedding([a, b, dup], out, settings)
    assert plan.todo == () and plan.found_done == {0, 1}
    assert [plan.rows[i]["n_tiles"] for i in (0, 1)] == [r["n_tiles"] for r in rows[:2]]
    # another encoder, other tiling options or --redo: to do again
    assert plan_embedding([a, b], out, replace(settings, encoder="tiny_slow")).todo == (0, 1)
    assert plan_embedding([a], out, replace(settings, tiling=TileOptions(size=112))).todo == (0,)
    assert plan_embedding([a], out, replace(settings, skip_done=False)).todo == (0,)


def test_an_unreadable_slide_is_left_to_its_step(tmp_path):
    def raising(path):
        raise OSError("unreadable")

    plan = plan_slides([tmp_path / "gone.svs"], raising)
    assert plan.todo == (0,) and plan.rows == {}


def test_a_file_of_another_width_than_the_preset_is_embedded_again(tmp_path, monkeypatch):
    """Same name, weights and tiling, but the preset's output width changed (CONCH's 768-d
    token became its 512-d image embedding): the old file is not reused."""
    from types import SimpleNamespace

    import models.foundation

    a = write_reference_slide(tmp_path / "a.tiff", 0.5, texture=12.0)
    out = tmp_path / "out"
    settings = EmbedSettings(encoder="tiny", workers=0, progress=False)
    embed_archive([a], out, encoder="tiny", workers=0, progress=False)
    assert plan_embedding([a], out, settings).todo == ()
    assert settings.expected_feature_dim() is None  # not a preset: known only once loaded

    width = EmbedSettings(encoder="tiny").load_encoder().feature_dim
    monkeypatch.setitem(models.foundation.PRESETS, "tiny", SimpleNamespace(feature_dim=width))
    assert plan_embedding([a], out, settings).todo == ()
    monkeypatch.setitem(models.foundation.PRESETS, "tiny", SimpleNamespace(feature_dim=width + 1))
    assert plan_embedding([a], out, settings).todo == (0,)
