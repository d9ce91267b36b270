"""What the device in use can do, and the speed settings chosen for it (DEVICE_SPEED)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from utils.config import Config, SpeedSettings, speed_settings

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
    """The speed settings `cfg` asks for on `device` (its defaults for the keys left null)."""
    return speed_settings(cfg, device_kind(device))


def autocast(device: torch.device, amp: str) -> AbstractContextManager:
    """Mixed precision for `amp` ('none', 'fp16', 'bf16'); fp16 only exists on CUDA."""
    if amp == "none" or (amp == "fp16" and device.type != "cuda"):
        return nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)
