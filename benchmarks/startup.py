"""Start-up cost: ``import wsi`` and ``wsi --help`` in fresh processes.

Each command runs in its own interpreter, alternating with the others, ``--repeats`` times;
the medians are printed with the bare interpreter's start-up (``python -c pass``) beside them.
``--baseline-tree DIR`` also times a source checkout of another version (e.g. a
``git worktree`` of an older commit) through PYTHONPATH, and prints old ÷ new.

    python benchmarks/startup.py --repeats 5 [--baseline-tree /tmp/old]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "import wsi": ["-c", "import wsi"],
    "wsi --help": ["-m", "wsi.cli", "--help"],
}


def seconds(args: list[str], tree: Path) -> float:
    """Wall time of one fresh interpreter running ``args`` with ``tree`` first on the path
    (run from ``/``: with ``-c`` the working folder would come before PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL, cwd="/")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help="a source checkout of the version to compare with",
    )
    args = parser.parse_args()
    trees = {"this": ROOT} | ({"baseline": args.baseline_tree} if args.baseline_tree else {})
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            for label, tree in trees.items():
                times.setdefault((label, name), []).append(seconds(command, tree))
    for name in COMMANDS:
        ours = statistics.median(times["this", name])
        line = f"{name:16s} {ours:6.2f} s"
        if "baseline" in trees:
            old = statistics.median(times["baseline", name])
            line += f"   baseline {old:6.2f} s   baseline ÷ this {old / ours:5.1f}"
        print(line)


if __name__ == "__main__":
    main()
