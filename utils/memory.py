"""How much memory a computation can still take: predict.py and the benchmarks size work by it."""

from __future__ import annotations

import os

import torch


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes that new allocations can still take on `device` (MemAvailable for the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        # Blocks torch's caching allocator keeps after earlier work are free for new tensors too.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
