"""Parameter counts and multiply-accumulates (MACs) of every variant at 256x256.

MACs come from torch.utils.flop_counter.FlopCounterMode (MACs = FLOPs / 2) on a batch of one,
traced on the meta device (no compute). It counts convolutions (depthwise ones included), matrix
products, the fusion's attention and DehazeFormer's window attention; it does not count
element-wise ops, BatchNorm, softmax, pooling, padding or PixelShuffle. The model is traced
with the separate depthwise convs, the explicit attention and without the inference path's
folded layers, so the count is the architecture's work, not the zero taps of the fused
depthwise kernel.

Usage: python -m bench.params [--markdown] [--size 256] [--json docs/results/params.json]

docs/results/params.json, written by the last form, is what docs/BASELINES.md's table is
generated from (python -m scripts.docs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import format_table
from models import MODEL_NAMES, build_model
from models.registry import speed_options
from utils.cli import positive_int

COLUMNS = ("model", "fusion", "params", "params with unused text branch")


def macs_column(size: int) -> str:
    return f"GMACs @ {size}x{size}"


def count_macs(name: str, size: int | tuple[int, int]) -> int:
    """MACs of one forward pass on a (1, 3, size, size) or (1, 3, height, width) image."""
    h, w = (size, size) if isinstance(size, int) else size
    with torch.device("meta"):
        # the architecture's layers one after another: no grouped or folded kernels
        plain = {"fused_dwconv": False, "strips": False}
        model = build_model(
            name,
            attention="explicit",
            **{k: v for k, v in plain.items() if k in speed_options(name)},
        ).eval()
        hazy = torch.zeros(1, 3, h, w)
        text = torch.zeros(1, 1, 512) if model.needs_text else None
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(hazy, text)
    return counter.get_total_flops() // 2


def row(name: str, size: int) -> dict[str, str]:
    """One model's row of the table (built on the meta device: shapes only, no weights)."""
    with torch.device("meta"):
        model = build_model(name)
        full = build_model(name, text_branch=True) if model.needs_text else None
    with_branch = "" if full is None else f"{sum(p.numel() for p in full.parameters()):,}"
    return {
        "model": name,
        "fusion": model.fusion,
        "params": f"{sum(p.numel() for p in model.parameters()):,}",
        "params with unused text branch": with_branch,
        macs_column(size): f"{count_macs(name, size) / 1e9:.2f}",
    }


def rows(size: int) -> list[dict[str, str]]:
    return [row(name, size) for name in MODEL_NAMES]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--size", type=positive_int, default=256, help="image side for MACs")
    parser.add_argument("--json", type=Path, help="also write the table to this JSON file")
    args = parser.parse_args(argv)
    columns = (*COLUMNS, macs_column(args.size))
    table = rows(args.size)
    print(format_table(table, columns, markdown=args.markdown))
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "rows": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
