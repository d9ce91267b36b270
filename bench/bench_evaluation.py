"""test.py with FADE on a folder of real-sized hazy photos: does scoring overlap the network?

A folder of --images synthetic hazy photos of --size (1024x768, datasets.synthetic) without
ground truth, scored with FADE as real haze is, and two checkpoints of --model with random
weights (released-weights files; a CLIP-guided model gets the repository's tiny random CLIP).
One untimed test.py run fills the CLIP and speed caches; then, per repeat, in this process and
in turn:

  network    the network alone on every image (test.py's network and speed settings, the
             images decoded beforehand)
  metrics    FADE alone on every output and hazy input, in this process, as test.py scored
             them after each forward pass before it had workers
  test.py    `test.py --metrics fade` (FADE in --metric-workers processes) into a fresh results
             folder with a fresh score cache
  in line    the same with --metric-workers 0 (the metrics in this process, after each image)
  second     test.py with the second checkpoint on the same images, the score cache of the
             first run kept: no hazy input is scored again (counted: the cache's entries)

Each test.py run is timed whole (the command) and in its scoring loop (from the first image
to the last row, without loading the network); "x larger" is a time over the larger of network
and metrics: the target for test.py's loop is at most 1.15, where scoring one after the other
gives their sum. The load average of the machine is recorded before and after every run:
other jobs on the cores slow every number.

Usage: python -m bench.bench_evaluation [--images 8] [--size 1024x768] [--model mixcl-t]
       [--workers N] [--repeats 3] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from bench.common import add_timing_args, parse_size, report, summarize
from datasets.synthetic import synthetic_pair
from models import build_model
from utils.clip_domains import embedding_width
from utils.image import from_model_range, write_rgb
from utils.quality import load_metric
from utils.scoring import score

REPO = Path(__file__).resolve().parents[1]
TINY_CLIP = ["clip.arch=tiny-clip", "clip.pretrained=null"]


def load_test() -> ModuleType:
    """test.py, imported by path (the standard library has a `test` package)."""
    spec = importlib.util.spec_from_file_location("bench_test_entry", REPO / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hazy_folder(root: Path, count: int, hw: tuple[int, int]) -> Path:
    """`root/test/hazy/NNNN.png`: `count` synthetic hazy photos of `hw`; returns `root`."""
    rng = np.random.default_rng(0)
    for i in range(count):
        write_rgb(root / "test" / "hazy" / f"{i:04d}.png", synthetic_pair(rng, *hw)[1])
    return root


def checkpoint(model: str, seed: int, path: Path) -> Path:
    """Random weights of `model` saved as released weights are."""
    torch.manual_seed(seed)
    text_dim = embedding_width("tiny-clip") if model.startswith("mixcl") else None
    net = build_model(model, **({"text_dim": text_dim} if text_dim else {}))
    torch.save({"state_dict": net.state_dict()}, path)
    return path


def timed_loop(test: ModuleType) -> list[float]:
    """Seconds of test.py's scoring loop in each later run (its `score_remaining`)."""
    seconds: list[float] = []
    real = test.score_remaining

    def score_remaining(*args: Any) -> Any:
        start = time.perf_counter()
        try:
            return real(*args)
        finally:
            seconds.append(time.perf_counter() - start)

    test.score_remaining = score_remaining
    return seconds


def network_and_metrics(
    test: ModuleType, ckpt: Path, model: str, overrides: list[str], root: Path
) -> tuple[Callable[[], float], Callable[[], float]]:
    """Calls that run the network alone, and FADE alone, on every image as test.py does, and
    return their seconds. The network is built afresh for each call (untimed), as each test.py
    run builds it: one kept for the whole benchmark ran up to 1.7x slower in later calls."""
    dataset = test.PairedDataset(root, "test", "test", ground_truth=False)
    device = test.pick_device()

    def load() -> tuple[Callable, list[tuple]]:
        net, cfg, _ = test.model_from_checkpoint(ckpt, model, None, overrides)
        features, _ = test.split_text_features(cfg.clip, dataset.split_dir, dataset.names)
        samples = []
        for i, name in enumerate(dataset.names):
            text = features[name][None].to(device) if cfg.model.needs_text else None
            samples.append((dataset[i]["hazy"][None].to(device), text))
        return test.inference_network(net, cfg, device), samples

    @torch.no_grad()
    def network() -> float:
        run_net, samples = load()
        start = time.perf_counter()
        for hazy, text in samples:
            run_net(hazy, text)
        return time.perf_counter() - start

    with torch.no_grad():
        run_net, samples = load()
        outputs = [from_model_range(run_net(hazy, text)) for hazy, text in samples]
    fade = {"fade": load_metric("fade", None, torch.device("cpu"))}
    jobs = [("fade", ""), ("fade", "hazy_")]

    def metrics() -> float:
        start = time.perf_counter()
        for out, (hazy, _) in zip(outputs, samples, strict=True):
            score(fade, jobs, {"": out, "hazy_": from_model_range(hazy)}, None)
        return time.perf_counter() - start

    return network, metrics


