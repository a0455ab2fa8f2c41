"""MkDocs hook: pages generated from the code at build time, never edited by hand.

- ``reference/cli.md`` from :func:`wsi.cli.build_parser` (every command, flag, default, help);
- ``reference/api-wsi.md`` and ``reference/api-models.md``: one mkdocstrings block per name
  in ``wsi.__all__`` / ``models.__all__``, pointed at the module that defines it (the package
  tops load their names lazily, so the static analysis would not find them there).

Docstrings are written with Sphinx roles (``:func:`x```); the rendered pages show them as
plain code.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj|py:\w+):(?=<code)")


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (no HTML tags, no column breaks)."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _flag_names(action: argparse.Action) -> str:
    if action.option_strings:
        names = action.option_strings
        if action.nargs != 0:
            metavar = action.metavar or action.dest.upper()
            suffix = f" [{metavar}]" if action.nargs == "?" else f" {metavar}"
            names = [n + suffix for n in names]
        return ", ".join(f"`{n}`" for n in names)
    return f"`{action.metavar or action.dest}`" + (" ..." if action.nargs in ("+", "*") else "")


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.nargs == 0 and isinstance(action.default, bool):
        return "off" if action.default is False else "on"
    if action.default is None or action.default == []:
        return ""
    return f"`{action.default}`"


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    lines = []
    for group in parser._action_groups:
        actions = [
            a
            for a in group._group_actions
            if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        ]
        if not actions:
            continue
        lines += [f"**{group.title}**", "", "| flag | default | meaning |", "|---|---|---|"]
        for action in actions:
            help_text = formatter._expand_help(action) if action.help else ""
            if action.choices:
                help_text += f" (one of: {', '.join(map(str, action.choices))})"
            lines.append(f"| {_flag_names(action)} | {_default(action)} | {_cell(help_text)} |")
        lines.append("")
    return lines


def cli_page() -> str:
    """The command-line reference, from the parser the ``wsi`` command runs."""
    from wsi.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in subparsers._choices_actions}
    lines = [
        "# Command line",
        "",
        "<!-- Generated from wsi.cli.build_parser() by docs/hooks/generated_pages.py. -->",
        "",
        "This page is generated from the `wsi` command's own argument parser each time the",
        "site is built, so it always matches `wsi COMMAND --help` of this version.",
        "",
        "Exit codes: `0` when every slide succeeded (`ok` or `no_tissue`), `1` when some failed",
        "(their manifest rows say why), `2` on usage errors.",
        "",
        "```text",
        parser.format_usage().strip(),
        "```",
        "",
        *_options_table(parser),
    ]
    for name, sub in subparsers.choices.items():
        lines += [
            f"## wsi {name}",
            "",
            _cell(helps.get(name, "")),
            "",
            "```text",
            sub.format_usage().strip(),
            "```",
            "",
            *_options_table(sub),
            *_verb_sections(sub, f"wsi {name}"),
        ]
    return "\n".join(lines) + "\n"


def _verb_sections(parser: argparse.ArgumentParser, prefix: str) -> list[str]:
    """A section per verb of a command group (``wsi tme train-classifier``...)."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    lines: list[str] = []
    for group in groups:
        helps = {c.dest: c.help for c in group._choices_actions}
        for verb, sub in group.choices.items():
            lines += [
                f"### {prefix} {verb}",
                "",
                _cell(helps.get(verb, "")),
                "",
                "```text",
                sub.format_usage().strip(),
                "```",
                "",
                *_options_table(sub),
            ]
    return lines


def _target(package: str, name: str) -> str:
    """Dotted path of the object ``package.name`` in the module that defines it."""
    pkg = importlib.import_module(package)
    lazy = getattr(pkg, "_LAZY", {})
    if name in lazy:
        return f"{lazy[name]}.{name}"
    obj = getattr(pkg, name)
    return f"{obj.__module__}.{obj.__qualname__}"


def api_page(package: str, title: str, intro: str) -> str:
    """One mkdocstrings block per public name of ``package`` (its ``__all__``), in order."""
    pkg = importlib.import_module(package)
    names = list(pkg.__all__)
    errors = [n for n in names if n.endswith("Error")]
    others = [n for n in names if n not in errors]
    lines = [
        f"# {title}",
        "",
        f"<!-- Generated from {package}.__all__ by docs/hooks/generated_pages.py. -->",
        "",
        intro,
        "",
        f"Everything below is importable from the package top: `{package}.NAME`.",
        "",
    ]
    for section, group in (("Functions and classes", others), ("Exceptions", errors)):
        lines += [f"## {section}", ""]
        for name in group:
            lines += [
                f"::: {_target(package, name)}",
                "    options:",
                f'      heading: "{package}.{name}"',
                f'      toc_label: "{name}"',
                "      heading_level: 3",
                "",
            ]
    return "\n".join(lines) + "\n"


WSI_INTRO = (
    "The notebook API: open a slide, find its tissue, tile it at an exact µm/px, embed the\n"
    "tiles, run whole archives, load cohorts of bags and run the training, prediction and\n"
    "heatmap steps the `wsi` command runs. Every error a bad input can cause is a `WsiError`."
)
TME_INTRO = (
    "Tumour micro-environment: the tile tissue classifier and its roles, nuclei and\n"
    "lymphocyte-like cells from a tile's pixels."
)
MODELS_INTRO = (
    "Pure PyTorch: tile encoders and attention-MIL heads, and the training loop over bags of\n"
    "features. It knows nothing of slide files or HDF5."
)


def on_files(files, config):
    """Add the generated pages to the site."""
    pages = {
        "reference/cli.md": cli_page(),
        "reference/api-wsi.md": api_page("wsi", "Python API: wsi", WSI_INTRO),
        "reference/api-models.md": api_page("models", "Python API: models", MODELS_INTRO),
        "reference/api-tme.md": api_page("wsi.tme", "Python API: wsi.tme", TME_INTRO),
    }
    for path, text in pages.items():
        files.append(File.generated(config, path, content=text))
    return files


def on_page_content(html, page, config, files):
    """Sphinx roles in docstrings (``:func:`x```) rendered as the plain code they name."""
    return _ROLE.sub("", html)
