"""What the text fusion costs: fp32 CPU inference time and peak memory, with and without it.

Each setting runs in its own fresh process (bench.common.run_isolated): the model and a random
image are built, one warm-up call is made, then the timed calls run under torch.inference_mode.
Peak memory is the kernel's high-water mark of resident memory during the timed calls minus the
resident size just before them (bench.common.measure), i.e. the memory the forward pass adds on
top of the loaded model and input. On a machine shared with other jobs the minimum time is the
better estimate of the cost itself (interference only ever adds time); both are reported.

Settings:
  mixdehazenet-t     the baseline, no text
  mixcl-t            the paper's concat fusion through scaled_dot_product_attention (default)
  mixcl-t-explicit   the same with the (H*W x D) attention map written out
  mixcl-t-upstream   the straightforward computation (utils.config.STRAIGHTFORWARD; ~4 GB at 1024)

Usage: python -m bench.bench_fusion [--size 1024] [--repeats 3] [--json results.json]
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import torch

from bench.common import inference_call, measure, report, run_isolated
from utils.cli import positive_int
from utils.config import STRAIGHTFORWARD

SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "mixdehazenet-t": ("mixdehazenet-t", {}),
    "mixcl-t": ("mixcl-t", {}),
    "mixcl-t-explicit": ("mixcl-t", {"attention": "explicit"}),
    "mixcl-t-upstream": ("mixcl-t", STRAIGHTFORWARD),
}
DEFAULT_SETTINGS = ("mixdehazenet-t", "mixcl-t", "mixcl-t-explicit")
BASELINE = "mixdehazenet-t"


def run_setting(setting: str, size: int, threads: int, repeats: int) -> dict[str, Any]:
    """Measure one setting; meant to run in a fresh process."""
    name, overrides = SETTINGS[setting]
    return measure(
        partial(inference_call, name, overrides, (size, size), threads), repeats=repeats, warmup=1
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=positive_int, default=1024, help="image side in pixels")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed calls per setting")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    parser.add_argument(
        "--settings", nargs="+", choices=sorted(SETTINGS), default=list(DEFAULT_SETTINGS)
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    results = {
        s: run_isolated(run_setting, s, args.size, args.threads, args.repeats)
        for s in args.settings
    }
    base = results.get(BASELINE)
    rows = []
    for setting, r in results.items():
        row = {
            "setting": setting,
            "median s": f"{r['median_s']:.2f}",
            "min s": f"{r['min_s']:.2f}",
            "spread": f"{100 * r['spread']:.0f}%",
            "peak MiB": f"{r['peak_mib']:.0f}",
        }
        if base:
            r["time_ratio"] = r["median_s"] / base["median_s"]
            r["min_time_ratio"] = r["min_s"] / base["min_s"]
            r["memory_ratio"] = r["peak_mib"] / base["peak_mib"]
            row["time x"] = f"{r['time_ratio']:.2f}"
            row["min time x"] = f"{r['min_time_ratio']:.2f}"
            row["memory x"] = f"{r['memory_ratio']:.2f}"
        rows.append(row)
    title = (
        f"fp32 CPU inference, 1x3x{args.size}x{args.size}, {args.threads} threads, "
        f"median of {args.repeats} (spread = (max - min) / median)"
    )
    payload = {"size": args.size, "repeats": args.repeats, "results": results}
    return report(title, rows, payload, args.threads, args.json)


if __name__ == "__main__":
    main()
