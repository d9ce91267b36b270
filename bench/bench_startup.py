"""Start-up time of the entry points: what `--help` costs, and what a real call pays before it
starts its work.

Each measurement is a fresh `python` process, timed from its start to its exit (median of
`--repeats`, after one untimed run that warms the file cache):

  --help        `python ENTRY.py --help`: arguments are parsed before the heavy imports
                (utils.cli.parse_before_imports), so this is Python, argparse and the
                project's light modules
  imports       the entry point's module executed as a library (no arguments parsed, nothing
                run): torch and everything it imports at the top; whether open_clip is among
                them (it is imported only when a CLIP is loaded)
  torch, open_clip  `import torch`, `import open_clip`: the two heaviest imports alone

Usage: python -m bench.bench_startup [--repeats 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import fmt, report
from utils.cli import positive_int

REPO = Path(__file__).resolve().parent.parent
ENTRY_POINTS = ("train", "test", "predict", "export", "demo", "compare")
# Executes an entry point's file as a module that is not __main__ (its imports, no call), then
# says whether open_clip was imported on the way.
IMPORT_ENTRY = (
    "import importlib.util, sys; "
    "spec = importlib.util.spec_from_file_location('entry', sys.argv[1]); "
    "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
    "print('open_clip' in sys.modules)"
)


def wall_time(argv: list[str], repeats: int) -> tuple[float, str]:
    """Median seconds of `repeats` fresh runs of `argv` (after one untimed run), and the last
    run's standard output."""
    times, out = [], ""
    for i in range(repeats + 1):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True)
        if i:
            times.append(time.perf_counter() - start)
        out = done.stdout
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed runs of each")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    python = [sys.executable]
    results: dict[str, dict[str, Any]] = {}
    for name in ENTRY_POINTS:
        script = f"{name}.py"
        help_s, _ = wall_time([*python, script, "--help"], args.repeats)
        import_s, out = wall_time([*python, "-c", IMPORT_ENTRY, script], args.repeats)
        results[name] = {"help_s": help_s, "import_s": import_s, "open_clip": out.strip() == "True"}
    alone = {
        module: wall_time([*python, "-c", f"import {module}"], args.repeats)[0]
        for module in ("torch", "open_clip")
    }
    rows = [
        {
            "entry point": f"{name}.py",
            "--help s": fmt(r["help_s"], ".2f"),
            "imports s": fmt(r["import_s"], ".2f"),
            "imports open_clip": "yes" if r["open_clip"] else "no",
        }
        for name, r in results.items()
    ]
    title = (
        f"Start-up, fresh processes, median of {args.repeats}; import torch alone "
        f"{alone['torch']:.2f} s, import open_clip alone {alone['open_clip']:.2f} s"
    )
    payload = {"repeats": args.repeats, "entry_points": results, "imports_alone_s": alone}
    return report(title, rows, payload, threads=os.cpu_count() or 1, json_path=args.json)


if __name__ == "__main__":
    main()
