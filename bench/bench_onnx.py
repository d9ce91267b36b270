"""predict.py against ONNX Runtime on the CPU: time, peak memory and share of the machine's
matmul throughput for one image, side by side.

Each case is a model and an image size (default: mixcl-t at 512, 1024 and 2048, mixcl-s at
1024). Its random weights (with a randomly initialised CLIP of the paper's architecture, so the
text feature has its 512 entries) are exported by export.py, whose check runs as usual. Then
each engine runs in a fresh process (bench.common.run_isolated):

  predict.py (fp32)     predict.py's Dehazer in fp32 (speed.predict_precision=none), its other
                        speed settings as `auto` chooses them on this machine
  predict.py (default)  the Dehazer as predict.py runs it: every `speed.*` key `auto`
  ONNX Runtime (fp32)   a session of the exported graph on the CPU provider

`auto` measures at first use (utils/autotune.py); this script makes those measurements once per
case in a fresh cache folder before the timed processes, which read them. Each engine times the
dehazing of one random image, uint8 pixels to the [0, 1] output (CLIP's classification, the
same for all, left out), after one warm-up call. Peak memory is the high-water mark of resident
memory from the warm-up call to the last timed call, minus the resident size with the model
loaded (bench.common.measure with `include_warmup`): memory an engine keeps between calls, such
as ONNX Runtime's arena, counts. An engine whose peak, predicted from its largest earlier case
of the same model (resident size plus peak per pixel), exceeds half the memory available is
skipped and marked so (ONNX Runtime at 2048x2048 on a 23 GiB machine).

Share of matmul: the model's FLOPs (bench.params.count_macs at the image's size, 2 FLOPs per
MAC) per second of the engine, over the FLOPs per second of a 4096x4096 fp32 torch.matmul on
the same threads (its own process, median of 5 after one warm-up).

Usage: python -m bench.bench_onnx [--cases mixcl-t:512 mixcl-s:1024 ...] [--repeats 3]
       [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    MIB,
    add_timing_args,
    fmt,
    measure,
    parse_size,
    ratio,
    report,
    run_isolated,
    size_label,
    time_calls,
)
from bench.params import count_macs
from export import export_onnx
from models import build_model
from predict import Dehazer
from utils.extras import require
from utils.image import uint8_to_tensor
from utils.memory import available_memory

# A random CLIP of the paper's architecture (nothing to download, the paper's text width).
CLIP = ["clip.arch=ViT-B-32", "clip.pretrained=null"]
FP32 = "speed.predict_precision=none"
ENGINES = ("predict.py (fp32)", "predict.py (default)", "ONNX Runtime (fp32)")
DEFAULT_CASES = ("mixcl-t:512", "mixcl-t:1024", "mixcl-t:2048", "mixcl-s:1024")
MATMUL_SIDE = 4096
MEMORY_MARGIN = 0.5  # share of the available memory one engine may take (a shared machine)


def parse_case(text: str) -> tuple[str, tuple[int, int]]:
    """argparse type: MODEL:SIZE, e.g. mixcl-t:1024 or mixcl-s:3840x2160."""
    model, sep, size = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected MODEL:SIZE such as mixcl-t:1024, got {text!r}")
    return model, parse_size(size)


def load(weights: Path, model: str, overrides: list[str]) -> Dehazer:
    return Dehazer.load(weights, model, None, [*CLIP, *overrides])


def image(hw: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)


def pytorch_call(weights: Path, model: str, hw: tuple[int, int], overrides: list[str]):
    dehazer = load(weights, model, overrides)
    img = image(hw)
    probs = dehazer.domain_probs(img)
    return lambda: dehazer(img, probs)


def onnx_call(graph: Path, hw: tuple[int, int], threads: int):
    ort = require("onnxruntime", "bench_onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    img = image(hw)
    domain = {"domain": np.array([[1.0, 0.0]], np.float32)} if len(session.get_inputs()) > 1 else {}
    return lambda: session.run(None, {"hazy": uint8_to_tensor(img)[None].numpy(), **domain})


def run_engine(
    engine: str, path: Path, model: str, hw, overrides: list[str], repeats: int, threads: int
) -> dict:
    """One engine's measurement, in the process that calls it (a fresh one), with the load
    average (1 minute) of the machine before and after it."""
    torch.set_num_threads(threads)
    if engine.startswith("ONNX"):
        setup = partial(onnx_call, path, hw, threads)
    else:
        setup = partial(pytorch_call, path, model, hw, overrides)
    load = os.getloadavg()[0]
    return {**measure(setup, repeats, include_warmup=True), "load": [load, os.getloadavg()[0]]}


def matmul_gflops(threads: int) -> float:
    """fp32 FLOPs per second of a MATMUL_SIDE-square torch.matmul, in GFLOPS (fresh process)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(MATMUL_SIDE, MATMUL_SIDE), torch.randn(MATMUL_SIDE, MATMUL_SIDE)
    seconds = statistics.median(time_calls(lambda: a @ b, repeats=5))
    return 2 * MATMUL_SIDE**3 / seconds / 1e9


