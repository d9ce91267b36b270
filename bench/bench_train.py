"""Training step time (forward + L1 loss + backward + AdamW step), fp32 on CPU, per setting.

All settings of one (batch, patch) shape are built in this process with the same weights and
inputs, warmed up once, then timed round-robin (one step of each setting in turn, `repeats`
rounds), so load from other jobs on a shared machine falls on every setting alike. The table
gives the median and minimum step time, the spread ((max - min) / median) and the speed-up of
each setting over the straightforward computation (ratio of medians; of minimums in brackets).

Settings (model arguments, see models.MixDehazeNet):
  straightforward   the authors' computation: separate depthwise convs, explicit attention
                    map, the unused text branch computed, NCHW activations
  optimised         the defaults: channels-last, fused attention kernel, no text branch
  -channels_last    the defaults with NCHW activations
  +fused_dwconv     the defaults with the three depthwise convs as one grouped conv
  +explicit         the defaults with the explicit (H*W x D) attention map
  +text_branch      the defaults computing the unused text branch
The option settings run at --option-shape only; the other shapes compare the first two.

Usage: python -m bench.bench_train [--models mixcl-s] [--shapes 2x128 4x128 2x256 4x256]
       [--repeats 3] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import (
    BASELINE,
    FUSION_ONLY,
    INFERENCE_ONLY,
    SPEED_SETTINGS,
    Timing,
    report,
)
from models import build_model
from utils.cli import positive_int
from utils.image import to_model_range

SETTINGS: dict[str, dict[str, Any]] = {
    k: v for k, v in SPEED_SETTINGS.items() if k not in INFERENCE_ONLY
}


def parse_shape(text: str) -> tuple[int, int]:
    """argparse type for a BATCHxPATCH shape such as 4x256."""
    batch, sep, patch = text.partition("x")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected BATCHxPATCH such as 4x256, got {text!r}")
    return positive_int(batch), positive_int(patch)


def make_step(name: str, overrides: dict[str, Any], batch: int, patch: int):
    """A closure running one training step of a freshly built model on fixed random data."""
    torch.manual_seed(0)
    model = build_model(name, **overrides).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    gen = torch.Generator().manual_seed(1)
    hazy = to_model_range(torch.rand(batch, 3, patch, patch, generator=gen))
    gt = to_model_range(torch.rand(batch, 3, patch, patch, generator=gen))
    text = torch.randn(batch, 1, 512, generator=gen) if model.needs_text else None

    def step() -> None:
        loss = F.l1_loss(model(hazy, text), gt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_round_robin(steps: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {s: [] for s in steps}
    for _ in range(repeats):
        for setting, step in steps.items():
            start = time.perf_counter()
            step()
            times[setting].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mixcl-s"])
    parser.add_argument(
        "--shapes", nargs="+", type=parse_shape, default=[(2, 128), (4, 128), (2, 256), (4, 256)]
    )
    parser.add_argument(
        "--option-shape", type=parse_shape, default=(2, 256), help="shape that runs every setting"
    )
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed steps per setting")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    results = []
    for name in args.models:
        has_text = build_model(name).needs_text
        for shape in args.shapes:
            batch, patch = shape
            chosen = list(SETTINGS) if shape == args.option_shape else [BASELINE, "optimised"]
            chosen = [s for s in chosen if has_text or s not in FUSION_ONLY]
            steps = {s: make_step(name, SETTINGS[s], batch, patch) for s in chosen}
            times = time_round_robin(steps, args.repeats)
            base = Timing(tuple(times[BASELINE])).summary()
            for setting in chosen:
                r: dict[str, Any] = Timing(tuple(times[setting])).summary()
                r.update(
                    model=name,
                    batch=batch,
                    patch=patch,
                    setting=setting,
                    speedup=base["median_s"] / r["median_s"],
                    min_speedup=base["min_s"] / r["min_s"],
                )
                results.append(r)
                print(
                    f"{name} {batch}x{patch} {setting}: median {r['median_s']:.2f} s",
                    flush=True,
                )

    rows = [
        {
            "model": r["model"],
            "batch x patch": f"{r['batch']}x{r['patch']}",
            "setting": r["setting"],
            "median s": f"{r['median_s']:.2f}",
            "min s": f"{r['min_s']:.2f}",
            "spread": f"{100 * r['spread']:.0f}%",
            "speed-up": f"{r['speedup']:.2f} ({r['min_speedup']:.2f})",
        }
        for r in results
    ]
    title = (
        f"fp32 CPU training step, {args.threads} threads, median of {args.repeats} "
        "round-robin steps; speed-up over straightforward: medians (minimums)"
    )
    payload = {"repeats": args.repeats, "results": results}
    return report(title, rows, payload, args.threads, args.json)


if __name__ == "__main__":
    main()
