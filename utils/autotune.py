"""Speed settings measured on the machine in use (`speed.*: auto`), cached per machine and workload.

A fixed table of defaults per kind of device cannot be right everywhere: one CPU ran the
training step 1.45x faster in channels-last, another 1.6x slower. So the first run of a workload
(the network, training or inference, batch and image size) times each candidate setting in this
process: every candidate is built, warmed up, then timed round-robin (one step of each in turn)
so that load from other jobs falls on all alike; the fastest median wins, a candidate that runs
out of memory is dropped. The choice and every time go to a small JSON file whose name and
content carry the key (device name, torch version, threads, workload): a later run with the same
key reads it at no cost, any change (another torch, another GPU) measures again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

WARMUP = 1  # untimed steps of each candidate first (allocations, oneDNN/cuDNN plan choice)
REPEATS = 2  # timed steps of each candidate, round-robin; the median counts
CACHE_VERSION = 1  # bump when what is measured changes, so that old choices are not reused

Setting = dict[str, Any]  # measured SpeedSettings fields, e.g. {"channels_last": True}
StepMaker = Callable[[Setting], Callable[[], Any]]  # a setting -> one step of the workload


@dataclass(frozen=True)
class Tuning:
    """The chosen setting, every candidate's time, and where the choice is cached."""

    choice: Setting
    times: list[dict[str, Any]]  # {"setting": ..., "median_s": ...} or {..., "error": ...}
    seconds: float  # spent measuring, 0 when read from the cache
    cached: bool
    path: Path
    key: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """What a run folder keeps of it (speed.json)."""
        return {
            "choice": self.choice,
            "times": self.times,
            "measuring_s": self.seconds,
            "cached": self.cached,
            "cache_file": str(self.path),
            "key": self.key,
        }


CPUINFO = Path("/proc/cpuinfo")  # Linux; elsewhere the platform module names the CPU


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (/proc/cpuinfo) and architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    lines = CPUINFO.read_text().splitlines() if CPUINFO.is_file() else []
    model = next((n.split(":", 1)[1].strip() for n in lines if n.startswith("model name")), "")
    return f"{model or platform.processor() or 'cpu'} ({platform.machine()})"


def tuning_key(device: torch.device, workload: Mapping[str, Any]) -> dict[str, Any]:
    """What a measured choice holds for: this machine, this torch and `workload`."""
    return {
        "version": CACHE_VERSION,
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        **workload,
    }


def candidates(options: Mapping[str, Sequence[Any]]) -> list[Setting]:
    """Every combination of the options' values, e.g. {"a": (True, False)} -> [{a: T}, {a: F}]."""
    combinations = itertools.product(*options.values())
    return [dict(zip(options, values, strict=True)) for values in combinations]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepare(settings: Sequence[Setting], make_step: StepMaker, device: torch.device) -> list:
    """Each setting's step after its warm-up, or the error that stopped it (out of memory)."""
    steps: list = []
    for setting in settings:
        try:
            step = make_step(setting)
            for _ in range(WARMUP):
                step()
            _synchronize(device)
        except torch.OutOfMemoryError as e:
            step = f"out of memory: {str(e).splitlines()[0]}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        steps.append(step)
    return steps


def measure(
    settings: Sequence[Setting],
    make_step: StepMaker,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict[str, Any]]:
    """Each setting's median step time over REPEATS round-robin rounds (or why it has none)."""
    steps = _prepare(settings, make_step, device)
    times: list[list[float]] = [[] for _ in settings]
    for _ in range(REPEATS):
        for step, spent in zip(steps, times, strict=True):
            if callable(step):
                start = clock()
                step()
                _synchronize(device)
                spent.append(clock() - start)
    return [
        {"setting": s, "median_s": statistics.median(t)} if t else {"setting": s, "error": step}
        for s, t, step in zip(settings, times, steps, strict=True)
    ]


def _read_cache(path: Path, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cached measurement for `key`, or None (absent, unreadable, or another key's)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("key") == key else None


def _write_cache(path: Path, payload: Mapping[str, Any]) -> None:
    """Write atomically, so that a process killed meanwhile or a parallel run leaves no half
    file; a folder that cannot be written only costs measuring again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, path)
    except OSError as e:
        print(f"speed: could not cache the measured choice in {path} ({e.strerror})")


def _describe(setting: Setting) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items())


def _announce(tuning: Tuning, what: str) -> None:
    if tuning.cached:
        print(f"speed: {what}: {_describe(tuning.choice)}, as measured before ({tuning.path})")
        return
    print(f"speed: measured {what} in {tuning.seconds:.1f} s, median step per setting:")
    for t in tuning.times:
        result = f"{t['median_s']:.3f} s" if "median_s" in t else t["error"]
        chosen = "  <- chosen" if t["setting"] == tuning.choice else ""
        print(f"  {_describe(t['setting'])}: {result}{chosen}")
    print(f"speed: choice cached in {tuning.path}")


def tune(
    what: str,
    key: dict[str, Any],
    options: Mapping[str, Sequence[Any]],
    make_step: StepMaker,
    device: torch.device,
    cache_dir: str | Path,
    clock: Callable[[], float] = time.perf_counter,
) -> Tuning:
    """The fastest combination of `options` for the workload `key` describes: read from
    `cache_dir`, or measured (`make_step`) and cached there; printed either way. `what` names
    the workload in the output."""
    key = json.loads(json.dumps({**key, "options": options}))  # as read back: tuples as lists
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{digest}.json"
    cached = _read_cache(path, key)
    if cached is not None:
        tuning = Tuning(cached["choice"], cached["times"], 0.0, True, path, key)
    else:
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            # building the candidates draws weights: the run's random numbers stay untouched
            times = measure(candidates(options), make_step, device, clock)
        timed = [t for t in times if "median_s" in t]
        if not timed:
            raise torch.OutOfMemoryError(f"{what}: no setting fits in memory: {times}")
        choice = min(timed, key=lambda t: t["median_s"])["setting"]
        tuning = Tuning(choice, times, time.perf_counter() - start, False, path, key)
        _write_cache(path, {"key": key, "choice": choice, "times": times})
    _announce(tuning, what)
    return tuning
