"""Running a phase in its autocast precision on a device (utils/speed.py decides the speed
settings, predict.py's precision among them)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def autocast(device: torch.device, amp: str) -> AbstractContextManager:
    """Mixed precision for `amp` ('none', 'fp16', 'bf16'); fp16 only exists on CUDA."""
    if amp == "none" or (amp == "fp16" and device.type != "cuda"):
        return nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)
