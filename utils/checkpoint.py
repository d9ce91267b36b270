"""Checkpoints that describe themselves, are written atomically and prove their integrity.

A checkpoint holds the weights plus the resolved config, so `test.py --ckpt` and
`predict.py --ckpt` rebuild everything from the file alone. Beside every checkpoint lies
`<name>.sha256` (the `sha256sum` format): the digest of the bytes written, checked on every load,
so a truncated, bit-flipped or half-copied file is reported by name instead of loading garbage.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from utils.errors import CheckpointError

FORMAT = "mixcldehazenet-checkpoint"
FORMAT_VERSION = 1
DIGEST_SUFFIX = ".sha256"


class _HashingWriter(io.RawIOBase):
    """A binary file that hashes what is written through it."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self.f, self.sha = f, hashlib.sha256()

    @property
    def name(self) -> str:
        return self.f.name

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha.update(data)
        return self.f.write(data)


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def _write_synced(path: Path, write: Any) -> None:
    """Create `path` (the umask's permissions), `write(f)` into it, then fsync."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def save_atomic(obj: Any, path: str | Path, keep: int = 1) -> None:
    """Write with torch.save to a temporary file beside `path`, fsync, then rename over it;
    its digest goes to `<path>.sha256` the same way.

    A crash, SIGKILL or full disk mid-write leaves the previous file untouched. With `keep` > 1
    the previous files are kept as `<stem>.1<suffix>` (newest) ... `<stem>.<keep-1><suffix>`.
    The file gets the permissions of any other new file (the umask's), like the run folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    tmp = path.parent / f".{path.name}.{token}.tmp"
    tmp_digest = path.parent / f".{path.name}{DIGEST_SUFFIX}.{token}.tmp"
    try:
        hashing: list[_HashingWriter] = []

        def save(f: io.BufferedWriter) -> None:
            hashing.append(_HashingWriter(f))
            torch.save(obj, hashing[0])

        _write_synced(tmp, save)
        line = f"{hashing[0].sha.hexdigest()}  {path.name}\n".encode()
        _write_synced(tmp_digest, lambda f: f.write(line))
        _rotate(path, keep)
        os.replace(tmp, path)
        os.replace(tmp_digest, digest_path(path))
    except BaseException:
        if not tmp.exists() and tmp_digest.exists():  # interrupted between the two renames
            os.rename(tmp_digest, digest_path(path))
        tmp.unlink(missing_ok=True)
        tmp_digest.unlink(missing_ok=True)
        raise


def previous(path: Path, i: int) -> Path:
    """The i-th previous version of `path` kept by save_atomic (i=0: `path` itself)."""
    return path if i == 0 else path.with_name(f"{path.stem}.{i}{path.suffix}")


def _rotate(path: Path, keep: int) -> None:
    """Shift `path` and its kept previous versions (with their digests) one place back."""
    if keep <= 1 or not path.exists():
        return
    for i in range(keep - 2, -1, -1):
        src, dst = previous(path, i), previous(path, i + 1)
        if src.exists():
            os.replace(src, dst)
            if digest_path(src).exists():
                os.replace(digest_path(src), digest_path(dst))
            else:  # an old checkpoint without a digest: no stale digest may remain beside it
                digest_path(dst).unlink(missing_ok=True)
    for stale in path.parent.glob(f"{path.stem}.*{path.suffix}"):  # keep was lowered
        index = stale.name[len(path.stem) + 1 : -len(path.suffix) or None]
        if index.isdigit() and int(index) >= keep:
            stale.unlink()
            digest_path(stale).unlink(missing_ok=True)


def versions(path: Path) -> Iterator[Path]:
    """`path` and its kept previous versions that exist, newest first."""
    i = 0
    while i == 0 or previous(path, i).exists():
        if previous(path, i).exists():
            yield previous(path, i)
        i += 1


def _verified_bytes(path: Path) -> tuple[bytes, bool]:
    """The file's bytes, checked against its digest file; whether it had one."""
    data = path.read_bytes()
    digest_file = digest_path(path)
    if not digest_file.is_file():
        return data, False
    expected = digest_file.read_text().split(maxsplit=1)[:1]
    if expected != [hashlib.sha256(data).hexdigest()]:
        raise CheckpointError(
            f"{path} does not match its digest {digest_file.name} (truncated, corrupted or "
            "half-copied); use an earlier checkpoint or copy it again"
        )
    return data, True


def has_digest(path: str | Path) -> bool:
    return digest_path(Path(path)).is_file()


def read_file(path: str | Path) -> Any:
    """torch.load a file, turning 'missing', 'not a torch file' and 'does not match its digest'
    into one clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    data, _ = _verified_bytes(path)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
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
