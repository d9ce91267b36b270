"""Scoring an evaluation's images (test.py) while the network runs, the hazy inputs' scores kept.

The metrics that run on the network's device (PSNR, SSIM, LPIPS, pyiqa's) score each output in
the main process as soon as it is there, as they always have. Those computed in NumPy on the
CPU (`Metric.numpy`: FADE, CIEDE2000) go to `workers` processes, each of which builds its
scorers once, while the network runs on the next images; at most two images per worker are in
flight, so memory stays bounded. A value is the same wherever it is computed: the same function
on the same tensors.

The hazy input's score does not depend on the checkpoint, so a library's metric caches it: one
small JSON file per metric, metric version (`metric_version`), device, and sha256 of the hazy
file (and of the GT file for a metric that compares with it), written through a temporary file
and a rename and checked against its key when read. A second checkpoint evaluated on the same
images scores only its outputs; a changed file, library or weight file is another key, scored
again. This project's own metrics (PSNR, SSIM: cheap) are not cached: their code has no version.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.files import file_sha256, write_atomic
from utils.quality import METRICS, Scorer, load_metrics, metric_files

DEFAULT_CACHE = Path("cache/scores")  # beside the other caches (clip.cache_dir, speed.cache_dir)
CACHE_FORMAT = 1  # bump when what a score is computed from changes (the 8-bit conversion, say)
MAX_WORKERS = 8  # each holds its own interpreter, torch and metric libraries
HAZY = "hazy_"  # the column prefix of the hazy input's scores
Job = tuple[str, str]  # (metric, "" for the output or HAZY for the hazy input)


def default_workers(device: torch.device) -> int:
    """Processes for the NumPy metrics, from this process's share of the CPUs (shared among the
    node's torchrun ranks): with the network on a GPU, all but one (which feeds the GPU), at
    most MAX_WORKERS; on the CPU, those that torch's threads leave free (by default none: the
    network already keeps every core busy, and a worker would only compete with it)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mine = (cpus or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cpu":
        return max(0, mine - torch.get_num_threads())
    return max(1, min(MAX_WORKERS, mine - 1))


def metric_version(name: str, weights_dir: Path | None) -> str:
    """What a metric's scores depend on besides the images: its library (this project's PSNR
    and SSIM: pytorch-msssim's), torch, NumPy and OpenCV (the decoder), its weight files (name
    and size) and how this project feeds it (CACHE_FORMAT)."""
    metric = METRICS[name]
    package = metric.package or "pytorch-msssim"
    parts = [f"{package} {importlib.metadata.version(package)}"]
    parts += [f"torch {torch.__version__}", f"numpy {np.__version__}", f"opencv {cv2.__version__}"]
    for file in metric.files:
        found = file.find(weights_dir)
        parts.append(f"{file.name} {found.stat().st_size if found else 'missing'}")
    return "; ".join([*parts, f"format {CACHE_FORMAT}"])


def _eight_bit(image: torch.Tensor) -> torch.Tensor:
    """The image as an 8-bit file holds it (write_rgb's rounding), in [0, 1]."""
    return (image.clamp(0, 1) * 255).round() / 255


def score(
    scorers: dict[str, Scorer],
    jobs: Sequence[Job],
    images: dict[str, torch.Tensor],
    gt: torch.Tensor | None,
) -> dict[str, float]:
    """{prefix + metric: value} of each job, `images[prefix]` against `gt` (None without GT).
    Metrics other than PSNR/SSIM see the 8-bit images, as saved (docs/PROTOCOL.md)."""
    scores = {}
    for name, prefix in jobs:
        as_saved = _eight_bit if METRICS[name].eight_bit else lambda x: x
        ref = None if gt is None else as_saved(gt)
        scores[prefix + name] = scorers[name](as_saved(images[prefix]), ref)
    return scores


class ScoreCache:
    """The hazy inputs' scores in `folder`, per metric and version, device, and file contents."""

    def __init__(self, folder: Path | None, versions: dict[str, str], device: torch.device) -> None:
        """`folder`: by default DEFAULT_CACHE."""
        self.folder = DEFAULT_CACHE if folder is None else folder
        self.versions = versions
        torch_place = device.type if device.type != "cpu" else f"cpu x{torch.get_num_threads()}"
        # NumPy metrics give the same values anywhere; torch's reductions on the CPU may differ
        # in the last bits with the number of threads.
        self.place = {m: "cpu" if METRICS[m].numpy else torch_place for m in versions}

    def _key(self, metric: str, hazy: str, gt: str | None) -> dict:
        gt = gt if METRICS[metric].needs_gt else None
        version, place = self.versions[metric], self.place[metric]
        return {"metric": metric, "version": version, "device": place, "hazy": hazy, "gt": gt}

    def _path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.folder / key["metric"] / digest[:2] / f"{digest}.json"

    def get(self, metric: str, hazy: str, gt: str | None) -> float | None:
        """The cached score, or None (not a library's metric, never scored, or a file that is
        not this key's)."""
        if METRICS[metric].package is None:
            return None
        key = self._key(metric, hazy, gt)
        try:
            entry = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        score = entry.get("score")
        return float(score) if isinstance(score, int | float) else None

    def put(self, metric: str, hazy: str, gt: str | None, score: float) -> None:
        if METRICS[metric].package is None:
            return
        key = self._key(metric, hazy, gt)
        entry = json.dumps({"key": key, "score": score}).encode()
        write_atomic(self._path(key), lambda f: f.write(entry))


class WithDigests(Dataset):
    """The samples `indices` of a PairedDataset, each with the sha256 of its hazy file (and GT
    file), computed where the sample is decoded (in the loader's workers)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        sample = self.dataset[index]
        sample["hazy_sha256"] = file_sha256(self.dataset.hazy_paths[index])
        if self.dataset.gt_paths is not None:
            sample["gt_sha256"] = file_sha256(self.dataset.gt_paths[index])
        return sample


@dataclass
class Images:
    """One image's tensors, (1, 3, H, W) in [0, 1], and the sha256 of its files."""

    name: str
    output: torch.Tensor
    hazy: torch.Tensor
    gt: torch.Tensor | None
    hazy_sha256: str
    gt_sha256: str | None


@dataclass
class _Pending:
    """An image whose worker-side scores are not back yet."""

    name: str
    scores: dict[str, float]  # those computed in this process, and those from the cache
    computed_hazy: list[str]  # metrics of the hazy input to cache once complete
    digests: tuple[str, str | None]  # the sha256 of the hazy and the GT file


_WORKER_SCORERS: dict[str, Scorer] = {}


def _start_worker(names: list[str], weights_dir: Path | None, parent: int) -> None:
    torch.set_num_threads(1)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    _WORKER_SCORERS.update(load_metrics(names, weights_dir, torch.device("cpu")))


def _exit_with(parent: int) -> None:
    """End this worker once its parent is gone (killed, say): the pool's queue would keep it
    waiting for work forever."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _score_in_worker(
    jobs: list[Job], images: dict[str, torch.Tensor], gt: torch.Tensor | None
) -> dict[str, float]:
    return score(_WORKER_SCORERS, jobs, images, gt)


def _ready() -> None:
    """A job that makes the pool start a worker (and build its scorers) ahead of the images."""


def load_scorers(
    metrics: Sequence[str], weights_dir: Path | None, device: torch.device, workers: int
) -> tuple[dict[str, Scorer], list[str]]:
    """The scorers of the metrics computed in this process, and the metrics that `workers`
    processes compute (the NumPy ones, unless `workers` is 0), each checked: a missing library
    or weight file is a one-line error before the first image."""
    away = [m for m in metrics if METRICS[m].numpy] if workers > 0 else []
    for m in away:
        metric_files(m, weights_dir)  # imported in the workers only
    return load_metrics([m for m in metrics if m not in away], weights_dir, device), away


class Scoring:
    """Every metric of each output and (unless cached) of its hazy input; `submit` returns the
    images whose scores are complete, as (name, {column: value})."""

    def __init__(
        self,
        metrics: Sequence[str],
        scorers: tuple[dict[str, Scorer], list[str]],
        weights_dir: Path | None,
        workers: int,
        cache: ScoreCache,
    ) -> None:
        """`scorers`: what `load_scorers` returns for `metrics` and `workers`."""
        self.metrics, self.cache = list(metrics), cache
        self.here, offloaded = scorers
        self.pool: ProcessPoolExecutor | None = None
        self.pending: dict[Future, _Pending] = {}
        self.limit = 2 * workers
        if offloaded:
            context = multiprocessing.get_context("spawn")  # torch is not fork-safe
            self.pool = ProcessPoolExecutor(
                workers,
                context,
                initializer=_start_worker,
                initargs=(offloaded, weights_dir, os.getpid()),
            )
            for _ in range(workers):
                self.pool.submit(_ready)

    def __enter__(self) -> Scoring:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def _cached(self, images: Images) -> dict[str, float]:
        found = {}
        for m in self.metrics:
            value = self.cache.get(m, images.hazy_sha256, images.gt_sha256)
            if value is not None:
                found[HAZY + m] = value
        return found

    def submit(self, images: Images) -> list[tuple[str, dict[str, float]]]:
        """Score `images`: here the device's metrics now, the NumPy metrics in a worker; waits
        while the workers have as many images as they may."""
        scores = self._cached(images)
        jobs = [(m, p) for m in self.metrics for p in ("", HAZY) if p + m not in scores]
        here = [j for j in jobs if j[0] in self.here]
        tensors = {"": images.output, HAZY: images.hazy}
        scores.update(score(self.here, here, tensors, images.gt))
        pending = _Pending(
            images.name,
            scores,
            [m for m, p in jobs if p == HAZY],
            (images.hazy_sha256, images.gt_sha256),
        )
        away = [j for j in jobs if j[0] not in self.here]
        if not away:
            return [self._complete(pending, {}), *self._collect(block=False)]
        needed = {p: tensors[p].cpu() for p in {p for _, p in away}}
        gt = None if images.gt is None else images.gt.cpu()
        assert self.pool is not None
        self.pending[self.pool.submit(_score_in_worker, away, needed, gt)] = pending
        return list(self._collect(block=len(self.pending) >= self.limit))

    def drain(self) -> Iterator[tuple[str, dict[str, float]]]:
        """The images still being scored, as they complete."""
        while self.pending:
            yield from self._collect(block=True)

    def _collect(self, block: bool) -> list[tuple[str, dict[str, float]]]:
        done, _ = wait(self.pending, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        return [self._complete(self.pending.pop(f), f.result()) for f in done]

    def _complete(self, pending: _Pending, away: dict[str, float]) -> tuple[str, dict[str, float]]:
        scores = {**pending.scores, **away}
        for m in pending.computed_hazy:
            self.cache.put(m, *pending.digests, scores[HAZY + m])
        columns = [p + m for p in ("", HAZY) for m in self.metrics]
        return pending.name, {c: scores[c] for c in columns}
