"""The synthetic demo cohort: labels, determinism, files the pipeline can tile, and content
whose labels are visible (lymphocyte density follows the immune score; tumour types differ
in architecture).

Measured on the 12-slide painter cohort below (12 tissue windows of 256 px per slide):
lymphocyte-blob pixel fraction vs immune score Spearman 0.94 (0.012-0.020 below score 0.2,
0.10-0.13 above 0.6). Signature statistics (fraction of pixels): lumens 0.027-0.037 in
glandular vs 0 elsewhere; large round nuclei 0.059-0.13 in solid vs <= 0.003; elongated
nuclei 0.055-0.14 in sarcomatoid vs <= 0.019.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from scipy.stats import spearmanr

import wsi
from wsi.errors import InvalidParameterError
from wsi.synthetic.cohort import (
    LABEL_COLUMNS,
    SLIDE_MPP,
    TUMOUR_TYPES,
    SlideSpec,
    cohort_specs,
    painter_for,
    pen_marks_for,
    write_cohort,
    write_labels,
    write_spec,
)

from .conftest import SHARED_DATA

WINDOW = 256
SMALL = (3072, 2560)  # level-0 px: slides for painter-level statistics (no files)


def tissue_windows(spec: SlideSpec, n: int = 12) -> list[np.ndarray]:
    """``n`` level-0 windows of ``spec`` that are (almost) all tissue, picked on a
    thumbnail at downsample 16 (one thumbnail pixel block per window)."""
    painter = painter_for(spec)
    blocks = WINDOW // 16
    rows, cols = spec.height // WINDOW, spec.width // WINDOW
    thumb = painter(0, 0, cols * blocks, rows * blocks, 16)
    glass = (thumb.min(axis=2) > 215).reshape(rows, blocks, cols, blocks).mean(axis=(1, 3))
    candidates = np.argwhere(glass < 0.15)
    assert len(candidates) >= n, f"{spec.slide_id}: only {len(candidates)} tissue windows"
    picks = candidates[np.random.default_rng(0).choice(len(candidates), n, replace=False)]
    return [painter(int(c) * WINDOW, int(r) * WINDOW, WINDOW, WINDOW, 1) for r, c in picks]


def components(mask: np.ndarray, interior: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Area (px) and elongation (major / minor axis) of each connected component of
    ``mask``; ``interior`` drops components touching the border."""
    labels, n = ndi.label(mask)
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1).astype(float)
    yy, xx = np.indices(mask.shape)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=values.ravel(), minlength=n + 1) / np.maximum(area, 1)

    mx, my = mean(xx), mean(yy)
    cxx = mean(xx * xx) - mx**2 + 1 / 12
    cyy = mean(yy * yy) - my**2 + 1 / 12
    cxy = mean(xx * yy) - mx * my
    half_trace = (cxx + cyy) / 2
    disc = np.sqrt(np.maximum(half_trace**2 - (cxx * cyy - cxy**2), 0))
    elongation = np.sqrt((half_trace + disc) / np.maximum(half_trace - disc, 1e-6))
    keep = np.ones(n + 1, bool)
    keep[0] = False
    if interior:
        border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        keep[border] = False
    return area[keep], elongation[keep]


def window_statistics(windows: list[np.ndarray]) -> dict[str, float]:
    """Fractions of pixels in: small round very dark blobs (lymphocytes), small bright
    holes inside tissue (lumens), elongated purple blobs (spindle nuclei), large roundish
    purple blobs that are not very dark (pleomorphic tumour nuclei)."""
    totals = dict.fromkeys(("lymphocytes", "lumens", "spindles", "nuclei"), 0.0)
    for rgb in windows:
        f = rgb.astype(np.float32)
        grey = f.mean(axis=2)
        area, elongation = components(grey < 60)
        totals["lymphocytes"] += area[(area >= 40) & (area <= 220) & (elongation < 1.6)].sum()
        area, _ = components(rgb.min(axis=2) > 200, interior=True)
        totals["lumens"] += area[(area >= 100) & (area <= 4000)].sum()
        purple = f[..., 2] > f[..., 0] + 10
        area, elongation = components(purple & (grey < 130))
        totals["spindles"] += area[(elongation > 2.5) & (area >= 20) & (area <= 400)].sum()
        area, elongation = components(purple & (grey >= 50) & (grey < 130))
        totals["nuclei"] += area[(area >= 120) & (area <= 500) & (elongation < 2.0)].sum()
    pixels = len(windows) * WINDOW * WINDOW
    return {name: value / pixels for name, value in totals.items()}


@pytest.fixture(scope="module")
def painted_cohort() -> list[tuple[SlideSpec, dict[str, float]]]:
    """12 small slides (4 per type, immune scores spread) and their window statistics."""
    specs = cohort_specs(12, 3, size_px=SMALL)
    return [(spec, window_statistics(tissue_windows(spec))) for spec in specs]


