"""An epoch of the training loader resumed after k batches gives the batches, and the random
draws inside them, of the uninterrupted epoch: with and without loader workers."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from datasets.resumable import LoaderWorkers, ResumableSampler, collate_with_rng

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
    loader = DataLoader(
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
    warning = LoaderWorkers(3).start_epoch(3, saved)
    assert warning and "data.num_workers was 2 and is 3" in warning
    assert LoaderWorkers(3).start_epoch(0, saved) is None  # a new epoch: nothing to carry


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
