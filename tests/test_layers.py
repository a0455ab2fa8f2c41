"""The design in the tree: layers import only downwards, and no module imports in a cycle.

Every run-time ``import`` counts, also those inside functions (lazy imports are still
dependencies).
"""

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = [
    "models",
    "wsi.errors",
    "wsi.io",
    "wsi.options",
    "wsi.store",
    "wsi.viz",
    "wsi.morphology",
    "wsi.tissue",
    "wsi.tiling",
    "wsi.cohort",
    "wsi.synthetic",
    "wsi.tme",
    "wsi.subgroups",
    "wsi.pipeline",
    "wsi.export",
    "wsi.cli",
    "wsi",
]
"""Bottom to top: a module may import its own layer and those before it."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules of this project that ``path`` imports at run time (``if TYPE_CHECKING:``
    blocks are annotations only and do not count)."""
    found: set[str] = set()
    nodes = list(ast.parse(path.read_text(encoding="utf-8")).body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            nodes.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        nodes.extend(ast.iter_child_nodes(node))
    return {name for name in found if name.split(".")[0] in ("wsi", "models")}


def _graph() -> dict[str, set[str]]:
    files = [*ROOT.glob("wsi/**/*.py"), *ROOT.glob("models/**/*.py")]
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        # `from wsi.io.slide import Slide` depends on wsi.io.slide, not on a module "…Slide"
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS.index(best)


def test_layers_import_only_downwards():
    wrong = [
        f"{module} imports {dep}"
        for module, deps in sorted(_graph().items())
        for dep in sorted(deps)
        if _layer(dep) > _layer(module) and not dep.startswith(module + ".")
    ]
    assert wrong == []


def test_models_never_imports_wsi():
    assert [
        m
        for m, deps in _graph().items()
        if m.startswith("models") and any(d.startswith("wsi") for d in deps)
    ] == []


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ importing its own submodules is not a cycle of design
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    try:
        TopologicalSorter(edges).prepare()
    except CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")
