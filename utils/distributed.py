"""torchrun support: one process per GPU (or CPU process with gloo), rank 0 writes everything."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes in the environment (NCCL on GPU, else gloo)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        store = restart_store(world_size)
        if store is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def restart_store(world_size: int) -> dist.Store | None:
    """torchrun's own store, with the keys of this restart under their own prefix; None
    (torch's env:// default) where torchrun does not share its store with the workers.

    torchrun (--max-restarts) restarts failed workers with the store of the previous attempt,
    which still holds the previous processes' addresses: a restarted worker could read one
    before its peer has written the new one and connect to a dead port (pytorch#135712).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"mixcldehazenet/attempt_{attempt}", store)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def main_first(info: DistInfo, fn: Callable[[], T]) -> T:
    """`fn()` on rank 0, then on the other ranks, which read what it cached (measured speed
    settings, CLIP's domains) instead of computing it at the same time."""
    if info.is_main:
        result = fn()
    barrier(info)
    if not info.is_main:
        result = fn()
    return result


def gather_lists(items: list[T], info: DistInfo) -> list[T]:
    """Every rank's `items`, concatenated in rank order (picklable items)."""
    if not info.enabled:
        return list(items)
    everyone: list[list[T] | None] = [None] * info.world_size
    dist.all_gather_object(everyone, items)
    return [item for part in everyone for item in part or []]


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (in place, returned for chaining)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The element-wise maximum over ranks (in place, returned for chaining)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of every input is the sum of the output's gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over the processes of the default group (if any), differentiably."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _AllReduceSum.apply(t)
    return t


def convert_sync_batchnorm(
    module: nn.Module, info: DistInfo, device: torch.device, enabled: bool
) -> nn.Module:
    """SyncBatchNorm in place of every BatchNorm of `module`, under DDP on CUDA when `enabled`.

    One GPU normalises each batch as a whole; SyncBatchNorm gives many processes the same
    statistics. torch's SyncBatchNorm refuses CPU tensors, so on CPU each process keeps its own
    (said once, by rank 0).
    """
    if not (info.enabled and enabled):
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
    if info.is_main and has_batchnorm:
        print(
            f"train.sync_batchnorm: SyncBatchNorm needs CUDA; on {device.type} each of the "
            f"{info.world_size} processes normalises BatchNorm over its own share of the batch"
        )
    return module


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
