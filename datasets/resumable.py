"""The training loader resumed inside an epoch, with the batches and augmentations of the
uninterrupted epoch.

The order comes from the sampler: a resumed epoch draws it again and skips the batches done.
The augmentations come from Python's `random` in the process that makes a batch. Without
workers that is the main process, whose RNG state a checkpoint holds. With N workers, torch
seeds worker w with base_seed + w (base_seed drawn from the loader's generator, which every
epoch reseeds) and worker w makes batches w, w + N, w + 2N, ...; each batch then carries its
worker's RNG state after making it, and a checkpoint after k batches holds, for each worker,
the state in which it makes its next batch. The resumed loader's worker j makes batch k + j,
so it starts from the state of worker (k + j) % N. numpy's global RNG, which no transform
here uses, is not carried.

Workers also ignore the stop signals (StopSafeLoader): the main process handles them
(utils.signals) and shuts the workers down.
"""

from __future__ import annotations

import itertools
import random
import signal
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

import torch
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Sampler,
    get_worker_info,
)
from torch.utils.data.dataloader import default_collate

from utils.signals import STOP_SIGNALS, stop_signals_blocked

WORKER_RNG = "worker_rng"  # the batch key of the RNG state its worker had after making it


class ResumableSampler(Sampler[int]):
    """`base`'s order, where the next pass may start `skip` samples in: the rest of an epoch
    interrupted after some batches, without reading the skipped images. The skipped indices
    are still drawn, so the random streams advance as in the uninterrupted epoch."""

    def __init__(self, base: RandomSampler | DistributedSampler) -> None:
        self.base, self.skip = base, 0

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.base), skip, None)

    def __len__(self) -> int:
        return len(self.base) - self.skip  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.base, DistributedSampler):
            self.base.set_epoch(epoch)


def _start_worker(init: Callable[[int], None] | None, worker_id: int) -> None:
    """A StopSafeLoader worker's start: ignore the stop signals, then unblock them (one that
    arrived since the fork is dropped), then the loader's own worker_init_fn."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if init is not None:
        init(worker_id)


class StopSafeLoader(DataLoader):
    """A DataLoader whose workers leave the stop signals to the main process, which finishes
    the step, writes the checkpoint and shuts them down. A torch worker dies of a SIGTERM sent
    to the process group (`kill -- -PGID`, scancel), and the batch being waited for fails
    before the checkpoint is written. The workers start with the signals blocked, as no
    worker_init_fn runs early enough: torch's own SIGTERM handler is set before it. (Workers
    forked by a forkserver inherit the server's signal mask instead.)"""

    def __init__(
        self, *args: Any, worker_init_fn: Callable[[int], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, worker_init_fn=partial(_start_worker, worker_init_fn), **kwargs)

    def __iter__(self) -> Iterator[Any]:
        with stop_signals_blocked():  # while this starts the workers
            return super().__iter__()


def collate_with_rng(samples: list[Any]) -> Any:
    """default_collate, plus (in a worker) the worker's RNG state under WORKER_RNG."""
    batch = default_collate(samples)
    if get_worker_info() is not None:
        batch[WORKER_RNG] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    return batch


class LoaderWorkers:
    """The training loader's workers: how each starts (worker_init_fn) and the RNG state each
    had after its newest batch of the epoch, which mid-epoch checkpoints hold."""

    def __init__(self, num_workers: int) -> None:
        self.num_workers = num_workers
        self.skip = 0  # batches of the epoch done before the loader started
        self.after: dict[int, Any] = {}  # worker -> RNG state after its newest batch

    def start_epoch(self, skip: int = 0, saved: Mapping[str, Any] | None = None) -> str | None:
        """Before the loader starts an epoch `skip` batches in, with `saved` (a `state()` of
        the interrupted epoch); a warning when the augmentations cannot be those of the
        uninterrupted epoch (the number of workers changed)."""
        self.skip, self.after = skip, {}
        if not skip:
            return None
        if saved is None or saved["num_workers"] != self.num_workers:
            before = "unknown" if saved is None else saved["num_workers"]
            return (
                f"data.num_workers was {before} and is {self.num_workers}: the rest of this "
                "epoch draws other augmentations than the uninterrupted run"
            )
        self.after = dict(saved["after"])
        return None

    def init_worker(self, worker_id: int) -> None:
        """worker_init_fn: in a resumed epoch, take over the RNG state of the worker that made
        this worker's first batch in the uninterrupted epoch."""
        if not self.skip:
            return
        original = (self.skip + worker_id) % self.num_workers
        if original in self.after:
            # pin_memory (on CUDA machines) turns the state's tuples into lists on the way
            version, internal, gauss = self.after[original]["python"]
            random.setstate((version, tuple(internal), gauss))
            torch.set_rng_state(self.after[original]["torch"])
            return
        info = get_worker_info()
        assert info is not None, "init_worker runs in loader workers only"
        seed = info.seed - worker_id + original  # as torch seeds worker `original`
        random.seed(seed)
        torch.manual_seed(seed)

    def took(self, index: int, batch: dict[str, Any]) -> None:
        """Batch `index` of the epoch reached the training step: keep its worker's RNG state."""
        made = batch.pop(WORKER_RNG, None)
        if made is not None:
            self.after[index % self.num_workers] = made

    def state(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "after": dict(self.after)}
