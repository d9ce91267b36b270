"""What the bench/ scripts share: the compared settings, timing, peak memory and tables.

Peak memory on CPU is measured in a fresh process per setting (`run_isolated`), so that one
setting's allocator state cannot leak into another's: after the set-up and one warm-up call the
kernel's high-water mark of resident memory is reset through /proc/self/clear_refs, and the peak
is that mark after the timed calls minus the resident size before them. Where the reset is
unavailable, ru_maxrss (the peak over the process's whole life) is used and the result says so.
On CUDA the allocator reports its own peak, so settings share one process; every timed call
there ends with a synchronisation, so the time is the GPU's, not the launch's.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from models.registry import SPEED_OPTIONS, speed_options
from utils.cli import positive_int
from utils.config import Config
from utils.speed import STRAIGHTFORWARD, speed_for

MIB = 2**20
# Model overrides of each compared setting: the straightforward computation, the device's
# table ("optimised", utils.speed.DEVICE_SPEED), and those with one speed option switched.
SPEED_SETTINGS: dict[str, dict[str, Any]] = {
    "straightforward": STRAIGHTFORWARD,
    "optimised": {},
    "-channels_last": {"channels_last": False},
    "-strips": {"strips": False},
    "+fused_dwconv": {"fused_dwconv": True},
    "+explicit": {"attention": "explicit"},
    "+text_branch": {"text_branch": True},
    "+compile": {},
}
INFERENCE_ONLY = ("-strips",)  # strips only act without autograd
FUSION_ONLY = ("+explicit", "+text_branch")  # meaningless for models without text fusion
COMPILED = ("+compile",)  # the defaults under torch.compile
BASELINE = "straightforward"
PRECISIONS = ("none", "fp16", "bf16")  # autocast, as in the config; 'none' is fp32


def add_timing_args(
    parser: argparse.ArgumentParser, repeats: int, unit: str, warmup: bool = False
) -> None:
    """The options every timing script takes: timed `unit`s per setting (--repeats), untimed
    ones before them (--warmup, where the script has them), --threads and --json."""
    parser.add_argument(
        "--repeats", type=positive_int, default=repeats, help=f"timed {unit} per setting"
    )
    if warmup:
        parser.add_argument("--warmup", type=int, default=1, help=f"untimed {unit} per setting")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the results to this JSON file")


def model_args(name: str, device: torch.device, overrides: dict[str, Any]) -> dict[str, Any]:
    """The arguments of model `name` in a setting: the device's speed defaults, then
    `overrides`, less the speed options its constructor does not take (models.registry)."""
    args = {**speed_for(Config(), device, "test")[0].network_args(), **overrides}
    taken = speed_options(name)
    return {k: v for k, v in args.items() if k not in SPEED_OPTIONS or k in taken}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median, extremes and spread ((max - min) / median) of repeated wall-clock seconds."""
    median = statistics.median(times)
    return {
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "spread": (max(times) - min(times)) / median,
        "repeats": len(times),
    }


def time_calls(
    fn: Callable[[], Any], repeats: int, warmup: int = 1, device: torch.device | None = None
) -> list[float]:
    """Seconds of `repeats` calls of `fn` (each until `device` is done), after `warmup` calls."""
    device = device or torch.device("cpu")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of resident memory (VmHWM); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _peak_rss(after_reset: bool) -> int:
    if after_reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(
    setup: Callable[[], Callable[[], Any]],
    repeats: int,
    device: torch.device | None = None,
    include_warmup: bool = False,
) -> dict[str, Any]:
    """Time the call `setup()` returns, after one warm-up call, and the peak memory it adds.

    The peak is that of the timed calls over the memory in use just before them, or with
    `include_warmup` that of the warm-up call and the timed calls over the memory in use with
    the model loaded (so that memory kept between calls counts). On CPU run this in a fresh
    process (`run_isolated`) so that the peak is this setting's.
    """
    device = device or torch.device("cpu")
    call = setup()
    if include_warmup:
        baseline, method = _start_peak(device)
    call()
    synchronize(device)
    gc.collect()
    if not include_warmup:
        baseline, method = _start_peak(device)
    times = time_calls(call, repeats, warmup=0, device=device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _peak_rss(method == "VmHWM after reset")
    return {
        **summarize(times),
        "peak_mib": (peak - baseline) / MIB,
        "baseline_mib": baseline / MIB,
        "peak_method": method,
    }


def _start_peak(device: torch.device) -> tuple[int, str]:
    """The memory in use now, after resetting the peak counter; how the peak will be read."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device), "torch.cuda.max_memory_allocated"
    baseline = _resident_bytes()
    return baseline, "VmHWM after reset" if _reset_peak_rss() else "ru_maxrss (not reset)"


def free_cuda_memory() -> None:
    """Give the memory of dropped tensors back, so that the next setting starts empty."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a picklable top-level function in a new interpreter and return its result."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def ratio(a: float, b: float) -> float | None:
    """a / b, or None where b is not positive (a peak too small to measure, say)."""
    return a / b if b > 0 else None


def fmt(value: float | None, spec: str) -> str:
    """A number for a table; an empty cell for None."""
    return "" if value is None else format(value, spec)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], markdown: bool) -> str:
    """Rows as an aligned text table or a markdown table (values already formatted)."""
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [columns, *cells]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in lines)


def write_json(path: str | Path, payload: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers were measured on; stored in every JSON result."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((n.split(":", 1)[1].strip() for n in lines if n.startswith("model name")), cpu)
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=props.total_memory / 2**30,
            compute_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def report(
    title: str,
    rows: Sequence[dict[str, Any]],
    payload: dict[str, Any],
    threads: int,
    json_path: str | Path | None,
    columns: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Print a benchmark's table under its title; write it with the machine to `json_path`."""
    print(f"\n{title}")
    columns = list(columns or dict.fromkeys(c for row in rows for c in row))
    print(format_table(rows, columns, markdown=False))
    payload = {"machine": machine_info(threads), **payload}
    if json_path:
        write_json(json_path, payload)
    return payload


def parse_size(text: str) -> tuple[int, int]:
    """argparse type: '1024' (square) or 'WxH', e.g. '3840x2160', as (height, width)."""
    width, _, height = text.partition("x")
    return positive_int(height or width), positive_int(width)


def parse_shape(text: str) -> tuple[int, int]:
    """argparse type for a BATCHxPATCH shape such as 4x256."""
    batch, sep, patch = text.partition("x")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected BATCHxPATCH such as 4x256, got {text!r}")
    return positive_int(batch), positive_int(patch)


def size_label(hw: tuple[int, int]) -> str:
    h, w = hw
    return str(w) if h == w else f"{w}x{h}"