def _run(fn: Callable[[], Any], loads: list[float]) -> float:
    """Seconds of `fn()`: those it returns, or the whole call's."""
    loads.append(os.getloadavg()[0])
    start = time.perf_counter()
    measured = fn()
    seconds = time.perf_counter() - start
    loads.append(os.getloadavg()[0])
    return measured if isinstance(measured, float) else seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=parse_size, default="1024x768", help="WxH")
    parser.add_argument("--model", default="mixcl-t")
    parser.add_argument("--workers", type=int, default=1, help="test.py --metric-workers")
    add_timing_args(parser, repeats=3, unit="runs of each")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    test = load_test()
    loops = timed_loop(test)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        root = hazy_folder(tmp_path / "photos", args.images, args.size)
        first, second = (checkpoint(args.model, s, tmp_path / f"ckpt{s}.pth") for s in (1, 2))
        overrides = [f"clip.cache_dir={tmp_path / 'clip'}", f"speed.cache_dir={tmp_path / 'sp'}"]
        if args.model.startswith("mixcl"):
            overrides += TINY_CLIP
        runs = iter(range(10**6))

        def evaluate(ckpt: Path, workers: int, cache: str) -> Callable[[], None]:
            out = tmp_path / f"out{next(runs)}"
            argv = ["--ckpt", str(ckpt), "--model", args.model, "--data-dir", str(root)]
            argv += ["--out", str(out), "--metrics", "fade", "--metric-workers", str(workers)]
            return lambda: test.main([*argv, "--score-cache", str(tmp_path / cache), *overrides])

        evaluate(first, args.workers, "warm-up")()  # the CLIP and speed caches, the JIT
        loops.clear()
        network, metrics = network_and_metrics(test, first, args.model, overrides, root)
        times: dict[str, list[float]] = {k: [] for k in ("network", "metrics")}
        loads: list[float] = []
        entries = []
        for r in range(args.repeats):
            for label, fn in (
                ("test.py", evaluate(first, args.workers, f"scores{r}")),
                ("in line", evaluate(first, 0, f"in-line{r}")),
                ("second", evaluate(second, args.workers, f"scores{r}")),
                ("network", network),
                ("metrics", metrics),
            ):
                before = len(list((tmp_path / f"scores{r}").rglob("*.json")))
                times.setdefault(label, []).append(_run(fn, loads))
                if label == "second":
                    entries.append(len(list((tmp_path / f"scores{r}").rglob("*.json"))) - before)
                print(f"repeat {r + 1}, {label}: {times[label][-1]:.1f} s", flush=True)
        loop_times = {
            label: loops[i::3] for i, label in enumerate(("test.py", "in line", "second"))
        }
    return _report(args, times, loop_times, loads, entries)


def _report(
    args: argparse.Namespace,
    times: dict[str, list[float]],
    loops: dict[str, list[float]],
    loads: list[float],
    entries: list[int],
) -> dict[str, Any]:
    median = {k: statistics.median(v) for k, v in times.items()}
    larger = max(median["network"], median["metrics"])
    rows = []
    for label in ("network", "metrics", "in line", "test.py", "second"):
        loop = statistics.median(loops[label]) if label in loops else median[label]
        rows.append(
            {
                "run": label,
                "whole s (median)": f"{median[label]:.1f}",
                "loop s (median)": f"{loop:.1f}",
                "loop x larger": f"{loop / larger:.2f}",
                "loop x sum": f"{loop / (median['network'] + median['metrics']):.2f}",
            }
        )
    w, h = args.size[1], args.size[0]
    title = (
        f"test.py --metrics fade, {args.images} images of {w}x{h}, {args.model}, "
        f"{args.workers} FADE worker(s), median of {args.repeats}; load average "
        f"{min(loads):.1f}-{max(loads):.1f}; hazy scores computed by the second checkpoint's "
        f"runs: {entries}"
    )
    payload = {
        "images": args.images,
        "size": f"{w}x{h}",
        "model": args.model,
        "workers": args.workers,
        "times": {k: summarize(v) for k, v in times.items()},
        "loops": {k: summarize(v) for k, v in loops.items()},
        "load_average": {"min": min(loads), "max": max(loads), "all": loads},
        "hazy_scored_by_second": entries,
    }
    return report(title, rows, payload, args.threads, args.json)


if __name__ == "__main__":
    main()
