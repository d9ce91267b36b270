"""Shared measurement helpers for the bench/ scripts: timing, peak memory, isolation, tables.

Peak memory on CPU is measured inside a fresh process per setting (`run_isolated`), so one
setting's allocator state cannot leak into another's: after the setup (model and inputs built,
one warm-up call) the kernel's high-water mark of resident memory is reset through
/proc/self/clear_refs, and the reported peak is that mark after the timed calls minus the
resident size before them. Where the reset is unavailable, ru_maxrss (peak over the process's
whole life) is used instead and the result says so. On CUDA the allocator reports its own peak
(torch.cuda.max_memory_allocated), so settings share one process; every timed call there ends
with a synchronisation, so the time is the GPU's, not the launch's.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from models import build_model
from utils.cli import positive_int
from utils.config import STRAIGHTFORWARD, Config
from utils.devices import autocast, speed_on
from utils.image import to_model_range

MIB = 2**20

# Model overrides of each compared setting: the straightforward computation, the device's
# defaults ("optimised", utils.config.DEVICE_SPEED), and those with one speed option switched.
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


def model_args(device: torch.device, overrides: dict[str, Any]) -> dict[str, Any]:
    """MixDehazeNet arguments of a setting: the device's speed defaults, then `overrides`."""
    return {**speed_on(Config(), device).network_args(), **overrides}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def time_calls(
    fn: Callable[[], Any], repeats: int, warmup: int = 1, device: torch.device | None = None
) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeats` times timed (each until `device` is
    done)."""
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


def measure_cuda(
    setup: Callable[[], Callable[[], Any]], repeats: int, warmup: int, device: torch.device
) -> dict[str, Any]:
    """`measure` on CUDA, in this process: the allocator's peak during the timed calls minus
    what was allocated before them."""
    call = setup()
    for _ in range(warmup):
        call()
    synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    timing = time_calls(call, repeats, warmup=0, device=device)
    peak = torch.cuda.max_memory_allocated(device)
    return {
        **timing.summary(),
        "peak_mib": (peak - baseline) / MIB,
        "baseline_mib": baseline / MIB,
        "peak_method": "torch.cuda.max_memory_allocated",
    }


def free_cuda_memory() -> None:
    """Give the memory of dropped tensors back, so that the next setting starts empty."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_isolated(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a picklable top-level function in a new interpreter and return its result."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args, **kwargs).result()


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
    info: dict[str, Any] = {
        "cpu": cpu_name(),
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
    print(format_table(rows, list(columns or rows[0]), markdown=False))
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


def inference_call(
    name: str,
    overrides: dict[str, Any],
    hw: tuple[int, int],
    threads: int,
    device: str = "cpu",
    precision: str = "none",
    compiled: bool = False,
) -> Callable[[], None]:
    """One forward pass of a freshly built model on a random (h, w) image, under autocast
    with `precision`."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_model(name, **model_args(dev, overrides)).eval().to(dev)
    run = torch.compile(model) if compiled else model
    hazy = to_model_range(torch.rand(1, 3, *hw, device=dev))
    text = torch.randn(1, 1, 512, device=dev) if model.needs_text else None

    def call() -> None:
        with torch.inference_mode(), autocast(dev, precision):
            run(hazy, text)

    return call