@pytest.fixture(scope="module")
def written_slide(tmp_path_factory) -> tuple[SlideSpec, Path]:
    """One default-size slide of the demo cohort, written to disk."""
    spec = cohort_specs(24, 0)[1]
    return spec, write_spec(spec, tmp_path_factory.mktemp("synthetic"))


# --- specs and labels ----------------------------------------------------------------------


def test_default_cohort_is_balanced_with_scores_independent_of_type():
    specs = cohort_specs()
    assert len(specs) == 24
    assert len({s.slide_id for s in specs}) == 24
    types = [s.tumour_type for s in specs]
    assert {t: types.count(t) for t in TUMOUR_TYPES} == dict.fromkeys(TUMOUR_TYPES, 8)
    for kind in TUMOUR_TYPES:
        scores = sorted(s.immune_score for s in specs if s.tumour_type == kind)
        assert scores[0] < 0.2 and scores[-1] > 0.8  # every type spans low to high
        assert 0.35 < np.mean(scores) < 0.65
    assert all(0.0 <= s.immune_score <= 1.0 for s in specs)
    assert sum(not s.immune_known for s in specs) == 1
    for kind in TUMOUR_TYPES:  # pens say nothing about the type
        assert sum(s.pen for s in specs if s.tumour_type == kind) == 3
    assert {s.flavour for s in specs} == {"svs", "tiff"}


def test_some_patients_have_two_slides_of_one_tumour():
    specs = cohort_specs(24, 0)
    by_patient: dict[str, list[SlideSpec]] = {}
    for spec in specs:
        by_patient.setdefault(spec.patient_id, []).append(spec)
    pairs = [group for group in by_patient.values() if len(group) == 2]
    assert max(len(group) for group in by_patient.values()) == 2
    assert len(pairs) == 5  # 19 patients for 24 slides
    for first, second in pairs:
        assert first.tumour_type == second.tumour_type
        assert abs(first.immune_score - second.immune_score) <= 0.05


def test_specs_are_deterministic_given_the_seed():
    assert cohort_specs(24, 0) == cohort_specs(24, 0)
    assert [s.seed for s in cohort_specs(24, 0)] != [s.seed for s in cohort_specs(24, 1)]
    fixed = cohort_specs(6, 0, size_px=(2048, 1536))
    assert all((s.width, s.height) == (2048, 1536) for s in fixed)


@pytest.mark.parametrize(
    "changes",
    [
        {"tumour_type": "papillary"},
        {"immune_score": 1.5},
        {"width": 512},
        {"flavour": "ndpi"},
    ],
)
def test_invalid_spec_is_refused(changes):
    fields = dict(
        slide_id="s",
        patient_id="p",
        tumour_type="solid",
        immune_score=0.5,
        width=2048,
        height=2048,
        seed=1,
    )
    with pytest.raises(InvalidParameterError):
        SlideSpec(**{**fields, **changes})


def test_invalid_cohort_arguments_are_refused(tmp_path):
    with pytest.raises(InvalidParameterError, match="n_slides"):
        cohort_specs(0)
    with pytest.raises(InvalidParameterError, match="paired_fraction"):
        cohort_specs(6, paired_fraction=1.5)
    with pytest.raises(InvalidParameterError, match="workers"):
        write_cohort(tmp_path, 2, workers=0)


def test_labels_csv_has_the_columns_and_leaves_unknown_scores_empty(tmp_path):
    specs = cohort_specs(24, 0)
    path = write_labels(specs, tmp_path / "labels.csv")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == LABEL_COLUMNS
    assert [r["slide_id"] for r in rows] == [s.slide_id for s in specs]
    unknown = [r for r in rows if r["immune_score"] == ""]
    assert len(unknown) == 1
    known = {r["slide_id"]: float(r["immune_score"]) for r in rows if r["immune_score"]}
    for spec in specs:
        if spec.immune_known:
            assert known[spec.slide_id] == pytest.approx(spec.immune_score, abs=5e-4)


def test_pen_marks_only_on_pen_slides():
    specs = cohort_specs(6, 0)
    for spec in specs:
        marks = pen_marks_for(spec)
        assert len(marks) == (2 if spec.pen else 0)
        for mark in marks:
            assert 30 <= mark.width <= 45
            assert 0 <= mark.x0 < spec.width and 0 <= mark.y1 < spec.height


# --- the painter ---------------------------------------------------------------------------


def test_painter_is_a_pure_function_of_position():
    spec = cohort_specs(3, 0, size_px=SMALL)[0]
    painter = painter_for(spec)
    x, y = 1024, 768
    whole = painter(x, y, 512, 512, 1)
    assert whole.dtype == np.uint8 and whole.shape == (512, 512, 3)
    for dy in (0, 256):
        for dx in (0, 256):
            part = painter(x + dx, y + dy, 256, 256, 1)
            np.testing.assert_array_equal(part, whole[dy : dy + 256, dx : dx + 256])
    np.testing.assert_array_equal(painter_for(spec)(x, y, 512, 512, 1), whole)


