"""Checkpoints that describe themselves and are written atomically.

A checkpoint holds the weights plus the resolved config, so `test.py --ckpt` and
`predict.py --ckpt` rebuild everything from the file alone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "mixcldehazenet-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file is missing, unreadable or not a checkpoint of this project."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write with torch.save to a temporary file beside `path`, fsync, then rename over it.

    A crash, SIGKILL or full disk mid-write leaves the previous file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_file(path: str | Path) -> Any:
    """torch.load a file, turning 'missing' and 'not a torch file' into one clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e}); "
            "pass a .pth written by train.py or a released MixCLDehazeNet/MixDehazeNet file"
        ) from e


def is_project_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by train.py; anything else is a CheckpointError."""
    obj = read_file(path)
    if not is_project_checkpoint(obj):
        raise CheckpointError(
            f"{path} is not a checkpoint written by train.py (no '{FORMAT}' marker); "
            "for the authors' released weights pass --model NAME as well"
        )
    return obj
