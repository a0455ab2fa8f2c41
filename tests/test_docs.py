"""The documentation: every public name has a docstring, and the site builds without warnings.

The API reference pages are generated from ``wsi.__all__`` and ``models.__all__`` with
mkdocstrings (docs/hooks/generated_pages.py), so a public name without a docstring would be
a blank entry on the site; the fast test below catches it without any docs tools installed.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = [
    (pkg, name)
    for pkg in ("wsi", "models", "wsi.tme")
    for name in importlib.import_module(pkg).__all__
]


def _defining_module(package: str, name: str) -> str:
    """The module ``package.name`` is looked up in, without importing it (no torch)."""
    pkg = importlib.import_module(package)
    return getattr(pkg, "_LAZY", {}).get(name) or getattr(pkg, name).__module__


def _docstring(module_name: str, name: str, depth: int = 0) -> str | None:
    """The docstring of ``name`` in a module's source, read statically: a class's or a
    function's own, or for a constant the string literal right after its assignment (how
    mkdocstrings documents constants). Follows ``from x import name`` re-exports."""
    base = ROOT.joinpath(*module_name.split("."))  # a path, so no package runs (no torch)
    is_package = (base / "__init__.py").is_file()
    path = base / "__init__.py" if is_package else base.with_suffix(".py")
    body = ast.parse(path.read_text(encoding="utf-8")).body
    for i, node in enumerate(body):
        if (
            isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name == name
        ):
            return ast.get_docstring(node)
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else ([node.target] if isinstance(node, ast.AnnAssign) else [])
        )
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            following = body[i + 1] if i + 1 < len(body) else None
            if (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                return following.value.value
            return None
        if (
            isinstance(node, ast.ImportFrom)
            and depth < 5
            and any((a.asname or a.name) == name for a in node.names)
        ):
            original = next(a.name for a in node.names if (a.asname or a.name) == name)
            source = (
                importlib.util.resolve_name(
                    "." * node.level + (node.module or ""),
                    module_name if is_package else module_name.rpartition(".")[0],
                )
                if node.level
                else node.module
            )
            return _docstring(source, original, depth + 1)
    raise AssertionError(f"{name} is not defined in {module_name}")


@pytest.mark.parametrize(("package", "name"), PUBLIC, ids=[f"{p}.{n}" for p, n in PUBLIC])
def test_public_name_has_a_docstring(package: str, name: str) -> None:
    doc = _docstring(_defining_module(package, name), name)
    assert doc and doc.strip(), (
        f"{package}.{name} is public ({package}.__all__) but has no docstring; the API "
        "reference page would show it blank. Add a one-line docstring that says what it is "
        "and its units."
    )


def test_every_public_name_is_in_the_api_reference() -> None:
    hooks = pytest.importorskip("mkdocs", reason="mkdocs not installed: pip install -e '.[docs]'")
    del hooks
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        generated = importlib.import_module("generated_pages")
    finally:
        sys.path.pop(0)
    for package in ("wsi", "models", "wsi.tme"):
        page = generated.api_page(package, "t", "i")
        for name in importlib.import_module(package).__all__:
            assert f'heading: "{package}.{name}"' in page


@pytest.mark.slow
@pytest.mark.timeout(900)  # executes the three notebooks (about 1.5 min on 2 cores)
def test_docs_site_builds_strict(tmp_path: Path) -> None:
    missing = [
        m
        for m in ("mkdocs", "material", "mkdocstrings_handlers", "mkdocs_jupyter", "nbclient")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        pytest.skip(
            f"docs tools not installed ({', '.join(missing)}): "
            "pip install -e '.[docs]' to build the site"
        )
    site = tmp_path / "site"
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    for page in (
        "index.html",
        "reference/cli/index.html",
        "reference/api-wsi/index.html",
        "reference/api-models/index.html",
        "reference/file-formats/index.html",
        "notebooks/01_quickstart/index.html",
        "notebooks/03_finetune_mil/index.html",
    ):
        assert (site / page).is_file(), page
    cli = (site / "reference/cli/index.html").read_text()
    assert "--no-remove-pen" in cli and "--slide-mpp" in cli and "wsi embed" in cli
    api = (site / "reference/api-wsi/index.html").read_text()
    assert "wsi.open_slide" in api and "level-0" in api
    # executed notebooks: their pictures and the numbers they print are in the pages
    quick = (site / "notebooks/01_quickstart/index.html").read_text()
    assert quick.count("data:image/png;base64") >= 5
    assert "features: (" in quick
    print(f"mkdocs build --strict: {seconds:.0f} s")
