"""test.py's results folder: an evaluation that loses nothing and replaces nothing of the user's.

The results are `per_image.csv`, `metrics.json`, `images/*.png` (with --save-images) and
`manifest.json`, the files test.py wrote there with their sha256. While an evaluation runs, its
state is in the hidden folder `.in_progress/`, which belongs to test.py:

- `evaluation.json`, what is evaluated (`identity`: the checkpoint's sha256, the config less
  the keys that only say how files are read, such as cache folders, the metrics and their
  versions, the split and its files): progress of another evaluation is never mixed in;
- `rows.<rank>.jsonl`, one scored image a line, appended and flushed as it is scored, so a
  kill, a crash or an out-of-memory loses at most the images being scored;
- `images/`, the dehazed PNGs, staged there so that earlier results stay whole until the new
  ones are complete.

`finish` then installs the results: the staged PNGs renamed into `images/`, `per_image.csv` and
`metrics.json` written (each through a temporary file and a rename), the files of the earlier
results that the new ones do not replace removed if they still hold what test.py wrote (a
user's file is never removed), `.in_progress/` removed. Every step can be repeated, so the same
command after a fault at any point ends with the results an uninterrupted run writes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from utils.config import READING, flatten, role_of
from utils.errors import OutputError, OutputExistsError
from utils.files import escape_name, existing, file_sha256, write_atomic
from utils.image import write_rgb

PROGRESS = ".in_progress"
IDENTITY = "evaluation.json"
FINISHING = "finishing"  # written when every image is scored, before the results are installed
MANIFEST = "manifest.json"
TABLES = ("per_image.csv", "metrics.json")


def identity(
    checkpoint: Path,
    config: dict,
    metrics: dict[str, str],
    split_dir: Path,
    folders: Sequence[str],
    names: Sequence[str],
    labels: Path | None,
    save_images: bool,
) -> dict[str, Any]:
    """What an evaluation is of, as JSON data: the checkpoint's sha256, the resolved config (by
    dotted key, less the keys that only say how files are read: another cache folder is the same
    evaluation), {metric: version}, the split, its files (name, size and modification time of
    each file in `folders`), the labels file's sha256 and whether images are saved."""
    files = hashlib.sha256()
    for name in names:
        for sub in folders:
            st = (split_dir / sub / name).stat()
            line = f"{sub}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n"
            files.update(line.encode("utf-8", "surrogateescape"))
    found = {
        "checkpoint": file_sha256(checkpoint),
        "config": {k: v for k, v in flatten(config).items() if role_of(k) is not READING},
        "metrics": metrics,
        "split": str(split_dir.resolve()),
        "split_files": files.hexdigest(),
        "labels": file_sha256(labels) if labels else None,
        "save_images": save_images,
    }
    return json.loads(json.dumps(found))  # as read back from evaluation.json


def read_rows(path: Path) -> tuple[list[dict], int]:
    """The rows of a progress file up to its first incomplete or unreadable line (what a kill
    mid-write leaves), and the length in bytes of those lines."""
    rows, end = [], 0
    for line in path.read_bytes().split(b"\n")[:-1]:  # the part after the last newline: cut off
        try:
            row = json.loads(line)
        except ValueError:
            break
        if not isinstance(row, dict) or "name" not in row:
            break
        rows.append(row)
        end += len(line) + 1
    return rows, end


