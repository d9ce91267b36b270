"""Inference time and peak memory against image size, per setting and precision, CPU or CUDA.

On CPU each (setting, precision, size) runs in its own fresh process (bench.common.run_isolated;
`--in-process` skips that for quick checks): the model and a random image are built, one
warm-up call is made, then the timed calls run under torch.inference_mode. Peak memory is what
the forward pass adds on top of the loaded model and input (bench.common.measure): on CPU the
high-water mark of resident memory during the timed calls minus the resident size just before
them; on CUDA, where every measurement runs in this process, the allocator's peak. A size that
runs out of GPU memory is recorded as such. "B/px" is
that peak per input pixel (predict.py's memory estimate); "x prev" gives how pixels, time and
memory grew from the previous size (linear growth: time and memory grow as the pixels do). On
CPU a size whose predicted peak (B/px of the previous size) exceeds half the memory available
now is skipped and marked so.

Settings (model arguments, see models.MixDehazeNet):
  straightforward   the authors' computation: separate depthwise convs, explicit attention
                    map, the unused text branch computed, NCHW activations, whole maps
  optimised         the table (utils.speed.DEVICE_SPEED, speed.autotune=false): today
                    channels-last, fused attention kernel, no text branch, row strips
  -channels_last, -strips, +fused_dwconv, +explicit, +text_branch, +compile
                    the defaults with one option changed (at --option-size only)
Sizes are a side ('1024') or WxH ('3840x2160'); precisions are autocast's, 'none' is fp32.
What the text fusion costs: `--models mixdehazenet-t mixcl-t --sizes 1024 --option-size 1024
--settings optimised +explicit` (the network without fusion, with it, and with its attention map
written out).

Usage: python -m bench.bench_inference [--models mixcl-t] [--sizes 256 512 1024 2048]
       [--option-size 512] [--settings ...] [--precisions none] [--device cpu]
       [--repeats 3] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from bench.common import (
    BASELINE,
    COMPILED,
    FUSION_ONLY,
    MIB,
    PRECISIONS,
    SPEED_SETTINGS,
    add_timing_args,
    fmt,
    free_cuda_memory,
    measure,
    model_args,
    parse_size,
    ratio,
    report,
    run_isolated,
    size_label,
    write_json,
)
from models import build_model
from utils.devices import autocast
from utils.image import to_model_range
from utils.memory import available_memory

# Share of the available memory one setting may take: the machine may be shared with others.
MEMORY_MARGIN = 0.5
ALWAYS = (BASELINE, "optimised")  # settings measured at every size


def inference_call(
    name: str, setting: str, hw: tuple[int, int], device: torch.device, precision: str
) -> Callable[[], None]:
    """One forward pass of a freshly built model on a random (h, w) image, under autocast."""
    torch.manual_seed(0)
    model = build_model(name, **model_args(name, device, SPEED_SETTINGS[setting])).eval().to(device)
    run = torch.compile(model) if setting in COMPILED else model
    hazy = to_model_range(torch.rand(1, 3, *hw, device=device))
    text = torch.randn(1, 1, 512, device=device) if model.needs_text else None

    def call() -> None:
        with torch.inference_mode(), autocast(device, precision):
            run(hazy, text)

    return call


def run_setting(
    name: str,
    setting: str,
    hw: tuple[int, int],
    device: str,
    precision: str,
    repeats: int,
    threads: int,
) -> dict[str, Any]:
    """Measure one setting at one size (on CPU in a fresh process); running out of GPU memory
    is a result."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    try:
        return measure(partial(inference_call, name, setting, hw, dev, precision), repeats, dev)
    except torch.OutOfMemoryError as e:
        return {"oom": str(e).splitlines()[0]}
    finally:
        free_cuda_memory()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mixcl-t"])
    parser.add_argument(
        "--sizes", nargs="+", type=parse_size, default=[(n, n) for n in (256, 512, 1024, 2048)]
    )
    parser.add_argument(
        "--option-size", type=parse_size, default="512", help="size for every setting"
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=list(SPEED_SETTINGS),
        default=[s for s in SPEED_SETTINGS if s not in COMPILED],
    )
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["none"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--in-process", action="store_true", help="CPU: no fresh processes")
    add_timing_args(parser, repeats=3, unit="calls")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    results: list[dict[str, Any]] = []
    for name in args.models:
        has_text = build_model(name).needs_text
        settings = [s for s in args.settings if has_text or s not in FUSION_ONLY]
        for setting in settings:
            sizes = args.sizes if setting in ALWAYS else [args.option_size]
            for precision in args.precisions:
                prev: dict[str, Any] | None = None
                for hw in sorted(sizes, key=lambda hw: hw[0] * hw[1]):
                    r = measure_size(name, setting, hw, precision, prev, args)
                    results.append(r)
                    if args.json:  # a later size may not finish: keep what is measured
                        write_json(args.json, {"repeats": args.repeats, "results": results})
                    prev = r if "median_s" in r else None

    rows = table_rows(results)
    title = (
        f"{args.device} inference, batch 1, {args.threads} threads, median of {args.repeats}; "
        "speed-up and memory against straightforward at the same size and precision"
    )
    payload = {"device": args.device, "repeats": args.repeats, "results": results}
    return report(title, rows, payload, args.threads, args.json)


def measure_size(
    name: str,
    setting: str,
    hw: tuple[int, int],
    precision: str,
    prev: dict[str, Any] | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One (setting, size, precision): its timing and memory, or why it has none."""
    pixels = hw[0] * hw[1]
    r: dict[str, Any] = {
        "model": name,
        "setting": setting,
        "size": size_label(hw),
        "pixels": pixels,
        "precision": precision,
    }
    where = f"{name} {setting} {size_label(hw)} {precision}"
    if args.device == "cpu" and prev is not None:
        predicted = prev["bytes_per_pixel"] * pixels
        if predicted > MEMORY_MARGIN * available_memory():
            r["skipped"] = f"predicted peak {predicted / 2**30:.1f} GiB"
            print(f"{where}: skipped ({r['skipped']})", flush=True)
            return r
    run = (name, setting, hw, args.device, precision, args.repeats, args.threads)
    isolated = args.device == "cpu" and not args.in_process
    r.update(run_isolated(run_setting, *run) if isolated else run_setting(*run))
    if "oom" in r:
        print(f"{where}: out of memory", flush=True)
        return r
    r["bytes_per_pixel"] = r["peak_mib"] * MIB / pixels
    if prev is not None:
        r["pixel_growth"] = pixels / prev["pixels"]
        r["time_growth"] = r["median_s"] / prev["median_s"]
        r["memory_growth"] = ratio(r["peak_mib"], prev["peak_mib"])
    print(f"{where}: {r['median_s']:.3f} s, {r['peak_mib']:.0f} MiB", flush=True)
    return r


def table_rows(results: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The printed table; adds each result's ratios against the straightforward setting."""
    by_key = {(r["model"], r["setting"], r["size"], r["precision"]): r for r in results}
    rows = []
    for r in results:
        row = {
            "model": r["model"],
            "setting": r["setting"],
            "size": r["size"],
            "precision": r["precision"],
        }
        if "median_s" not in r:
            row["median s"] = f"skipped: {r['skipped']}" if "skipped" in r else "out of memory"
            rows.append(row)
            continue
        growth = ""
        if "time_growth" in r:
            growth = ", ".join(
                fmt(r[k], ".1f") for k in ("pixel_growth", "time_growth", "memory_growth")
            )
        row.update(
            {
                "median s": f"{r['median_s']:.3f}",
                "min s": f"{r['min_s']:.3f}",
                "spread": f"{100 * r['spread']:.0f}%",
                "peak MiB": f"{r['peak_mib']:.0f}",
                "B/px": f"{r['bytes_per_pixel']:.0f}",
                "x prev (px, t, mem)": growth,
            }
        )
        base = by_key.get((r["model"], BASELINE, r["size"], r["precision"]))
        if base is not None and "median_s" in base:
            r["speedup"] = base["median_s"] / r["median_s"]
            r["min_speedup"] = base["min_s"] / r["min_s"]
            r["memory_ratio"] = ratio(r["peak_mib"], base["peak_mib"])
            row["speed-up"] = f"{r['speedup']:.2f} ({r['min_speedup']:.2f})"
            row["memory x"] = fmt(r["memory_ratio"], ".2f")
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
