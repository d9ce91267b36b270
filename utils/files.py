"""Files written for the user: complete at every instant, never through a link, never over a
file the user did not ask to replace.

Every file is written to a hidden temporary file beside its target (same file system), fsynced
and renamed over the target: another process sees the old file or the new one, never a part;
a crash leaves the old one; and the rename replaces a symbolic link at the target instead of
writing where it points, so nothing outside the chosen folder is written.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO


class Temporaries:
    """Hidden files beside the targets, named `.<target>.<token>.<n>.tmp` (nothing globbing for
    the targets picks one up that a SIGKILL left behind), removed by `remove`."""

    def __init__(self) -> None:
        self.token, self.paths = secrets.token_hex(4), []

    def new(self, target: Path) -> Path:
        self.paths.append(target.parent / f".{target.name}.{self.token}.{len(self.paths)}.tmp")
        return self.paths[-1]

    def remove(self) -> None:
        for path in self.paths:
            path.unlink(missing_ok=True)


def create_synced(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create `path`, which must not exist (the umask's permissions), `write(f)` into it, then
    fsync."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(target: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write `target` through a temporary file beside it, then rename it into place (replacing
    whatever `target` named, a link included, never its destination). Creates parent folders."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Temporaries()
    try:
        staged = tmp.new(target)
        create_synced(staged, write)
        os.replace(staged, target)
    finally:
        tmp.remove()


def existing(paths: Iterable[Path]) -> list[Path]:
    """The paths that name something, a dangling link included (`Path.exists` follows links)."""
    return [p for p in paths if os.path.lexists(p)]


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read in blocks."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
    return sha.hexdigest()


def escape_name(name: str) -> str:
    """A file name as valid UTF-8 text for a table: a byte of the name that is not UTF-8 (Python's
    surrogate escape) as `\\xNN`, a backslash doubled; other names are unchanged.
    `unescape_name` gives the name back."""
    doubled = name.replace("\\", "\\\\")
    return doubled.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unescape_name(text: str) -> str:
    """The file name that `escape_name` wrote as `text`."""
    raw = re.sub(
        rb"\\(\\|x([0-9a-f]{2}))",
        lambda m: b"\\" if m[2] is None else bytes([int(m[2], 16)]),
        text.encode("utf-8"),
    )
    return raw.decode("utf-8", "surrogateescape")
