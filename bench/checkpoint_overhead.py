"""What checkpoints cost a run: the time to write and verify last.pth with the defaults.

Builds the network of a config (default: the paper's mixcl-s) with AdamW state for every
weight, as train.py's checkpoint holds it, and times, each --repeats times on the disk of --dir:
    save          train.py's write of last.pth: torch.save through the sha256 digest, fsync,
                  rename, the digest file, and the shift of the previous one (keep 2)
    save_plain    torch.save + fsync alone, what a write without digest or keep costs
    load          read_file: the bytes, their digest checked, torch.load (weights_only)
The overhead of the defaults is the median save time over train.checkpoint_every_minutes
(one write per interval; the epoch-end write existed before), and, when given, over
--step-seconds x train.checkpoint_every_steps.

Usage: python -m bench.checkpoint_overhead [--config CONFIG] [--device cpu|cuda]
       [--repeats 5] [--dir DIR] [--step-seconds S] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import machine_info, write_json
from networks import build_network
from utils.checkpoint import FORMAT, read_file, save_atomic
from utils.cli import positive_int
from utils.clip_domains import embedding_width
from utils.config import config_to_dict, load_config
from utils.speed import speed_for

DEFAULT_CONFIG = "configs/reside6k/mixcl-s.yaml"


def checkpoint_of(config: str, device: torch.device) -> tuple[dict[str, Any], Any]:
    """A checkpoint as train.py writes it (weights, AdamW moments, config), and the config."""
    cfg = load_config(config)
    text_dim = embedding_width(cfg.clip.arch) if cfg.model.needs_text else None
    net = build_network(cfg, text_dim, speed_for(cfg, device, "train")[0]).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates the moments, as after the first training step
    ckpt = {
        "format": FORMAT,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": config_to_dict(cfg),
        "rng": [torch.get_rng_state()],
    }
    return ckpt, cfg


def plain_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def timed(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    ckpt, cfg = checkpoint_of(args.config, torch.device(args.device))
    last = folder / "last.pth"
    keep = cfg.train.keep_checkpoints
    result: dict[str, Any] = {
        "config": args.config,
        "keep_checkpoints": keep,
        "checkpoint_every_minutes": cfg.train.checkpoint_every_minutes,
        "checkpoint_every_steps": cfg.train.checkpoint_every_steps,
        "save_s": timed(lambda: save_atomic(ckpt, last, keep), args.repeats),
        "save_plain_s": timed(lambda: plain_save(ckpt, folder / "plain.pth"), args.repeats),
        "load_s": timed(lambda: read_file(last), args.repeats),
        "file_mib": last.stat().st_size / 2**20,
    }
    minutes = cfg.train.checkpoint_every_minutes
    if minutes:
        result["overhead_by_minutes"] = result["save_s"] / (minutes * 60)
    if args.step_seconds and cfg.train.checkpoint_every_steps:
        interval = args.step_seconds * cfg.train.checkpoint_every_steps
        result["overhead_by_steps"] = result["save_s"] / interval
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--dir", type=Path, help="where to write (default: a temporary folder)")
    p.add_argument("--step-seconds", type=float, help="a training step's time, for the steps")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = measure(args, Path(tmp))
    result["machine"] = machine_info(torch.get_num_threads())
    for key in ("file_mib", "save_s", "save_plain_s", "load_s", "overhead_by_minutes"):
        if key in result:
            print(f"{key:20} {result[key]:.4g}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