def predicted_bytes(earlier: list[dict[str, Any]], engine: str, model: str, pixels: int) -> int:
    """The whole process's peak for `pixels`, from the engine's largest earlier case of the same
    model: its resident size with the model loaded plus its peak per pixel, scaled (0 without
    one)."""
    sizes = [c for c in earlier if c["model"] == model and engine in c["results"]]
    if not sizes:
        return 0
    case = max(sizes, key=lambda c: c["size"][0] * c["size"][1])
    r = case["results"][engine]
    per_pixel = r["peak_mib"] * MIB / (case["size"][0] * case["size"][1])
    return int(r["baseline_mib"] * MIB + per_pixel * pixels)


def run_case(
    model: str, hw: tuple[int, int], args: argparse.Namespace, earlier: list[dict[str, Any]]
) -> dict[str, Any]:
    """Export the case's random weights, make auto's measurements, time every engine whose
    predicted peak (from `earlier` cases) fits in MEMORY_MARGIN of the memory available."""
    with tempfile.TemporaryDirectory() as tmp:
        weights, graph = Path(tmp) / "weights.pth", Path(tmp) / "model.onnx"
        torch.manual_seed(0)
        torch.save({"state_dict": build_model(model).state_dict()}, weights)
        cache = f"speed.cache_dir={Path(tmp) / 'speed'}"
        overrides = {ENGINES[0]: [cache, FP32], ENGINES[1]: [cache]}
        chosen = {}
        for engine, extra in overrides.items():  # auto's measurement, cached for the engines
            dehazer = load(weights, model, extra)
            chosen[engine] = {"precision": dehazer.precision, **asdict(dehazer.cfg.speed)}
        export_onnx(dehazer, graph)
        del dehazer
        paths = {ENGINES[0]: weights, ENGINES[1]: weights, ENGINES[2]: graph}
        results, skipped = {}, {}
        for engine, path in paths.items():
            need = predicted_bytes(earlier, engine, model, hw[0] * hw[1])
            if need > MEMORY_MARGIN * available_memory():
                skipped[engine] = f"predicted peak {need / 2**30:.1f} GiB"
                print(f"{model} {size_label(hw)} {engine}: skipped ({skipped[engine]})")
                continue
            extra = overrides.get(engine, [])
            results[engine] = run_isolated(
                run_engine, engine, path, model, hw, extra, args.repeats, args.threads
            )
    return {
        "model": model,
        "size": list(hw),
        "speed": chosen,
        "results": results,
        "skipped": skipped,
    }


def rows(case: dict[str, Any], gflops: float) -> list[dict[str, str]]:
    model, (h, w) = case["model"], case["size"]
    flops = 2 * count_macs(model, (h, w))
    results = case["results"]
    onnx, fp32 = results.get(ENGINES[2], {}), results.get(ENGINES[0], {})
    table = []
    for engine in ENGINES:
        precision = case["speed"].get(engine, {}).get("precision", "none")
        row = {
            "model": model,
            "size": size_label((h, w)),
            "engine": engine if engine != ENGINES[1] else f"{engine}, {precision}",
        }
        if engine not in results:
            table.append({**row, "median s": f"skipped: {case['skipped'][engine]}"})
            continue
        r = results[engine]
        table.append(
            {
                **row,
                "median s": fmt(r["median_s"], ".2f"),
                "spread": fmt(r["spread"], ".0%"),
                "peak MiB": fmt(r["peak_mib"], ".0f"),
                "B/px": fmt(r["peak_mib"] * 2**20 / (h * w), ".0f"),
                "time x ONNX Runtime": fmt(ratio(r["median_s"], onnx.get("median_s", 0)), ".2f"),
                "memory x predict fp32": fmt(ratio(r["peak_mib"], fp32.get("peak_mib", 0)), ".2f"),
                "share of matmul": fmt(flops / r["median_s"] / (gflops * 1e9), ".0%"),
                "load": "{:.1f}-{:.1f}".format(*r["load"]),
            }
        )
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=parse_case, nargs="+", default=DEFAULT_CASES)
    add_timing_args(parser, repeats=3, unit="calls")
    args = parser.parse_args(argv)
    args.cases = [parse_case(c) if isinstance(c, str) else c for c in args.cases]
    torch.set_num_threads(args.threads)

    gflops = run_isolated(matmul_gflops, args.threads)
    cases: list[dict[str, Any]] = []
    for model, hw in args.cases:
        cases.append(run_case(model, hw, args, cases))
    table = [row for case in cases for row in rows(case, gflops)]
    ort = require("onnxruntime", "bench_onnx").__version__
    title = (
        f"One image on the CPU, {args.threads} threads, median of {args.repeats} calls; "
        f"onnxruntime {ort}; {MATMUL_SIDE}x{MATMUL_SIDE} fp32 matmul: {gflops:.0f} GFLOPS"
    )
    payload = {"onnxruntime": ort, "matmul_gflops": gflops, "cases": cases}
    return report(title, table, payload, args.threads, args.json)


if __name__ == "__main__":
    main()