@pytest.mark.parametrize("kind", TUMOUR_TYPES)
def test_coarse_levels_keep_the_mean_colour_of_level_0(kind):
    spec = next(s for s in cohort_specs(6, 1, size_px=(4096, 3072)) if s.tumour_type == kind)
    painter = painter_for(spec)
    x, y, side = 1536, 1024, 1024
    fine = painter(x, y, side, side, 1).astype(float)
    assert (fine.min(axis=2) > 215).mean() < 0.5  # the window is mostly tissue
    for d, tolerance in ((4, 3.0), (16, 8.0)):
        coarse = painter(x, y, side // d, side // d, d).astype(float)
        assert np.abs(coarse.mean(axis=(0, 1)) - fine.mean(axis=(0, 1))).max() < tolerance


def test_window_past_the_slide_edge_is_glass():
    spec = cohort_specs(3, 0, size_px=SMALL)[0]
    rgb = painter_for(spec)(SMALL[0] + 512, 0, 256, 256, 1).astype(int)
    assert (rgb.min(axis=2) > 225).all()


@pytest.mark.slow
def test_lymphocyte_density_follows_the_immune_score(painted_cohort):
    scores = [spec.immune_score for spec, _ in painted_cohort]
    density = [stats["lymphocytes"] for _, stats in painted_cohort]
    assert spearmanr(scores, density)[0] >= 0.9
    low = [d for s, d in zip(scores, density, strict=True) if s < 0.2]
    high = [d for s, d in zip(scores, density, strict=True) if s > 0.6]
    assert max(low) < 0.03 < 0.06 < min(high)


@pytest.mark.parametrize(
    ("kind", "statistic"),
    [("glandular", "lumens"), ("solid", "nuclei"), ("sarcomatoid", "spindles")],
)
@pytest.mark.slow
def test_each_tumour_type_has_a_signature_texture(painted_cohort, kind, statistic):
    own = [stats[statistic] for spec, stats in painted_cohort if spec.tumour_type == kind]
    others = [stats[statistic] for spec, stats in painted_cohort if spec.tumour_type != kind]
    assert min(own) > 1.5 * max(others)


@pytest.mark.slow
def test_tissue_colours_are_h_and_e_like(painted_cohort):
    """Mean tissue colour is pink-purple (R > B > G), like real H&E tiles."""
    crc = SHARED_DATA / "crc_val_he_7k_32"
    if not crc.is_dir():
        pytest.skip(f"real data not available: {crc}")
    real = np.stack(
        [
            np.asarray(Image.open(path).convert("RGB"), float).mean(axis=(0, 1))
            for path in sorted(crc.glob("*.png"))
            if path.name[:3] in {"TUM", "STR", "LYM", "NORM", "MUS"}
        ]
    )
    spec = painted_cohort[0][0]
    synthetic = np.stack([w.astype(float).mean(axis=(0, 1)) for w in tissue_windows(spec, 6)])
    for colours in (real, synthetic):
        r, g, b = colours.mean(axis=0)
        assert r > b > g
    assert np.abs(synthetic.mean(axis=0) - real.mean(axis=0)).max() < 45


# --- files ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_written_slide_tiles_like_a_scanned_one(written_slide):
    spec, path = written_slide
    assert path.name == spec.file_name
    slide = wsi.open_slide(path)
    assert slide.mpp == pytest.approx(SLIDE_MPP)
    assert slide.dimensions == (spec.width, spec.height)
    assert slide.level_count == 3
    mask = wsi.detect_tissue(slide)
    assert 0.3 < mask.tissue_fraction < 0.6
    grid = wsi.tile(slide, mpp=0.5, size=224, mask=mask)
    assert 100 <= len(grid) <= 250
    tile = grid.read(len(grid) // 2)
    assert tile.shape == (224, 224, 3)
    assert (tile.min(axis=2) > 215).mean() < 0.5


@pytest.mark.slow
def test_write_cohort_is_byte_identical_for_a_seed_serial_or_parallel(tmp_path):
    size = (1024, 1024)
    first, labels = write_cohort(tmp_path / "a", n_slides=2, seed=5, size_px=size, progress=False)
    second, labels_again = write_cohort(
        tmp_path / "b", n_slides=2, seed=5, size_px=size, workers=2, progress=False
    )
    assert [p.name for p in first] == ["synth_000.svs", "synth_001.tiff"]
    assert all(p.parent == tmp_path / "a" / "slides" for p in first)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert labels == tmp_path / "a" / "labels.csv"
    assert labels.read_text() == labels_again.read_text()
    other, _ = write_cohort(tmp_path / "c", n_slides=1, seed=6, size_px=size, progress=False)
    assert other[0].read_bytes() != first[0].read_bytes()
