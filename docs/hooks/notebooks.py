"""MkDocs hook: notebooks/*.ipynb executed at build time, so the site shows this code's output.

The notebooks run in order in one temporary work folder (03 and 06 reuse the cohort and
features 02 wrote), in fast mode (``WSI_NB_FAST=1``), with a kernel on this interpreter, the
way tests/test_notebooks.py runs them. The executed copies become the site's
``notebooks/*.ipynb`` pages, which mkdocs-jupyter renders (``execute: false`` there).

``mkdocs serve`` executes them once per change of the notebooks or of wsi/ and models/ code.
``WSI_DOCS_EXECUTE=0`` renders the committed notebooks without outputs (a quick look at the
text only; the published site must be built without it).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
NAMES = (
    "01_quickstart",
    "02_batch_embedding",
    "03_finetune_mil",
    "04_tumour_microenvironment",
    "05_survival",
    "06_subgroups",
)
CELL_TIMEOUT_S = 900

_cache: dict[str, dict[str, str]] = {}  # code hash -> executed notebook JSON per name
_pages = Path(tempfile.mkdtemp(prefix="wsi-docs-pages-"))  # the .ipynb files the site renders
atexit.register(shutil.rmtree, _pages, ignore_errors=True)


def _code_hash() -> str:
    """Hash of the notebooks and of every source file whose change can change their output."""
    digest = hashlib.sha256()
    paths = [NOTEBOOKS / f"{n}.ipynb" for n in NAMES]
    for package in ("wsi", "models"):
        paths += sorted((ROOT / package).rglob("*.py"))
    for path in paths:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _execute() -> dict[str, str]:
    """Run the notebooks in order in a fresh folder; their executed JSON per name."""
    import nbclient
    import nbformat
    from ipykernel.kernelspec import write_kernel_spec

    executed = {}
    with tempfile.TemporaryDirectory(prefix="wsi-docs-nb-") as tmp:
        jupyter = Path(tmp) / "jupyter"
        write_kernel_spec(jupyter / "kernels" / "python3")  # this interpreter, not a global one
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        env = {
            "JUPYTER_PATH": str(jupyter),
            "WSI_NB_FAST": "1",
            "WSI_NB_WORKDIR": str(run_dir / "nb_work"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
        saved = {
            k: os.environ.get(k)
            for k in (*env, "WSI_NB_SLIDE", "WSI_NB_SLIDES", "WSI_NB_SLIDE_MPP")
        }
        try:
            for key in ("WSI_NB_SLIDE", "WSI_NB_SLIDES", "WSI_NB_SLIDE_MPP"):
                os.environ.pop(key, None)
            os.environ.update(env)
            for name in NAMES:
                start = time.perf_counter()
                nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
                nbclient.NotebookClient(
                    nb,
                    timeout=CELL_TIMEOUT_S,
                    kernel_name="python3",
                    resources={"metadata": {"path": str(run_dir)}},
                ).execute()
                executed[name] = nbformat.writes(nb)
                print(
                    f"INFO    -  notebook {name} executed in {time.perf_counter() - start:.0f} s",
                    file=sys.stderr,
                )
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return executed


@event_priority(100)  # before mkdocs-jupyter's on_files, which picks up *.ipynb pages
def on_files(files, config):
    """Add notebooks/NAME.ipynb pages: executed copies (or, with WSI_DOCS_EXECUTE=0, as committed)."""
    if os.environ.get("WSI_DOCS_EXECUTE", "1") == "0":
        contents = {n: (NOTEBOOKS / f"{n}.ipynb").read_text() for n in NAMES}
    else:
        key = _code_hash()
        if key not in _cache:
            _cache.clear()
            _cache[key] = _execute()
        contents = _cache[key]
    (_pages / "notebooks").mkdir(exist_ok=True)
    for name, text in contents.items():
        # A real file under a source folder of its own: mkdocs-jupyter reads the notebook
        # from src_dir/src_uri (a File.generated file has no src_dir, which it cannot use).
        src_uri = f"notebooks/{name}.ipynb"
        (_pages / src_uri).write_text(text, encoding="utf-8")
        files.append(
            File(
                src_uri,
                src_dir=str(_pages),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
