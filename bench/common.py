"""Shared measurement helpers for the bench/ scripts: timing, peak memory, isolation, tables.

Peak memory on CPU is measured inside a fresh process per setting (`run_isolated`), so one
setting's allocator state cannot leak into another's: after the setup (model and inputs built,
one warm-up call) the kernel's high-water mark of resident memory is reset through
/proc/self/clear_refs, and the reported peak is that mark after the timed calls minus the
resident size before them. Where the reset is unavailable, ru_maxrss (peak over the process's
whole life) is used instead and the result says so.
"""

from __future__ import annotations

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from models import build_model
from utils.image import to_model_range

MIB = 2**20

# The straightforward computation (the authors' code): three padded depthwise convs, the
# explicit (H*W x D) attention map, the unused text branch computed, NCHW activations, whole
# maps in inference. Every benchmark compares against it.
STRAIGHTFORWARD: dict[str, Any] = {
    "fused_dwconv": False,
    "attention": "explicit",
    "text_branch": True,
    "channels_last": False,
    "strips": False,
}
# Model overrides of each compared setting: the straightforward computation, the defaults
# ("optimised"), and the defaults with one speed option switched.
SPEED_SETTINGS: dict[str, dict[str, Any]] = {
    "straightforward": STRAIGHTFORWARD,
    "optimised": {},
    "-channels_last": {"channels_last": False},
    "-strips": {"strips": False},
    "+fused_dwconv": {"fused_dwconv": True},
    "+explicit": {"attention": "explicit"},
    "+text_branch": {"text_branch": True},
}
INFERENCE_ONLY = ("-strips",)  # strips only act without autograd
FUSION_ONLY = ("+explicit", "+text_branch")  # meaningless for models without text fusion
BASELINE = "straightforward"


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated calls."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median: how far apart the repetitions were."""
        return (max(self.times) - min(self.times)) / self.median

    def summary(self) -> dict[str, float]:
        return {
            "median_s": self.median,
            "min_s": min(self.times),
            "max_s": max(self.times),
            "spread": self.spread,
            "repeats": len(self.times),
        }


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeats` times timed."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Timing(tuple(times))


def current_rss() -> int:
    """Resident memory of this process now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of resident memory (VmHWM); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_rss(after_reset: bool) -> int:
    """Peak resident bytes: VmHWM since the last reset, else ru_maxrss over the process life."""
    if after_reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(
    setup: Callable[[], Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, Any]:
    """Time `setup()`'s returned call and measure the peak memory it adds.

    Run this in a fresh process (`run_isolated`) so the numbers belong to one setting only.
    """
    call = setup()
    for _ in range(warmup):
        call()
    gc.collect()
    baseline = current_rss()
    was_reset = reset_peak_rss()
    timing = time_calls(call, repeats, warmup=0)
    peak = peak_rss(was_reset)
    return {
        **timing.summary(),
        "peak_mib": (peak - baseline) / MIB,
        "baseline_mib": baseline / MIB,
        "peak_method": "VmHWM after reset" if was_reset else "ru_maxrss (not reset)",
    }


def run_isolated(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a picklable top-level function in a new interpreter and return its result."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], markdown: bool) -> str:
    """Rows as an aligned text table or a markdown table (values already formatted)."""
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines)
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def write_json(path: str | Path, payload: Any) -> None:
    """Write benchmark results; dataclasses become dicts."""
    if hasattr(payload, "__dataclass_fields__"):
        payload = asdict(payload)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers were measured on; stored in every JSON result."""
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


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
    print(format_table(rows, list(columns or rows[0]), markdown=False))
    payload = {"machine": machine_info(threads), **payload}
    if json_path:
        write_json(json_path, payload)
    return payload


def inference_call(
    name: str, overrides: dict[str, Any], size: int, threads: int
) -> Callable[[], None]:
    """One fp32 forward pass of a freshly built model on a random size x size image."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(name, **overrides).eval()
    hazy = to_model_range(torch.rand(1, 3, size, size))
    text = torch.randn(1, 1, 512) if model.needs_text else None

    def call() -> None:
        with torch.inference_mode():
            model(hazy, text)

    return call
