"""Checkpoints that describe themselves, are written atomically and prove their integrity.

A checkpoint holds the weights plus the resolved config, so `test.py --ckpt` and
`predict.py --ckpt` rebuild everything from the file alone. Beside every checkpoint lies
`<name>.sha256` (the `sha256sum` format): the digest of the bytes written, checked on every load,
so a truncated, bit-flipped or half-copied file is reported by name instead of loading garbage.

Another process may load a checkpoint at any moment while training replaces it, because

- a path, once written, always names a complete file: files are written beside it, fsynced
  and renamed over it, and kept versions are shifted by hard links (copies where links fail),
  never by renaming the newest one away;
- its digest file always holds that file's digest: before the rename it gets the new digest
  added to the current one, after the rename the new one alone (both renamed in whole);
- a reader keeps both files open while it reads them; bytes that match no digest read are
  damaged only if both paths still name the files read (the inode of an open file is never
  reused, and a path never gets back a file it left), else they were replaced: read again.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from utils.errors import CheckpointError
from utils.files import Temporaries, create_synced

FORMAT = "mixcldehazenet-checkpoint"
FORMAT_VERSION = 1
DIGEST_SUFFIX = ".sha256"
# Reads of a file replaced while it was read, before giving up (each write replaces it once).
READ_ATTEMPTS = 20


class _HashingWriter(io.RawIOBase):
    """A binary file that hashes what is written through it."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self.f, self.sha = f, hashlib.sha256()

    @property
    def name(self) -> str:
        return self.f.name

    def write(self, data: Any) -> int:
        self.sha.update(data)
        return self.f.write(data)


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def _listed(text: str) -> list[str]:
    """The digests of a file in the `sha256sum` format (one `<digest>  <name>` a line)."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _digests(path: Path) -> list[str] | None:
    """The digests in `path`'s digest file (None: it has none, as before digests existed)."""
    try:
        return _listed(digest_path(path).read_text())
    except FileNotFoundError:
        return None


def _put_digests(path: Path, digests: list[str], tmp: Temporaries) -> None:
    """Replace `path`'s digest file (atomically) by one listing `digests`."""
    lines = "".join(f"{d}  {path.name}\n" for d in dict.fromkeys(digests))
    staged = tmp.new(digest_path(path))
    create_synced(staged, lambda f: f.write(lines.encode()))
    os.replace(staged, digest_path(path))


def _install(staged: Path, digests: list[str] | None, path: Path, tmp: Temporaries) -> None:
    """Rename `staged` (a complete file with these digests, None: none) over `path`, the digest
    file listing the digest of whichever of the two `path` names at every instant."""
    current = _digests(path)
    if digests is None:
        digest_path(path).unlink(missing_ok=True)
        os.replace(staged, path)
        return
    if current is not None or not path.exists():
        _put_digests(path, digests + (current or []), tmp)
    os.replace(staged, path)
    _put_digests(path, digests, tmp)


def save_atomic(obj: Any, path: str | Path, keep: int | None = 1) -> None:
    """Write with torch.save to a temporary file beside `path`, fsync, then rename over it;
    its digest goes to `<path>.sha256` the same way.

    A crash, SIGKILL or full disk mid-write leaves the previous file untouched. With `keep` > 1
    the previous files are kept as `<stem>.1<suffix>` (newest) ... `<stem>.<keep-1><suffix>`,
    and older ones removed; `keep=None` touches no file but `path` and its digest (a file
    written for the user, in a folder that may hold anything). The file gets the permissions of
    any other new file (the umask's), like the run folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Temporaries()
    try:
        hashing: list[_HashingWriter] = []

        def save(f: io.BufferedWriter) -> None:
            hashing.append(_HashingWriter(f))
            torch.save(obj, hashing[0])

        staged = tmp.new(path)
        create_synced(staged, save)
        if keep is not None:
            _rotate(path, keep, tmp)
        _install(staged, [hashing[0].sha.hexdigest()], path, tmp)
    finally:
        tmp.remove()


def previous(path: Path, i: int) -> Path:
    """The i-th previous version of `path` kept by save_atomic (i=0: `path` itself)."""
    return path if i == 0 else path.with_name(f"{path.stem}.{i}{path.suffix}")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        with open(src, "rb") as f:
            create_synced(dst, lambda out: shutil.copyfileobj(f, out))


def _rotate(path: Path, keep: int, tmp: Temporaries) -> None:
    """Shift `path` and its kept previous versions (with their digests) one place back."""
    if not path.exists():
        return
    for i in range(keep - 2, -1, -1):
        src, dst = previous(path, i), previous(path, i + 1)
        if src.exists():
            staged = tmp.new(dst)
            _link_or_copy(src, staged)
            _install(staged, _digests(src), dst, tmp)
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


def _still_named(f: IO[Any], path: Path) -> bool:
    """Whether `path` still names the open file `f`."""
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _open_or_none(path: Path) -> IO[bytes] | None:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _verified_bytes(path: Path) -> bytes:
    """The file's bytes, checked against its digest file where it has one."""
    digest_file = digest_path(path)
    for _ in range(READ_ATTEMPTS):
        digests = _open_or_none(digest_file)  # opened first: see the module's docstring
        with open(path, "rb") as f, digests or io.BytesIO():
            data = f.read()
            if digests is None:
                return data
            if hashlib.sha256(data).hexdigest() in _listed(digests.read().decode()):
                return data
            if _still_named(digests, digest_file) and _still_named(f, path):
                raise CheckpointError(
                    f"{path} does not match its digest {digest_file.name} (truncated, "
                    "corrupted or half-copied); use an earlier checkpoint or copy it again"
                )
    raise CheckpointError(
        f"{path} was replaced {READ_ATTEMPTS} times while being read; read it again when "
        "it is written less often"
    )


def has_digest(path: str | Path) -> bool:
    return digest_path(Path(path)).is_file()


def read_file(path: str | Path) -> Any:
    """torch.load a file, turning 'missing', 'not a torch file' and 'does not match its digest'
    into one clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    data = _verified_bytes(path)
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
