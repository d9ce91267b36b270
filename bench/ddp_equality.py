"""Do two DDP processes train like one? A check of the multi-GPU semantics (docs/PROTOCOL.md).

A few training steps of a tiny MixCL network with the project's criterion (L1 + 0.1 x CR, the
CR over a random ResNet-18 so nothing is downloaded) and its SyncBatchNorm conversion, run
    - by 1 process on each whole global batch (the reference: the authors' one GPU), and
    - by 2 processes (gloo backend, so both can share one GPU), each on half of every batch,
with the same weights, batches and sample order. Plain SGD keeps the final weights a smooth
function of the gradients, so fp32 rounding stays at rounding size (Adam's first steps move
every weight by about lr whatever the gradient's size). TF32 is switched off.

Expectations (each a row of the JSON report; exit status 0 iff all hold):
    frozen-bn     BatchNorm in eval mode everywhere: 2 processes equal 1 (DDP averaging, the
                  CR distances summed over processes), on any device
    per-process   train.sync_batchnorm=false: each process normalises its own half, so 2
                  processes differ from 1
    sync-bn       (CUDA only: torch's SyncBatchNorm refuses CPU tensors) SyncBatchNorm in the
                  network and the CR backbone: 2 processes equal 1

"Equal": the largest difference of the weights (and of the BatchNorm running statistics) is
under 1e-4 of their largest change during the run; "differ": the weights' is over 1e-3.

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
from utils.losses import ContrastiveLoss, resnet_slices, training_loss

GLOBAL_BATCH = 4
PATCH = 32
TEXT_DIM = 16
CR_WEIGHT = 0.1
LR = 0.05
EQUAL_BELOW = 1e-4  # of the largest weight update
DIFFER_ABOVE = 1e-3


def _batches(steps: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        {
            "hazy": torch.rand(GLOBAL_BATCH, 3, PATCH, PATCH, generator=gen) * 2 - 1,
            "gt": torch.rand(GLOBAL_BATCH, 3, PATCH, PATCH, generator=gen) * 2 - 1,
            "text": torch.randn(GLOBAL_BATCH, 1, TEXT_DIM, generator=gen),
        }
        for _ in range(steps)
    ]


def _train(
    rank: int, world: int, device_type: str, batchnorm: str, init_file: str, out: str, steps: int
) -> None:
    """One process of a run. `batchnorm`: "frozen" (eval mode), "batch" (training mode, each
    process its own statistics) or "sync" (training mode, SyncBatchNorm)."""
    torch.set_num_threads(1)
    # DDP notes that channels-last weights make it copy their gradients; irrelevant here.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    info = DistInfo(rank=rank, world_size=world, local_rank=0)
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
        )
    device = torch.device(device_type)
    torch.manual_seed(0)
    net = build_model("mixcl-t", depths=(1, 1, 1, 1, 1), text_dim=TEXT_DIM).to(device)
    cr_mode = "frozen" if batchnorm == "frozen" else "batch"
    cr = ContrastiveLoss(resnet_slices(torchvision.models.resnet18()), batchnorm=cr_mode).to(device)
    parts = convert_sync_batchnorm(nn.ModuleList([net, cr]), info, device, batchnorm == "sync")
    net, cr = parts[0], parts[1]
    net.train(batchnorm != "frozen")
    model = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    share = GLOBAL_BATCH // world
    for batch in _batches(steps):
        local = {k: v[rank * share : (rank + 1) * share].to(device) for k, v in batch.items()}
        out_img = model(local["hazy"], local["text"])
        loss = training_loss(out_img, local["gt"], local["hazy"], cr, CR_WEIGHT)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if rank == 0:
        torch.save(_state(net), out)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def _state(net: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The network's weights and its BatchNorm statistics, on the CPU."""
    return {
        "weights": {n: p.detach().cpu() for n, p in net.named_parameters()},
        "statistics": {n: b.cpu() for n, b in net.named_buffers() if b.is_floating_point()},
    }


def _run(device: str, world: int, batchnorm: str, steps: int, tmp: Path) -> dict:
    """Launch one run (`world` processes) and return rank 0's final `_state`."""
    name = f"{batchnorm}-{world}"
    init_file, out = tmp / f"{name}.init", tmp / f"{name}.pt"
    # CUDA cannot be used in a forked child of a process that touched it; CPU forks are fast.
    method = "spawn" if device == "cuda" else "fork"
    args = (world, device, batchnorm, str(init_file), str(out), steps)
    mp.start_processes(_train, args=args, nprocs=world, join=True, start_method=method)
    return torch.load(out, weights_only=True)


def _initial_state() -> dict[str, dict[str, torch.Tensor]]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _state(build_model("mixcl-t", depths=(1, 1, 1, 1, 1), text_dim=TEXT_DIM))


def _relative_difference(a: dict, b: dict, init: dict) -> float:
    """Largest |a - b| over the tensors, over the largest change of b from `init`."""
    diff = max((a[k] - b[k]).abs().max().item() for k in b)
    return diff / max((b[k] - init[k]).abs().max().item() for k in b)


def _compare(name: str, expect: str, a: dict, b: dict, init: dict) -> dict[str, Any]:
    """`a` against the reference `b`: the weights (and BatchNorm statistics when they moved)."""
    weights = _relative_difference(a["weights"], b["weights"], init["weights"])
    moved = any(not torch.equal(v, init["statistics"][k]) for k, v in b["statistics"].items())
    stats = (
        _relative_difference(a["statistics"], b["statistics"], init["statistics"]) if moved else 0.0
    )
    if expect == "equal":
        ok = weights < EQUAL_BELOW and stats < EQUAL_BELOW
    else:
        ok = weights > DIFFER_ABOVE
    return {
        "check": name,
        "expect": expect,
        "weights_difference": weights,
        "statistics_difference": stats,
        "ok": ok,
    }


def check(device: str, steps: int = 3) -> dict[str, Any]:
    """Run every expectation for `device`; the report that --json writes."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is visible")
    init = _initial_state()
    checks = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        frozen_one = _run(device, 1, "frozen", steps, tmp)
        frozen_two = _run(device, 2, "frozen", steps, tmp)
        checks.append(_compare("frozen-bn", "equal", frozen_two, frozen_one, init))
        batch_one = _run(device, 1, "batch", steps, tmp)
        per_process = _run(device, 2, "batch", steps, tmp)
        checks.append(_compare("per-process", "differ", per_process, batch_one, init))
        if device == "cuda":
            sync = _run(device, 2, "sync", steps, tmp)
            checks.append(_compare("sync-bn", "equal", sync, batch_one, init))
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "steps": steps,
        "global_batch": GLOBAL_BATCH,
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
            f"{c['check']:<12} expect {c['expect']:<6} difference / largest update: weights "
            f"{c['weights_difference']:.2e}, BatchNorm statistics "
            f"{c['statistics_difference']:.2e}: {'ok' if c['ok'] else 'FAILED'}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
