"""ONNX Runtime against predict.py on the CPU: time and peak memory of one image, side by side.

The model (random weights of `--model`, with a randomly initialised CLIP of the paper's
architecture, so the text feature has its 512 entries) is exported by export.py, whose check
runs as usual. Then each engine runs in a fresh process (bench.common.run_isolated): predict.py's
Dehazer with the device's speed settings (DEVICE_SPEED, speed.autotune=false) in its precision
and in fp32, and an ONNX Runtime session of the graph on the CPU. Each times the dehazing of one
random `--size` image, uint8 pixels to the [0, 1] output (CLIP's classification, the same for
both, left out), after one warm-up call; peak memory is what the calls add to the loaded model
(bench.common.measure).

Usage: python -m bench.bench_onnx [--model mixcl-s] [--size 1024] [--repeats 5] [--threads N]
       [--json PATH]
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import add_timing_args, fmt, measure, parse_size, ratio, report, run_isolated
from export import export_onnx
from models import build_model
from predict import Dehazer
from utils.extras import require
from utils.image import uint8_to_tensor

# A random CLIP of the paper's architecture (nothing to download, the paper's text width), and
# the device's table of speed settings rather than a measurement before every run.
OVERRIDES = ["clip.arch=ViT-B-32", "clip.pretrained=null", "speed.autotune=false"]


def load(weights: Path, model: str, precision: str | None = None) -> Dehazer:
    """The Dehazer of the random weights; `precision` None: the device's."""
    return Dehazer.load(weights, model, None, OVERRIDES, precision)


def image(hw: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)


def pytorch_call(weights: Path, model: str, hw: tuple[int, int], precision: str | None):
    dehazer = load(weights, model, precision)
    img = image(hw)
    probs = dehazer.domain_probs(img)
    return lambda: dehazer(img, probs)


def onnx_call(graph: Path, model: str, hw: tuple[int, int], threads: int):
    ort = require("onnxruntime", "bench_onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    img = image(hw)
    domain = {"domain": np.array([[1.0, 0.0]], np.float32)} if len(session.get_inputs()) > 1 else {}
    return lambda: session.run(None, {"hazy": uint8_to_tensor(img)[None].numpy(), **domain})


def run_engine(engine: str, path: Path, model: str, hw, repeats: int, threads: int) -> dict:
    """One engine's measurement ("onnxruntime", "pytorch" or "pytorch-fp32"), in the process
    that calls it (a fresh one)."""
    torch.set_num_threads(threads)
    if engine == "onnxruntime":
        setup = partial(onnx_call, path, model, hw, threads)
    else:
        setup = partial(pytorch_call, path, model, hw, "none" if engine.endswith("fp32") else None)
    return measure(setup, repeats)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mixcl-s")
    parser.add_argument("--size", type=parse_size, default="1024")
    add_timing_args(parser, repeats=5, unit="calls")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        weights, graph = Path(tmp) / "weights.pth", Path(tmp) / "model.onnx"
        torch.manual_seed(0)
        torch.save({"state_dict": build_model(args.model).state_dict()}, weights)
        dehazer = load(weights, args.model)
        export_onnx(dehazer, graph)
        precision = dehazer.precision
        del dehazer
        engines = {
            f"predict.py ({precision})": ("pytorch", weights),
            "predict.py (fp32)": ("pytorch-fp32", weights),
            "ONNX Runtime (fp32)": ("onnxruntime", graph),
        }
        if precision == "none":
            del engines["predict.py (fp32)"]
        measured = (args.model, args.size, args.repeats, args.threads)
        results = {
            name: run_isolated(run_engine, kind, path, *measured)
            for name, (kind, path) in engines.items()
        }
    first = next(iter(results.values()))
    torch_s, torch_mib = first["median_s"], first["peak_mib"]
    rows = [
        {
            "engine": name,
            "median s": fmt(r["median_s"], ".2f"),
            "spread": fmt(r["spread"], ".0%"),
            "peak MiB": fmt(r["peak_mib"], ".0f"),
            "time x predict": fmt(ratio(r["median_s"], torch_s), ".2f"),
            "memory x predict": fmt(ratio(r["peak_mib"], torch_mib), ".2f"),
        }
        for name, r in results.items()
    ]
    h, w = args.size
    title = (
        f"{args.model}, one {w}x{h} image on the CPU, {args.threads} threads, median of "
        f"{args.repeats} (predict.py's precision: {precision}; onnxruntime "
        f"{require('onnxruntime', 'bench_onnx').__version__})"
    )
    payload = {"model": args.model, "size": [h, w], "precision": precision, "results": results}
    return report(title, rows, payload, args.threads, args.json)


if __name__ == "__main__":
    main()
