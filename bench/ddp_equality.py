"""Do two DDP processes train like one? A check of the multi-GPU semantics (docs/PROTOCOL.md).

A few training steps of a tiny MixCL network with the project's criterion (L1 + 0.1 x CR, the
CR over a random ResNet-18 so nothing is downloaded) and its SyncBatchNorm conversion, run
    - by 1 process on each whole global batch (the reference: the authors' one GPU), and
    - by 2 processes (gloo backend, so both can share one GPU), each on half of every batch,
with the same weights, batches and sample order. Plain SGD keeps the final weights a smooth
function of the gradients (Adam's first steps move every weight by about lr whatever the
gradient's size). TF32 is off.

A run's difference from the reference is |w2 - w1| / |w1 - w0| over all weights (w0 the initial
weights; the same for the BatchNorm running statistics where they move; the larger of the two):
how far the 2-process update is from the 1-process one. "Equal": under 1e-3 (fp32 rounding,
amplified by BatchNorm's subtractions, stays far below); "differ": over 3e-2.

Expectations (each a row of the JSON report; exit status 0 iff all hold):
    frozen-bn     BatchNorm in eval mode everywhere: 2 processes equal 1 (DDP averaging, the
                  CR distances summed over processes), on any device
    per-process   train.sync_batchnorm=false: each process normalises its own half, so 2
                  processes differ from 1
    sync-bn       (CUDA only: torch's SyncBatchNorm refuses CPU tensors) SyncBatchNorm in the
                  network and the CR backbone: 2 processes equal 1

Usage: python -m bench.ddp_equality [--device cuda|cpu] [--steps 3] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from torch import nn

from models import build_model
from utils.distributed import DistInfo, convert_sync_batchnorm
from utils.losses import ContrastiveLoss, Criterion, L1Loss, resnet_slices

GLOBAL_BATCH = 4
PATCH = {"cpu": 32, "cuda": 64}  # CPUs only check the plumbing: small and fast
TEXT_DIM = 16
CR_WEIGHT = 0.1
LR = 0.05
EQUAL_BELOW, DIFFER_ABOVE = 1e-3, 3e-2


def _batches(steps: int, patch: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        {
            "hazy": torch.rand(GLOBAL_BATCH, 3, patch, patch, generator=gen) * 2 - 1,
            "gt": torch.rand(GLOBAL_BATCH, 3, patch, patch, generator=gen) * 2 - 1,
            "text": torch.randn(GLOBAL_BATCH, 1, TEXT_DIM, generator=gen),
        }
        for _ in range(steps)
    ]


def _network() -> nn.Module:
    return build_model("mixcl-t", depths=(1, 1, 1, 1, 1), text_dim=TEXT_DIM)


def _state(net: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The network's weights and its BatchNorm statistics, on the CPU."""
    return {
        "weights": {n: p.detach().cpu() for n, p in net.named_parameters()},
        "statistics": {n: b.cpu() for n, b in net.named_buffers() if b.is_floating_point()},
    }


def _train(rank: int, world: int, device: str, batchnorm: str, steps: int, tmp: str) -> None:
    """One process of a run. `batchnorm`: "frozen" (eval mode), "batch" (training mode, each
    process its own statistics) or "sync" (training mode, SyncBatchNorm)."""
    torch.set_num_threads(1)
    # DDP notes that channels-last weights make it copy their gradients; irrelevant here.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    name = f"{batchnorm}-{world}"
    info = DistInfo(rank=rank, world_size=world)
    if world > 1:
        init = f"file://{tmp}/{name}.init"
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    net = _network().to(device)
    cr_mode = "frozen" if batchnorm == "frozen" else "batch"
    cr = ContrastiveLoss(resnet_slices(torchvision.models.resnet18()), batchnorm=cr_mode).to(device)
    parts = convert_sync_batchnorm(
        nn.ModuleList([net, cr]), info, torch.device(device), batchnorm == "sync"
    )
    net = parts[0]
    criterion = Criterion({"l1": L1Loss(), "cr": parts[1]}, {"l1": 1.0, "cr": CR_WEIGHT})
    net.train(batchnorm != "frozen")
    model = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    share = GLOBAL_BATCH // world
    for batch in _batches(steps, PATCH[device]):
        local = {k: v[rank * share : (rank + 1) * share].to(device) for k, v in batch.items()}
        out = model(local["hazy"], local["text"])
        loss = criterion(out, local["gt"], local["hazy"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if rank == 0:
        torch.save(_state(net), f"{tmp}/{name}.pt")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def _run(device: str, world: int, batchnorm: str, steps: int, tmp: str) -> dict:
    """Launch one run (`world` processes) and return rank 0's final `_state`."""
    # CUDA cannot be used in a forked child of a process that touched it; CPU forks are fast.
    method = "spawn" if device == "cuda" else "fork"
    args = (world, device, batchnorm, steps, tmp)
    mp.start_processes(_train, args=args, nprocs=world, join=True, start_method=method)
    return torch.load(f"{tmp}/{batchnorm}-{world}.pt", weights_only=True)


def _difference(a: dict, b: dict, init: dict) -> float:
    """|a - b| / |b - init| over all weights, and over the BatchNorm statistics if they moved."""
    ratios = []
    for kind in ("weights", "statistics"):
        change = torch.cat([(b[kind][k] - init[kind][k]).flatten() for k in b[kind]]).norm()
        if change > 0:
            diff = torch.cat([(a[kind][k] - b[kind][k]).flatten() for k in b[kind]]).norm()
            ratios.append((diff / change).item())
    return max(ratios)


def _check(name: str, expect: str, two: dict, one: dict, init: dict) -> dict[str, Any]:
    difference = _difference(two, one, init)
    ok = difference < EQUAL_BELOW if expect == "equal" else difference > DIFFER_ABOVE
    return {"check": name, "expect": expect, "difference": difference, "ok": ok}


def check(device: str, steps: int = 3) -> dict[str, Any]:
    """Run every expectation for `device`; the report that --json writes."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is visible")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        init = _state(_network())
    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        frozen = _run(device, 1, "frozen", steps, tmp)
        checks.append(
            _check("frozen-bn", "equal", _run(device, 2, "frozen", steps, tmp), frozen, init)
        )
        batch = _run(device, 1, "batch", steps, tmp)
        checks.append(
            _check("per-process", "differ", _run(device, 2, "batch", steps, tmp), batch, init)
        )
        if device == "cuda":
            checks.append(
                _check("sync-bn", "equal", _run(device, 2, "sync", steps, tmp), batch, init)
            )
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "steps": steps,
        "global_batch": GLOBAL_BATCH,
        "patch": PATCH[device],
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", help="write the report here")
    args = p.parse_args(argv)
    result = check(args.device, args.steps)
    for c in result["checks"]:
        print(
            f"{c['check']:<12} expect {c['expect']:<6} update difference {c['difference']:.2e}: "
            f"{'ok' if c['ok'] else 'FAILED'}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
