"""The notebooks run end to end with their fast settings and show what they promise.

The three run in order in one temporary folder, as a user would run them: 03 reuses the
cohort and features that 02 wrote. The kernel is this interpreter (a kernelspec written
to a temporary JUPYTER_PATH), so a stale global ``python3`` kernelspec cannot interfere,
and it inherits this process's environment (OMP_NUM_THREADS=1 from conftest).
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")
h5py = pytest.importorskip("h5py")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # three notebooks in kernels

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = (
    "01_quickstart",
    "02_batch_embedding",
    "03_finetune_mil",
    "04_tumour_microenvironment",
    "05_survival",
    "06_subgroups",
)
CELL_TIMEOUT_S = 900
ENV_PROBE = "import os\nprint('OMP_NUM_THREADS=' + str(os.environ.get('OMP_NUM_THREADS')))"


def _stdout(nb) -> str:
    """All stdout text and plain-text results of an executed notebook."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                parts.append(out["text"])
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


def _images(nb) -> int:
    """Number of PNG images in the outputs (figures and displayed pictures)."""
    return sum(
        "image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", [])
    )


def _points(nested):
    """The [x, y] pairs of nested GeoJSON coordinate lists (Polygon or MultiPolygon)."""
    if len(nested) == 2 and all(isinstance(v, int | float) for v in nested):
        yield nested
        return
    for item in nested:
        yield from _points(item)


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Run the three notebooks (WSI_NB_FAST=1) in a fresh folder: (work dir, notebooks)."""
    root = tmp_path_factory.mktemp("notebooks")
    jupyter = root / "jupyter"
    kernelspec.write_kernel_spec(jupyter / "kernels" / "python3")
    assert (
        json.loads((jupyter / "kernels" / "python3" / "kernel.json").read_text())["argv"][0]
        == sys.executable
    )
    run_dir = root / "run"
    run_dir.mkdir()
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(jupyter))
        mp.setenv("WSI_NB_FAST", "1")
        mp.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
        for var in ("WSI_NB_WORKDIR", "WSI_NB_SLIDES", "WSI_NB_SLIDE", "WSI_NB_SLIDE_MPP"):
            mp.delenv(var, raising=False)
        for name in NAMES:
            nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
            nb.cells.append(nbformat.v4.new_code_cell(ENV_PROBE))
            client = nbclient.NotebookClient(
                nb,
                timeout=CELL_TIMEOUT_S,
                kernel_name="python3",
                resources={"metadata": {"path": str(run_dir)}},
            )
            client.execute()
            results[name] = nb
    return run_dir / "nb_work", results


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert nb.metadata.kernelspec.name == "python3"
    first = code[0].source
    assert "WSI_NB_WORKDIR" in first and "WSI_NB_FAST" in first


def test_kernel_inherits_single_thread_setting(executed: tuple[Path, dict]) -> None:
    _, notebooks = executed
    expected = os.environ.get("OMP_NUM_THREADS", "1")
    for nb in notebooks.values():
        assert f"OMP_NUM_THREADS={expected}" in _stdout(nb)


def test_quickstart(executed: tuple[Path, dict]) -> None:
    work, notebooks = executed
    text = _stdout(notebooks["01_quickstart"])
    assert "mpp: 0.5 µm/px at level 0 (source: openslide)" in text
    assert "MissingMppError" in text and "with mpp=0.25: 0.25 µm/px, source 'argument'" in text
    n_tiles = int(re.search(r"(\d+) tiles of 224 px at 0.5 µm/px = 112 µm", text).group(1))
    assert n_tiles > 0
    assert re.search(rf"features: \({n_tiles}, 1280\) float32", text)
    # thumbnail, mask, QC picture, patches, PCA map
    assert _images(notebooks["01_quickstart"]) >= 5
    (path,) = work.glob("*_tissue.geojson")
    geojson = json.loads(path.read_text())
    xy = np.array(list(_points([f["geometry"]["coordinates"] for f in geojson["features"]])))
    # polygons in level-0 pixels of the 2048 x 1536 px fast slide
    assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= 2048
    assert xy[:, 1].min() >= 0 and xy[:, 1].max() <= 1536
    assert xy[:, 0].max() - xy[:, 0].min() > 500


def test_batch_embedding(executed: tuple[Path, dict]) -> None:
    work, notebooks = executed
    out = work / "cohort_9_small" / "embed"
    with open(out / "manifest.csv", newline="") as f:
        rows = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert len(rows) == 10
    broken = rows.pop("broken_scan")
    assert broken["status"] == "failed" and "broken_scan.svs" in broken["error"]
    assert {r["status"] for r in rows.values()} == {"ok"}
    for sid, row in rows.items():
        with h5py.File(out / "features" / "efficientnet_lite0" / f"{sid}.h5", "r") as h5:
            assert h5["features"].shape == (int(row["n_tiles"]), 1280)
            assert h5["coords"].shape == (int(row["n_tiles"]), 2)
        assert int(row["n_tiles"]) > 0 and float(row["mpp"]) == 0.5
    text = _stdout(notebooks["02_batch_embedding"])
    assert "neither openslide nor the image fallback can read it" in text
    files = int(re.search(r"(\d+) output files, 0 changed, 0 new", text).group(1))
    assert files >= 4 * 9  # patches, features, qc png + geojson per slide
    assert _images(notebooks["02_batch_embedding"]) >= 1


def test_finetune_mil(executed: tuple[Path, dict]) -> None:
    work, notebooks = executed
    run = work / "cohort_9_small" / "run_abmil"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "abmil" and metrics["folds"] == 2
    tumour, immune = metrics["tasks"]["tumour_type"], metrics["tasks"]["immune_score"]
    assert sorted(tumour["classes"]) == ["glandular", "sarcomatoid", "solid"]
    assert 0.0 <= tumour["auc_macro"] <= 1.0 and 0.0 <= tumour["balanced_accuracy"] <= 1.0
    assert -1.0 <= immune["spearman"] <= 1.0 and immune["mae"] >= 0.0
    with open(run / "predictions.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 9
    assert (run / "model.pt").stat().st_size > 0
    heatmaps = sorted(p.name for p in (run / "heatmaps").glob("*_immune_score.png"))
    assert len(heatmaps) == 2
    text = _stdout(notebooks["03_finetune_mil"])
    assert "auc_macro" in text and "spearman" in text
    assert f"tumour_type: AUC {tumour['auc_macro']:.3f}" in text
    # confusion matrix + scatter figure, two heatmaps, one mosaic
    assert _images(notebooks["03_finetune_mil"]) >= 4


def test_tumour_microenvironment(executed: tuple[Path, dict]) -> None:
    work, notebooks = executed
    if not (work / "tme_demo" / "tme.csv").exists():
        pytest.skip("04 needs ../shared/data (the labelled CRC tiles)")
    with open(work / "tme_demo" / "tme.csv", newline="") as f:
        rows = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert {sid: r["immune_phenotype"] for sid, r in rows.items()} == {
        "desert_0": "desert",
        "excluded_0": "excluded",
        "inflamed_0": "inflamed",
    }
    assert all(r["evaluable"] == "True" for r in rows.values())
    # roles, density and phenotype maps of three slides
    assert _images(notebooks["04_tumour_microenvironment"]) >= 9


def test_subgroups(executed: tuple[Path, dict]) -> None:
    work, notebooks = executed
    run = work / "cohort_9_small" / "subgroups"
    report = json.loads((run / "subgroups.json").read_text())
    assert 2 <= report["k"] <= 4 and report["stability"]["k"] == [2, 3, 4]
    assert {t["test"] for t in report["tests"]} >= {"logrank", "interaction"}
    with open(run / "subgroups.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 9
    text = _stdout(notebooks["06_subgroups"])
    assert "frozen model reproduces 9 of 9 discovery groups" in text
    assert _images(notebooks["06_subgroups"]) >= 3  # stability curve, UMAP, KM


def test_survival(executed: tuple[Path, dict]) -> None:
    work, notebooks = executed
    run = work / "cohort_9_small" / "run_survival"
    entry = json.loads((run / "metrics.json").read_text())["tasks"]["os_months"]
    assert entry["kind"] == "survival" and 0.0 <= entry["c_index"] <= 1.0
    assert (run / "km_os_months.png").stat().st_size > 0
    text = _stdout(notebooks["05_survival"])
    assert f"Harrell's C {entry['c_index']:.3f}" in text and "top-5 tile attention" in text
    assert _images(notebooks["05_survival"]) >= 2  # KM curves, risk vs immune score
