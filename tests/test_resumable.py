"""An epoch of the training loader resumed after k batches gives the batches, and the random
draws inside them, of the uninterrupted epoch: with and without loader workers."""

from __future__ import annotations

import os
import random
import signal
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import Dataset, DistributedSampler, RandomSampler
from torch.utils.data._utils import signal_handling

from datasets.resumable import (
    WORKER_RNG,
    LoaderWorkers,
    ResumableSampler,
    StopSafeLoader,
    collate_with_rng,
)
from utils.signals import STOP_SIGNALS

SAMPLES, BATCH = 24, 2


class Draws(Dataset):
    """Each sample: its index and draws from `random` and torch, as augmentations take them;
    a sample of an odd index draws twice, so workers' streams advance unevenly."""

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        draws = [random.random() for _ in range(1 + i % 2)]
        return {"index": torch.tensor(i), "draw": torch.tensor(draws[-1] + torch.rand(()).item())}


def epoch(num_workers: int, skip: int = 0, saved: dict | None = None, stop: int | None = None):
    """The batches of one epoch (epoch seed 7) from batch `skip` on, and the workers' state
    after batch `stop`."""
    generator = torch.Generator().manual_seed(7)  # as train_epoch reseeds it every epoch
    sampler = ResumableSampler(RandomSampler(Draws(), generator=generator))
    workers = LoaderWorkers(num_workers)
    loader = StopSafeLoader(
        Draws(),
        batch_size=BATCH,
        sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        worker_init_fn=workers.init_worker,
        collate_fn=collate_with_rng,
    )
    sampler.skip = skip * BATCH
    assert workers.start_epoch(skip, saved) is None
    batches, state = [], None
    for index, batch in enumerate(loader, start=skip):
        workers.took(index, batch)
        batches.append((batch["index"].tolist(), batch["draw"].tolist()))
        if index + 1 == stop:
            state = workers.state()
    return batches, state


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on 2 cores
@pytest.mark.parametrize("num_workers", [2, 3])
def test_an_epoch_resumed_after_k_batches_draws_as_the_uninterrupted_one(num_workers):
    whole, _ = epoch(num_workers)
    assert len({tuple(draws) for _, draws in whole}) == len(whole)  # the draws differ
    for k in (1, num_workers - 1, num_workers, num_workers + 1, 7):
        _, saved = epoch(num_workers, stop=k)
        resumed, _ = epoch(num_workers, skip=k, saved=saved)
        assert resumed == whole[k:], f"resumed after {k} batches with {num_workers} workers"


def as_pinned(obj):
    """`obj` as pin_memory hands batches over on CUDA machines: plain tuples become lists."""
    if isinstance(obj, dict):
        return {k: as_pinned(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [as_pinned(v) for v in obj]
    return obj


def test_worker_states_that_pin_memory_turned_into_lists_still_resume():
    whole, _ = epoch(2)
    _, saved = epoch(2, stop=3)
    resumed, _ = epoch(2, skip=3, saved=as_pinned(saved))
    assert resumed == whole[3:]


def test_another_number_of_workers_is_a_warning_not_a_silent_difference():
    _, saved = epoch(2, stop=3)
    assert LoaderWorkers(3).start_epoch(3, saved) == (
        "data.num_workers was 2 and is 3: the rest of this epoch draws other augmentations "
        "than the uninterrupted run"
    )
    before_workers_were_saved = LoaderWorkers(2).start_epoch(3, None)
    assert before_workers_were_saved.startswith("data.num_workers was unknown and is 2: ")
    assert LoaderWorkers(3).start_epoch(0, saved) is None  # a new epoch: nothing to carry
    fresh = LoaderWorkers(3)
    assert fresh.start_epoch() is None and (fresh.skip, fresh.after) == (0, {})


def test_each_epoch_draws_a_new_order_under_ddp():
    """DistributedSampler shuffles by its epoch: set_epoch must reach it, else every epoch of
    a DDP run repeats one order (and an interrupted run would repeat it alike, unnoticed)."""

    def orders(sampler) -> list[list[int]]:
        drawn = []
        for e in range(3):
            sampler.set_epoch(e)
            drawn.append(list(sampler))
        return drawn

    def distributed() -> DistributedSampler:
        return DistributedSampler(Draws(), num_replicas=2, rank=1, shuffle=True, seed=3)

    resumable = orders(ResumableSampler(distributed()))
    assert resumable == orders(distributed())
    assert len({tuple(order) for order in resumable}) == 3


def test_set_epoch_leaves_a_random_sampler_to_its_generator():
    """Without DDP the loader's generator, reseeded every epoch, makes the order."""
    sampler = ResumableSampler(RandomSampler(Draws(), generator=torch.Generator().manual_seed(1)))
    sampler.set_epoch(5)
    assert sorted(sampler) == list(range(SAMPLES)) and len(sampler) == SAMPLES


@pytest.fixture
def as_a_worker():
    """init_worker run in this process: its RNG states put back after."""
    saved = random.getstate(), torch.get_rng_state()
    yield
    random.setstate(saved[0])
    torch.set_rng_state(saved[1])


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on 2 cores
def test_a_resumed_worker_takes_over_the_state_of_the_worker_that_made_its_batch(as_a_worker):
    _, saved = epoch(3, stop=4)
    workers = LoaderWorkers(3)
    workers.start_epoch(4, saved)
    for worker_id in range(3):
        original = saved["after"][(4 + worker_id) % 3]
        workers.init_worker(worker_id)
        assert random.getstate() == original["python"]
        assert torch.equal(torch.get_rng_state(), original["torch"])


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_a_resumed_worker_without_a_saved_state_is_seeded_as_torch_seeds_it(
    as_a_worker, monkeypatch
):
    """A worker that had made no batch yet (k < N): torch's seed of the original worker."""
    _, saved = epoch(3, stop=1)  # only worker 0 made a batch
    workers = LoaderWorkers(3)
    workers.start_epoch(1, saved)
    info = SimpleNamespace(seed=1000 + 1)  # torch seeds worker w with base seed + w
    monkeypatch.setattr("datasets.resumable.get_worker_info", lambda: info)
    workers.init_worker(1)  # makes batch 2, which worker 2 (seed 1002) made before
    assert random.random() == random.Random(1002).random()
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(1002)))


