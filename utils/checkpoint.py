"""Checkpoints that describe themselves and are written atomically.

A checkpoint holds the weights plus the resolved config, so `test.py --ckpt` and
`predict.py --ckpt` rebuild everything from the file alone.
"""

from __future__ import annotations

import os
import pickle
import re
import secrets
from pathlib import Path
from typing import Any

import torch

from utils.errors import CheckpointError

FORMAT = "mixcldehazenet-checkpoint"
FORMAT_VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write with torch.save to a temporary file beside `path`, fsync, then rename over it.

    A crash, SIGKILL or full disk mid-write leaves the previous file untouched. The file gets
    the permissions of any other new file (the umask's), like the rest of the run folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
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
        unsafe = isinstance(e, pickle.UnpicklingError)
        found = re.search(r"GLOBAL (\S+)", str(e)) if unsafe else None
        what = (
            f"holds Python objects ({found[1]}) that are not loaded, for safety"
            if found
            else "is not a readable PyTorch checkpoint (truncated or another kind of file)"
        )
        raise CheckpointError(
            f"{path} {what}; pass a .pth written by train.py or released MixCLDehazeNet or "
            "MixDehazeNet weights"
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
