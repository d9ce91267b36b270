"""The speed settings a phase runs with on a device: the one place that decides them.

Each setting (SpeedSettings, named as its `speed.*` config key) is decided in this order: the
value the config sets (true/false, a precision) wins; an `auto` one is measured on the machine in
use for the phase's workload and cached (utils/autotune.py); where nothing is measured
(speed.autotune=false, no workload given, speed.compile always) it takes the device's row of
DEVICE_SPEED. Entry points ask `speed_for` (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import torch

from models.registry import SPEED_OPTIONS
from utils.autotune import StepMaker, Tuning, tune, tuning_key
from utils.config import Config, Precision

Phase = Literal["train", "test", "predict"]


@dataclass(frozen=True)
class SpeedSettings:
    """What runs on one device: the `speed.*` keys of the same names, none left auto."""

    channels_last: bool
    strips: bool
    fused_dwconv: bool
    compile: bool
    predict_precision: Precision

    def network_args(self) -> dict[str, bool]:
        """The network arguments among these settings (a backbone takes those its registry
        entry names)."""
        return {k: getattr(self, k) for k in SPEED_OPTIONS}


# The settings, by SpeedSettings (and `speed.*`) name.
SPEED_KEYS = tuple(f.name for f in dataclasses.fields(SpeedSettings))

# The speed defaults of each kind of device, chosen by measurement on one machine
# (docs/PERFORMANCE.md): what an `auto` key takes where nothing is measured (speed.autotune=false,
# and speed.compile always).
DEVICE_SPEED: dict[str, SpeedSettings] = {
    # A 2-core x86 CPU: channels-last made the training step 1.45x faster, strips inference
    # 1.37x faster in 1.8x less memory; the grouped depthwise conv was within noise.
    "cpu": SpeedSettings(
        channels_last=True, strips=True, fused_dwconv=False, compile=False, predict_precision="none"
    ),
    # CPUs with native bf16 (AVX512-BF16 or AMX): bf16 autocast ran mixcl-s 1.5x faster than
    # fp32 at 1024x1024, its outputs at 64 dB PSNR against fp32's.
    "cpu-bf16": SpeedSettings(
        channels_last=True, strips=True, fused_dwconv=False, compile=False, predict_precision="bf16"
    ),
    # Not measured yet: the values before any GPU measurement, until bench/gpu_check.sh has run.
    "cuda": SpeedSettings(
        channels_last=True, strips=True, fused_dwconv=False, compile=False, predict_precision="none"
    ),
}
# The authors' computation, the reference every speed option is measured (bench/) and tested
# against: three padded depthwise convs, the explicit (H*W x D) attention map, the unused text
# branch computed, NCHW activations, whole maps in inference (MixDehazeNet arguments).
STRAIGHTFORWARD: dict[str, bool | str] = {
    "fused_dwconv": False,
    "attention": "explicit",
    "text_branch": True,
    "channels_last": False,
    "strips": False,
}

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


@dataclass(frozen=True)
class Probe:
    """How to measure a phase's workload: the speed options its network takes (`accepted`),
    what the measurement holds for (`workload`, part of the cache key) and its steps."""

    accepted: Collection[str]
    workload: dict[str, Any]
    make_step: StepMaker


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32."""
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in _NATIVE_BF16_PROBES)


def device_kind(device: torch.device) -> str:
    """The row of DEVICE_SPEED that `device` uses: its type, or 'cpu-bf16'."""
    if device.type == "cpu" and cpu_has_native_bf16():
        return "cpu-bf16"
    return device.type


def precisions(device: torch.device) -> tuple[str, ...]:
    """The autocast precisions worth measuring on `device`: emulated bf16 is many times slower."""
    if device.type == "cuda":
        return ("none", "fp16", "bf16")
    return ("none", "bf16") if cpu_has_native_bf16() else ("none",)


def _set_in(cfg: Config) -> dict[str, bool | str]:
    """The speed settings `cfg` fixes (true/false, a precision): those never measured."""
    chosen = dataclasses.asdict(cfg.speed)
    return {k: v for k, v in chosen.items() if k in SPEED_KEYS and v != "auto"}


def table_speed(cfg: Config, kind: str) -> SpeedSettings:
    """The configured speed keys, each `auto` one replaced by the default of the device kind
    `kind` (a row of DEVICE_SPEED)."""
    return dataclasses.replace(DEVICE_SPEED[kind], **_set_in(cfg))


def speed_for(
    cfg: Config, device: torch.device, phase: Phase, probe: Probe | None = None
) -> tuple[SpeedSettings, Tuning | None]:
    """The speed settings `phase` runs with on `device`, and the measurement if one was made or
    read from the cache. The `auto` keys among PHASE_OPTIONS that the network accepts (plus
    predict_precision) are measured with `probe`; without a probe, with speed.autotune=false or
    with nothing left to choose, every `auto` key takes the device's row of DEVICE_SPEED."""
    table = table_speed(cfg, device_kind(device))
    if probe is None:
        return table, None
    fixed = _set_in(cfg)
    auto = [
        k
        for k in PHASE_OPTIONS[phase]
        if k not in fixed and (k in probe.accepted or k == "predict_precision")
    ]
    options = {k: precisions(device) if k == "predict_precision" else (True, False) for k in auto}
    if not cfg.speed.autotune or all(len(v) == 1 for v in options.values()):
        return table, None
    others = {k: v for k, v in dataclasses.asdict(table).items() if k not in options}
    key = tuning_key(device, {"phase": phase, **probe.workload, "fixed": others})
    what = f"{phase} speed of {probe.workload.get('model', 'the network')} on {device.type}"
    tuning = tune(what, key, options, probe.make_step, device, cfg.speed.cache_dir)
    return dataclasses.replace(table, **tuning.choice), tuning


def with_speed(cfg: Config, settings: SpeedSettings, predict: bool = True) -> Config:
    """`cfg` with its speed keys set to `settings`, no `auto` left: how a run ran (config.yaml).
    `predict`: speed.predict_precision too (a training run leaves it to predict.py)."""
    resolved = dataclasses.asdict(settings)
    if not predict:
        del resolved["predict_precision"]
    return dataclasses.replace(cfg, speed=dataclasses.replace(cfg.speed, **resolved))