class RowLog:
    """A process's progress file: rows appended and flushed one by one (a cut-off last line
    that a kill left is removed first)."""

    def __init__(self, path: Path) -> None:
        if path.exists():
            os.truncate(path, read_rows(path)[1])
        self.f = open(path, "ab")  # noqa: SIM115 (closed by close())

    def append(self, row: dict) -> None:
        self.f.write(json.dumps(row).encode() + b"\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _csv(rows: Sequence[dict]) -> bytes:
    """per_image.csv: one row per image, file names escaped into valid UTF-8 (escape_name)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({**r, "name": escape_name(r["name"])} for r in rows)
    return text.getvalue().encode()


def _differences(found: dict, wanted: dict) -> list[str]:
    """The parts of two identities that differ, config keys by name."""
    old, new = found.get("config", {}), wanted["config"]
    parts = [k for k in wanted if k != "config" and found.get(k) != wanted[k]]
    return parts + [
        f"config key {k}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)
    ]


class ResultsFolder:
    """The results folder `out` of one evaluation, whose dehazed images are `pngs` (output file
    names, empty without --save-images)."""

    def __init__(self, out: Path, pngs: Sequence[str]) -> None:
        self.out, self.pngs = out, list(pngs)
        self.progress = out / PROGRESS

    def targets(self) -> list[Path]:
        return [self.out / t for t in TABLES] + [self.out / "images" / p for p in self.pngs]

    def check(self, wanted: dict, overwrite: bool) -> bool:
        """Whether the evaluation may run here (read only): refuses, unless --overwrite, earlier
        results or another evaluation's progress. Returns whether that progress is discarded."""
        self._check_folders()
        found = self._identity()
        other = found is not None and found != wanted
        if other and not overwrite:
            differs = ", ".join(_differences(found, wanted))
            raise OutputExistsError(
                f"{self.out} holds an unfinished evaluation that differs in {differs}: repeat "
                "its command to finish it, pass --overwrite to discard it, or choose another --out"
            )
        if not other and (self.progress / FINISHING).exists():
            return False  # every image is scored, the results were being installed
        earlier = existing([*self.targets(), self.out / MANIFEST])
        if earlier and not overwrite:
            shown = ", ".join(str(p.relative_to(self.out)) for p in earlier[:5])
            raise OutputExistsError(
                f"{self.out} already holds results ({shown}): pass --overwrite to replace them "
                "(other files there are kept), or --out DIR"
            )
        return other

    def _check_folders(self) -> None:
        """--out must be a folder, and the folders test.py makes in it folders of its own, not
        links that lead elsewhere."""
        if os.path.lexists(self.out) and not self.out.is_dir():
            raise OutputError(f"--out {self.out} is a file, not a folder: choose another --out")
        for folder in (self.out / "images", self.progress)[0 if self.pngs else 1 :]:
            if os.path.lexists(folder) and (folder.is_symlink() or not folder.is_dir()):
                raise OutputError(
                    f"{folder} is a link or a file, not a folder; test.py writes its results "
                    "in a folder of its own there: move it, or choose another --out"
                )

    def _identity(self) -> dict | None:
        """The evaluation in progress (None: none); a hidden folder test.py did not make is
        refused."""
        try:
            found = json.loads((self.progress / IDENTITY).read_text())
        except FileNotFoundError:
            if not (self.progress.is_dir() and any(self.progress.iterdir())):
                return None
            found = None
        except ValueError:
            found = None
        if not isinstance(found, dict):
            raise OutputError(
                f"{self.progress} was not written by test.py: move it, or choose another --out"
            )
        return found

    def start(self, wanted: dict, discard: bool) -> None:
        """Make the folder ready (one process): another evaluation's progress removed when
        `discard`, this one's recorded if it is new."""
        if discard:
            print(f"discarding the unfinished evaluation in {self.progress}")
            shutil.rmtree(self.progress)
        try:
            self.progress.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create results folder {self.out}: {e.strerror}") from e
        if not os.access(self.progress, os.W_OK):
            raise OutputError(f"results folder {self.out} is not writable: choose another --out")
        if not (self.progress / IDENTITY).exists():
            write_atomic(self.progress / IDENTITY, lambda f: f.write(json.dumps(wanted).encode()))

    def scored(self) -> dict[str, dict]:
        """The rows already scored, by image name (from every process's progress file)."""
        rows: dict[str, dict] = {}
        for path in sorted(self.progress.glob("rows.*.jsonl")):
            for row in read_rows(path)[0]:
                rows.setdefault(row["name"], row)
        return rows

    def row_log(self, rank: int) -> RowLog:
        return RowLog(self.progress / f"rows.{rank}.jsonl")

    def stage_image(self, png: str, image: torch.Tensor) -> None:
        """Write a dehazed image, (3, H, W) in [0, 1], where `finish` installs it from."""
        write_rgb(self.progress / "images" / png, image)

    def finish(self, rows: Sequence[dict], summary: dict) -> None:
        """Install the results of every image's `rows` (in the split's order) and `summary`,
        then remove the earlier results they replace and the progress."""
        write_atomic(self.progress / FINISHING, lambda f: None)
        tables = {"per_image.csv": _csv(rows), "metrics.json": _json(summary)}
        written = {t: hashlib.sha256(data).hexdigest() for t, data in tables.items()}
        written.update({f"images/{p}": file_sha256(self._image(p)) for p in self.pngs})
        earlier = self._manifest()
        self._write_manifest({**earlier, **written})  # whatever is installed below is listed
        for png in self.pngs:
            staged = self.progress / "images" / png
            if staged.exists():
                (self.out / "images").mkdir(exist_ok=True)
                os.replace(staged, self.out / "images" / png)
        for table, data in tables.items():
            write_atomic(self.out / table, lambda f, data=data: f.write(data))
        self._remove_earlier({k: v for k, v in earlier.items() if k not in written})
        self._write_manifest(written)
        shutil.rmtree(self.progress)

    def _image(self, png: str) -> Path:
        """A dehazed image: staged, or installed already by an interrupted `finish`."""
        for path in (self.progress / "images" / png, self.out / "images" / png):
            if path.is_file():
                return path
        raise OutputError(
            f"{self.progress / 'images' / png} is missing: pass --overwrite to evaluate again"
        )

    def _manifest(self) -> dict[str, str]:
        """{file: sha256} of the files test.py wrote here earlier."""
        path = self.out / MANIFEST
        if not os.path.lexists(path):
            return {}
        try:
            files = json.loads(path.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            files = None
        if not isinstance(files, dict):
            raise OutputError(f"{path} is not test.py's list of its files: move it, or --out DIR")
        return files

    def _write_manifest(self, files: dict[str, str]) -> None:
        manifest = {"written_by": "test.py", "files": files}
        write_atomic(self.out / MANIFEST, lambda f: f.write(_json(manifest)))

    def _remove_earlier(self, files: dict[str, str]) -> None:
        """Remove the files of earlier results that still hold what test.py wrote there."""
        removed = []
        for name, digest in files.items():
            path = self.out / name
            if not _ours(name) or path.parent.is_symlink():
                continue  # not where test.py writes: a manifest edited, a folder linked since
            if path.is_file() and not path.is_symlink() and file_sha256(path) == digest:
                path.unlink()
                removed.append(path)
        images = self.out / "images"
        if any(p.parent == images for p in removed) and not any(images.iterdir()):
            images.rmdir()


def _ours(name: str) -> bool:
    """Whether `name` is a file test.py writes in its results folder."""
    parts = Path(name).parts
    is_image = len(parts) == 2 and parts[0] == "images" and parts[1] not in (".", "..")
    return name in TABLES or is_image


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()
