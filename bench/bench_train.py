"""Training step time (forward + loss + backward + AdamW step) and images/s, per setting, on
CPU or CUDA.

All settings of one (batch, patch) shape are built in this process with the same weights and
inputs, warmed up, then timed round-robin (one step of each setting in turn, `repeats` rounds),
so load from other jobs on a shared machine falls on every setting alike; compiled settings are
timed after the eager ones, so that a slow compilation cannot cost the eager figures. The loss
is L1, plus 0.1 x the contrastive regularisation over a randomly initialised ResNet-152 with
--cr (its speed does not depend on its weights; nothing is downloaded). --precision fp16 runs
the forward and the loss under fp16 autocast with gradient scaling, as train.py does on CUDA.
On CUDA every step ends with a synchronisation, and "peak MiB" is the allocator's peak during
one step beyond what was allocated before it (torch.cuda.max_memory_allocated). The table gives
the median and minimum step time, the spread ((max - min) / median), images per second and the
speed-up (and memory) of each setting against the straightforward computation (ratio of
medians; of minimums in brackets).

Settings (model arguments, see models.MixDehazeNet):
  straightforward   the authors' computation: separate depthwise convs, explicit attention
                    map, the unused text branch computed, NCHW activations
  optimised         the table (utils.speed.DEVICE_SPEED, speed.autotune=false): today
                    channels-last, fused attention kernel, no text branch
  -channels_last    the defaults with NCHW activations
  +fused_dwconv     the defaults with the three depthwise convs as one grouped conv
  +explicit         the defaults with the explicit (H*W x D) attention map
  +text_branch      the defaults computing the unused text branch
  +compile          the defaults under torch.compile (only with --compile)
The option settings run at --option-shape only; the other shapes compare the first two.
What `speed.*: auto` picks on the machine, and its step beside these: bench/bench_auto.py.

Usage: python -m bench.bench_train [--models mixcl-s] [--shapes 2x128 4x128 2x256 4x256]
       [--settings ...] [--device cpu] [--precision none] [--cr] [--compile]
       [--repeats 3] [--warmup 1] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision

from bench.common import (
    BASELINE,
    COMPILED,
    FUSION_ONLY,
    INFERENCE_ONLY,
    MIB,
    PRECISIONS,
    SPEED_SETTINGS,
    add_timing_args,
    fmt,
    model_args,
    parse_shape,
    ratio,
    report,
    summarize,
    synchronize,
    write_json,
)
from models import build_model
from utils.devices import autocast
from utils.image import to_model_range
from utils.losses import ContrastiveLoss, resnet_slices

SETTINGS: dict[str, dict[str, Any]] = {
    k: v for k, v in SPEED_SETTINGS.items() if k not in INFERENCE_ONLY
}
CR_WEIGHT = 0.1  # the published loss: L1 + 0.1 * CR


def make_step(
    name: str,
    setting: str,
    batch: int,
    patch: int,
    device: torch.device,
    precision: str,
    cr: ContrastiveLoss | None,
    compile_backend: str,
) -> Callable[[], None]:
    """A closure running one training step of a freshly built model on fixed random data."""
    backend = compile_backend if setting in COMPILED else None
    args = model_args(name, device, SETTINGS[setting])
    return training_step(name, args, batch, patch, device, precision, cr, backend)


def training_step(
    name: str,
    args: dict[str, Any],
    batch: int,
    patch: int,
    device: torch.device,
    precision: str,
    cr: ContrastiveLoss | None,
    compile_backend: str | None = None,
) -> Callable[[], None]:
    """One training step of the model `name` built with `args`, compiled with
    `compile_backend` unless None."""
    torch.manual_seed(0)
    net = build_model(name, **args).train().to(device)
    model = torch.compile(net, backend=compile_backend) if compile_backend else net
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.01)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    gen = torch.Generator().manual_seed(1)
    hazy = to_model_range(torch.rand(batch, 3, patch, patch, generator=gen)).to(device)
    gt = to_model_range(torch.rand(batch, 3, patch, patch, generator=gen)).to(device)
    text = torch.randn(batch, 1, 512, generator=gen).to(device) if net.needs_text else None

    def step() -> None:
        with autocast(device, precision):
            out = model(hazy, text).float()
            loss = F.l1_loss(out, gt)
            if cr is not None:
                loss = loss + CR_WEIGHT * cr(out, gt, hazy)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def step_peak_mib(step: Callable[[], None], device: torch.device) -> float | None:
    """Memory one step adds at its peak (CUDA's allocator; None on CPU)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / MIB


def time_round_robin(
    steps: dict[str, Callable[[], None]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {s: [] for s in steps}
    for _ in range(repeats):
        for setting, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[setting].append(time.perf_counter() - start)
    return times


def measure_settings(
    steps: dict[str, Callable[[], None]], args: argparse.Namespace, device: torch.device
) -> dict[str, dict[str, Any]]:
    """Warm-up, one step for the peak memory, then the round-robin timing of `steps`."""
    peaks = {}
    for setting, step in steps.items():
        for _ in range(args.warmup):
            step()
        peaks[setting] = step_peak_mib(step, device)
    times = time_round_robin(steps, args.repeats, device)
    return {s: {**summarize(times[s]), "peak_mib": peaks[s]} for s in steps}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mixcl-s"])
    parser.add_argument(
        "--shapes", nargs="+", type=parse_shape, default=[(2, 128), (4, 128), (2, 256), (4, 256)]
    )
    parser.add_argument(
        "--option-shape", type=parse_shape, default="2x256", help="shape that runs every setting"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="none", help="autocast")
    parser.add_argument("--cr", action="store_true", help="add the contrastive regularisation")
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=[s for s in SETTINGS if s not in COMPILED],
        default=[s for s in SETTINGS if s not in COMPILED],
        help="eager settings to time (default: all)",
    )
    parser.add_argument("--compile", action="store_true", help="also time +compile")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    add_timing_args(parser, repeats=3, unit="steps", warmup=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cr = None
    if args.cr:
        torch.manual_seed(0)
        cr = ContrastiveLoss(resnet_slices(torchvision.models.resnet152())).to(device)

    payload: dict[str, Any] = {
        "device": args.device,
        "precision": args.precision,
        "cr": args.cr,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "results": [],
    }
    for name in args.models:
        has_text = build_model(name).needs_text
        for shape in args.shapes:
            batch, patch = shape
            chosen = [BASELINE, *(s for s in args.settings if s != BASELINE)]
            if shape != args.option_shape:
                chosen = [BASELINE, "optimised"]
            chosen = [s for s in chosen if has_text or s not in FUSION_ONLY]
            compiled = list(COMPILED) if args.compile and shape == args.option_shape else []
            for group in (chosen, compiled):
                steps = {
                    s: make_step(
                        name, s, batch, patch, device, args.precision, cr, args.compile_backend
                    )
                    for s in group
                }
                for setting, r in measure_settings(steps, args, device).items():
                    r.update(model=name, batch=batch, patch=patch, setting=setting)
                    r["images_per_s"] = batch / r["median_s"]
                    payload["results"].append(r)
                    print(
                        f"{name} {batch}x{patch} {setting}: median {r['median_s']:.3f} s, "
                        f"{r['images_per_s']:.1f} images/s",
                        flush=True,
                    )
                if args.json:  # the compiled settings may not finish: keep the eager figures
                    write_json(args.json, payload)

    rows = table_rows(payload["results"])
    title = (
        f"{args.device} training step, {args.precision} autocast, L1{' + CR' if args.cr else ''}, "
        f"{args.threads} threads, median of {args.repeats} round-robin steps after "
        f"{args.warmup} warm-up; speed-up over straightforward: medians (minimums)"
    )
    return report(title, rows, payload, args.threads, args.json)


def table_rows(results: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The printed table; adds each result's ratios against the straightforward setting."""
    base = {(r["model"], r["batch"], r["patch"]): r for r in results if r["setting"] == BASELINE}
    rows = []
    for r in results:
        b = base[(r["model"], r["batch"], r["patch"])]
        r["speedup"] = b["median_s"] / r["median_s"]
        r["min_speedup"] = b["min_s"] / r["min_s"]
        row = {
            "model": r["model"],
            "batch x patch": f"{r['batch']}x{r['patch']}",
            "setting": r["setting"],
            "median s": f"{r['median_s']:.3f}",
            "min s": f"{r['min_s']:.3f}",
            "spread": f"{100 * r['spread']:.0f}%",
            "images/s": f"{r['images_per_s']:.1f}",
            "speed-up": f"{r['speedup']:.2f} ({r['min_speedup']:.2f})",
        }
        if r["peak_mib"] is not None:
            r["memory_ratio"] = ratio(r["peak_mib"], b["peak_mib"])
            row["peak MiB"] = f"{r['peak_mib']:.0f}"
            row["memory x"] = fmt(r["memory_ratio"], ".2f")
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
