"""Inference time and peak memory against image size, fp32 on CPU, per setting.

Each (setting, size) runs in its own fresh process (bench.common.run_isolated): the model and
a random square image are built, one warm-up call is made, then the timed calls run under
torch.inference_mode. Peak memory is the high-water mark of resident memory during the timed
calls minus the resident size just before them (bench.common.measure): what the forward pass
adds on top of the loaded model and input. "B/px" is that peak per input pixel; "x prev"
gives how time and memory grew from the previous size (4x the pixels: linear growth is ~4,
quadratic ~16). A size whose predicted peak (B/px of the previous size) exceeds half the memory
available now is skipped and marked so.

Settings (model arguments, see models.MixDehazeNet):
  straightforward   the authors' computation: separate depthwise convs, explicit attention
                    map, the unused text branch computed, NCHW activations, whole maps
  optimised         the defaults: channels-last, fused attention kernel, no text branch,
                    row strips in the blocks
  -channels_last, -strips, +fused_dwconv, +explicit, +text_branch
                    the defaults with one option changed (at --option-size only)

Usage: python -m bench.bench_inference [--models mixcl-t] [--sizes 256 512 1024 2048]
       [--option-size 512] [--repeats 3] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import torch

from bench.common import (
    BASELINE,
    FUSION_ONLY,
    MIB,
    SPEED_SETTINGS,
    inference_call,
    measure,
    report,
    run_isolated,
)
from models import build_model
from utils.cli import positive_int
from utils.memory import available_memory

SETTINGS: dict[str, dict[str, Any]] = SPEED_SETTINGS
# Share of the available memory one setting may take: the machine may be shared with others.
MEMORY_MARGIN = 0.5


def run_setting(name: str, setting: str, size: int, threads: int, repeats: int) -> dict:
    """Measure one setting at one size; meant to run in a fresh process."""
    return measure(
        partial(inference_call, name, SETTINGS[setting], size, threads), repeats=repeats, warmup=1
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mixcl-t"])
    parser.add_argument("--sizes", nargs="+", type=positive_int, default=[256, 512, 1024, 2048])
    parser.add_argument(
        "--option-size", type=positive_int, default=512, help="size for every setting"
    )
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed calls per setting")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    results: list[dict[str, Any]] = []
    for name in args.models:
        has_text = build_model(name).needs_text
        settings = [s for s in args.settings if has_text or s not in FUSION_ONLY]
        for setting in settings:
            sizes = args.sizes if setting in (BASELINE, "optimised") else [args.option_size]
            prev: dict[str, Any] | None = None
            for size in sorted(sizes):
                r: dict[str, Any] = {"model": name, "setting": setting, "size": size}
                if prev is not None:
                    predicted = prev["bytes_per_pixel"] * size * size
                    if predicted > MEMORY_MARGIN * available_memory():
                        r["skipped"] = f"predicted peak {predicted / 2**30:.1f} GiB"
                        results.append(r)
                        print(f"{name} {setting} {size}: skipped ({r['skipped']})", flush=True)
                        continue
                r.update(run_isolated(run_setting, name, setting, size, args.threads, args.repeats))
                r["bytes_per_pixel"] = r["peak_mib"] * MIB / (size * size)
                if prev is not None:
                    r["time_growth"] = r["median_s"] / prev["median_s"]
                    r["memory_growth"] = r["peak_mib"] / prev["peak_mib"]
                results.append(r)
                prev = r
                print(
                    f"{name} {setting} {size}: {r['median_s']:.2f} s, {r['peak_mib']:.0f} MiB",
                    flush=True,
                )

    by_key = {(r["model"], r["setting"], r["size"]): r for r in results}
    rows = []
    for r in results:
        row = {"model": r["model"], "setting": r["setting"], "size": str(r["size"])}
        if "skipped" in r:
            row["median s"] = f"skipped: {r['skipped']}"
            rows.append(row)
            continue
        growth = f"{r['time_growth']:.1f}, {r['memory_growth']:.1f}" if "time_growth" in r else ""
        row.update(
            {
                "median s": f"{r['median_s']:.2f}",
                "min s": f"{r['min_s']:.2f}",
                "spread": f"{100 * r['spread']:.0f}%",
                "peak MiB": f"{r['peak_mib']:.0f}",
                "B/px": f"{r['bytes_per_pixel']:.0f}",
                "x prev (t, mem)": growth,
            }
        )
        base = by_key.get((r["model"], BASELINE, r["size"]))
        if base is not None and "skipped" not in base:
            r["speedup"] = base["median_s"] / r["median_s"]
            r["min_speedup"] = base["min_s"] / r["min_s"]
            r["memory_ratio"] = r["peak_mib"] / base["peak_mib"]
            row["speed-up"] = f"{r['speedup']:.2f} ({r['min_speedup']:.2f})"
            row["memory x"] = f"{r['memory_ratio']:.2f}"
        rows.append(row)
    columns = list(dict.fromkeys(c for row in rows for c in row))
    title = (
        f"fp32 CPU inference, batch 1, square images, {args.threads} threads, median of "
        f"{args.repeats}; speed-up and memory against straightforward at the same size"
    )
    payload = {"repeats": args.repeats, "results": results}
    return report(title, rows, payload, args.threads, args.json, columns)


if __name__ == "__main__":
    main()
