"""Data-loader throughput (training pairs per second) with 0, 2 and 4 worker processes: can
the loader feed the training step?

A synthetic dataset (datasets.synthetic.make_synthetic_dataset) is written to a temporary
folder and read through datasets.PairedDataset in training mode (PNG decoding, random crop,
flips) by a DataLoader as train.py builds it (`--pin-memory` as train.py does on CUDA). At most
32 distinct pairs are drawn (drawing is slow); the others are hard links to them, decoded like
any file. For each worker count one untimed epoch starts the workers (persistent_workers keeps
them), then `repeats` epochs are timed; the table gives the median and the spread of pairs per
second. RESIDE-6K's images are about 620x460 (`--size 620x460`).

Usage: python -m bench.bench_data [--workers 0 2 4] [--pairs 64] [--size 320]
       [--patch 256] [--batch 4] [--pin-memory] [--repeats 3] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from bench.common import add_timing_args, parse_size, report, summarize, time_calls
from datasets import PairedDataset
from datasets.synthetic import make_synthetic_dataset
from utils.cli import positive_int

DISTINCT_PAIRS = 32


def make_pairs(root: Path, pairs: int, hw: tuple[int, int]) -> Path:
    """`pairs` training pairs of size `hw`, at most DISTINCT_PAIRS of them drawn."""
    distinct = min(pairs, DISTINCT_PAIRS)
    make_synthetic_dataset(root, distinct, 0, size=hw)
    for i in range(distinct, pairs):
        for folder in ("GT", "hazy"):
            split = root / "train" / folder
            os.link(split / f"{i % distinct:04d}.png", split / f"{i:04d}.png")
    return root


def measure_loader(
    dataset: PairedDataset, workers: int, batch: int, repeats: int, pin_memory: bool
) -> dict:
    """Pairs per second over whole epochs, after one untimed epoch that starts the workers."""
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        drop_last=False,
    )

    def epoch() -> None:
        for _ in loader:
            pass

    timing = summarize(time_calls(epoch, repeats, warmup=1))
    return {
        "workers": workers,
        **timing,
        "pairs_per_s": len(dataset) / timing["median_s"],
        "min_pairs_per_s": len(dataset) / timing["max_s"],
        "max_pairs_per_s": len(dataset) / timing["min_s"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 2, 4])
    parser.add_argument(
        "--pairs", type=positive_int, default=64, help="training pairs in the dataset"
    )
    parser.add_argument("--size", type=parse_size, default="320", help="image side, or WxH")
    parser.add_argument("--patch", type=positive_int, default=256, help="training crop size")
    parser.add_argument("--batch", type=positive_int, default=4)
    parser.add_argument("--pin-memory", action="store_true", help="as train.py on CUDA")
    add_timing_args(parser, repeats=3, unit="epochs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    hw = args.size
    with tempfile.TemporaryDirectory() as tmp:
        root = make_pairs(Path(tmp) / "synthetic", args.pairs, hw)
        dataset = PairedDataset(root, "train", "train", patch_size=args.patch, only_h_flip=True)
        results = []
        for workers in args.workers:
            r = measure_loader(dataset, workers, args.batch, args.repeats, args.pin_memory)
            results.append(r)
            print(f"{workers} workers: {results[-1]['pairs_per_s']:.1f} pairs/s", flush=True)

    rows = [
        {
            "workers": str(r["workers"]),
            "pairs/s (median)": f"{r['pairs_per_s']:.1f}",
            "min": f"{r['min_pairs_per_s']:.1f}",
            "max": f"{r['max_pairs_per_s']:.1f}",
            "spread": f"{100 * r['spread']:.0f}%",
        }
        for r in results
    ]
    title = (
        f"PairedDataset train mode, {args.pairs} synthetic {hw[1]}x{hw[0]} PNG pairs, "
        f"{args.patch}x{args.patch} crops, batch {args.batch}, median of {args.repeats} epochs"
    )
    payload = {
        "pairs": args.pairs,
        "size": f"{hw[1]}x{hw[0]}",
        "pin_memory": args.pin_memory,
        "patch": args.patch,
        "batch": args.batch,
        "repeats": args.repeats,
        "results": results,
    }
    return report(title, rows, payload, args.threads, args.json)


if __name__ == "__main__":
    main()
