"""What the device in use can do, and the speed settings chosen for it: measured (utils/autotune.py)
or from the table (DEVICE_SPEED)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch

from utils.autotune import StepMaker, Tuning, tune, tuning_key
from utils.config import Config, SpeedSettings, chosen_speed, speed_settings

Phase = Literal["train", "test", "predict"]
# The settings each phase measures where they are `auto`: fused_dwconv only acts with autograd,
# strips only without, predict.py's precision only there (test.py evaluates in precision.eval).
# The others take the table's value (DEVICE_SPEED), as speed.compile always does.
PHASE_OPTIONS: dict[Phase, tuple[str, ...]] = {
    "train": ("channels_last", "fused_dwconv"),
    "test": ("channels_last", "strips"),
    "predict": ("channels_last", "strips", "predict_precision"),
}

# torch.cpu's probes of the instructions that compute bf16 natively.
_NATIVE_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32."""
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in _NATIVE_BF16_PROBES)


def device_kind(device: torch.device) -> str:
    """The row of DEVICE_SPEED that `device` uses: its type, or 'cpu-bf16'."""
    if device.type == "cpu" and cpu_has_native_bf16():
        return "cpu-bf16"
    return device.type


def speed_on(cfg: Config, device: torch.device) -> SpeedSettings:
    """The speed settings `cfg` fixes, and the table's for `device` where it says `auto`."""
    return speed_settings(cfg, device_kind(device))


def precisions(device: torch.device) -> tuple[str, ...]:
    """The autocast precisions worth measuring on `device`: emulated bf16 is many times slower."""
    if device.type == "cuda":
        return ("none", "fp16", "bf16")
    return ("none", "bf16") if cpu_has_native_bf16() else ("none",)


def tuned_speed(
    cfg: Config,
    device: torch.device,
    phase: Phase,
    accepted: Collection[str],
    workload: dict[str, Any],
    make_step: StepMaker,
) -> tuple[SpeedSettings, Tuning | None]:
    """The speed settings of `phase` on `device`: the `auto` keys among PHASE_OPTIONS that the
    network accepts (`accepted`, plus predict_precision) measured on `workload` by `make_step`
    (or read from the cache), the others as `speed_on`. No measuring with speed.autotune=false
    or nothing left to choose."""
    table = speed_on(cfg, device)
    fixed = chosen_speed(cfg)
    auto = [
        k
        for k in PHASE_OPTIONS[phase]
        if k not in fixed and (k in accepted or k == "predict_precision")
    ]
    options = {k: precisions(device) if k == "predict_precision" else (True, False) for k in auto}
    if not cfg.speed.autotune or all(len(v) == 1 for v in options.values()):
        return table, None
    others = {k: v for k, v in dataclasses.asdict(table).items() if k not in options}
    key = tuning_key(device, {"phase": phase, **workload, "fixed": others})
    what = f"{phase} speed of {workload.get('model', 'the network')} on {device.type}"
    tuning = tune(what, key, options, make_step, device, cfg.speed.cache_dir)
    return dataclasses.replace(table, **tuning.choice), tuning


def autocast(device: torch.device, amp: str) -> AbstractContextManager:
    """Mixed precision for `amp` ('none', 'fp16', 'bf16'); fp16 only exists on CUDA."""
    if amp == "none" or (amp == "fp16" and device.type != "cuda"):
        return nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)
