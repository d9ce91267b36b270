"""What `speed.*: auto` picks on this machine, and the training step it gives against NCHW and
channels-last activations, side by side in one process.

First the measurement train.py makes on first use (networks.tune_speed, in a fresh cache
folder so that it always measures): its choice, every candidate's median and how long it took.
Then full training steps (forward, L1 loss, backward, AdamW step, as bench/bench_train.py) of
three settings are built with the same weights and inputs, warmed up and timed round-robin:
  auto           the settings auto chose
  nchw           auto's choice with NCHW activations
  channels_last  auto's choice with channels-last activations
One of the last two is auto's choice again: the spread between it and `auto` is the noise.
"auto / best" is auto's median over the faster of nchw and channels_last. --inference also
measures what test.py and predict.py pick for one image of the patch size.

Usage: python -m bench.bench_auto [--model mixcl-s] [--shape 2x256] [--device cpu]
       [--precision none] [--inference] [--repeats 5] [--warmup 1] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

import torch

from bench.bench_train import measure_settings, training_step
from bench.common import PRECISIONS, add_timing_args, parse_shape, report, write_json
from networks import tune_speed
from utils.clip_domains import embedding_width
from utils.config import Config, load_config

TEXT_ARCH = "ViT-B-32"  # the paper's CLIP: the width of the text feature


def config(args: argparse.Namespace, cache_dir: str) -> Config:
    batch, patch = args.shape
    return load_config(
        None,
        [
            f"model.name={args.model}",
            f"train.batch_size={batch}",
            f"data.patch_size={patch}",
            f"precision.train={args.precision}",
            f"speed.cache_dir={cache_dir}",
        ],
    )


def measure_auto(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """What auto picks for training (and with --inference, test.py and predict.py)."""
    batch, patch = args.shape
    with tempfile.TemporaryDirectory() as cache_dir:
        cfg = config(args, cache_dir)
        text_dim = embedding_width(TEXT_ARCH) if cfg.model.needs_text else None
        speed, tuning = tune_speed(cfg, text_dim, device, "train", batch, patch)
        out: dict[str, Any] = {"train": {"settings": speed.network_args(), **tuning.record()}}
        for phase in ("test", "predict") if args.inference else ():
            speed, tuning = tune_speed(cfg, text_dim, device, phase, 1, patch)
            out[phase] = {"settings": speed.network_args(), **tuning.record()}
            out[phase]["predict_precision"] = speed.predict_precision
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mixcl-s")
    parser.add_argument("--shape", type=parse_shape, default="2x256", help="BATCHxPATCH")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="none", help="CUDA autocast")
    parser.add_argument("--inference", action="store_true", help="also what inference picks")
    add_timing_args(parser, repeats=5, unit="steps", warmup=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = args.precision if device.type == "cuda" else "none"  # as train.py trains
    auto = measure_auto(args, device)
    payload: dict[str, Any] = {"auto": auto, "repeats": args.repeats, "warmup": args.warmup}
    if args.json:
        write_json(args.json, payload)

    chosen = auto["train"]["settings"]
    settings = {
        "auto": chosen,
        "nchw": {**chosen, "channels_last": False},
        "channels_last": {**chosen, "channels_last": True},
    }
    batch, patch = args.shape
    steps = {
        s: training_step(args.model, a, batch, patch, device, precision, None)
        for s, a in settings.items()
    }
    results = measure_settings(steps, args, device)
    best = min(results["nchw"]["median_s"], results["channels_last"]["median_s"])
    payload["results"] = [{"setting": s, "args": settings[s], **r} for s, r in results.items()]
    payload["auto_over_best"] = results["auto"]["median_s"] / best
    rows = [
        {
            "setting": s,
            "median s": f"{r['median_s']:.3f}",
            "min s": f"{r['min_s']:.3f}",
            "spread": f"{100 * r['spread']:.0f}%",
            "x best": f"{r['median_s'] / best:.3f}",
        }
        for s, r in results.items()
    ]
    title = (
        f"{args.model} {batch}x{patch} training step on {args.device}, {precision} autocast, "
        f"{args.threads} threads; auto chose {chosen} in {auto['train']['measuring_s']:.1f} s; "
        f"median of {args.repeats} round-robin steps after {args.warmup} warm-up"
    )
    return report(title, rows, payload, args.threads, args.json)


if __name__ == "__main__":
    main()