def blocked_stop_signals() -> set[int]:
    return set(STOP_SIGNALS) & signal.pthread_sigmask(signal.SIG_BLOCK, [])


class SignalState(Dataset):
    """Each sample: whether its worker ignores the stop signals and no longer blocks them."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        ignored = {signal.getsignal(s) for s in STOP_SIGNALS} == {signal.SIG_IGN}
        return torch.tensor(ignored and not blocked_stop_signals())


def test_loader_workers_leave_the_stop_signals_to_the_main_process():
    """The main process handles them and shuts its workers down; it blocks them only while
    the workers start."""
    loader = StopSafeLoader(SignalState(), batch_size=2, num_workers=2)
    batches = iter(loader)
    assert not blocked_stop_signals()
    assert all(bool(b.all()) for b in batches)


def test_a_stop_signal_while_a_worker_starts_does_not_kill_it(monkeypatch):
    """SIGTERM to the process group (`kill -- -PGID`, scancel) can reach a worker after torch
    set its own SIGTERM handler and before any worker_init_fn runs; the worker dies of it, and
    with it the batch training waits for before writing its checkpoint."""
    torch_handlers = signal_handling._set_worker_signal_handlers

    def then_signalled() -> None:
        torch_handlers()
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(signal_handling, "_set_worker_signal_handlers", then_signalled)
    loader = StopSafeLoader(SignalState(), batch_size=2, num_workers=2)
    assert all(bool(b.all()) for b in loader)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_init_worker_outside_a_loader_worker_is_a_bug_named_as_such(as_a_worker):
    _, saved = epoch(3, stop=1)
    workers = LoaderWorkers(3)
    workers.start_epoch(1, saved)
    with pytest.raises(AssertionError, match=r"^init_worker runs in loader workers only$"):
        workers.init_worker(1)  # its batch's worker had made none: torch's seed is needed


def test_a_resumed_pass_has_the_length_of_the_rest_of_the_epoch():
    """The loader's len (progress bars, the epoch's step count) counts what is left."""
    sampler = ResumableSampler(RandomSampler(Draws(), generator=torch.Generator().manual_seed(1)))
    sampler.skip = 6
    assert len(sampler) == SAMPLES - 6
    assert len(list(sampler)) == SAMPLES - 6 and len(sampler) == SAMPLES  # the next pass: all


def test_a_batch_carries_the_rng_state_of_the_worker_that_made_it(monkeypatch):
    samples = [Draws()[i] for i in range(2)]
    assert set(collate_with_rng(samples)) == {"index", "draw"}  # the main process: none
    monkeypatch.setattr("datasets.resumable.get_worker_info", lambda: SimpleNamespace(id=0))
    batch = collate_with_rng(samples)
    assert batch["index"].tolist() == [0, 1]
    assert batch[WORKER_RNG]["python"] == random.getstate()
    assert torch.equal(batch[WORKER_RNG]["torch"], torch.get_rng_state())


def test_a_batch_made_in_the_main_process_carries_no_worker_state():
    workers = LoaderWorkers(0)
    workers.start_epoch()
    batch = {"index": torch.tensor([0, 1])}
    workers.took(0, batch)
    assert workers.state()["after"] == {} and batch == {"index": batch["index"]}


def test_a_checkpoint_before_the_first_epoch_holds_no_worker_state():
    assert LoaderWorkers(2).state() == {"num_workers": 2, "after": {}}
