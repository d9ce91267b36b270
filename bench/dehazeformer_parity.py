"""Our DehazeFormer against the authors' module: same weights, same outputs.

Builds the authors' network (their models/dehazeformer.py, a local copy passed by path: it is
not part of this repository) with random weights, perturbs every parameter so that no bias or
norm stays at its initial constant, saves its state_dict as their train.py saves one
({'state_dict': DataParallel keys}), loads that file through `networks.model_from_checkpoint`
(what `test.py --ckpt FILE --model dehazeformer-b` does) and compares the outputs in fp32 at
image sizes that are not multiples of the window.

Their file imports timm for `trunc_normal_` and `to_2tuple` (initialisation only); without timm
installed, torch's equivalents stand in for it.

Usage: python -m bench.dehazeformer_parity /tmp/upstream/dehazeformer.py [--variants t b]
(exits 1 when the largest difference exceeds TOLERANCE)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import torch

from networks import model_from_checkpoint

DEFAULT_SIZES = ("37x53", "64x97", "97x64")
TOLERANCE = 1e-4  # the script fails above it


def _timm_stand_in() -> None:
    """Register torch's truncated normal as `timm.models.layers` when timm is absent."""
    if importlib.util.find_spec("timm") is not None:
        return
    layers = types.ModuleType("timm.models.layers")
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    layers.to_2tuple = lambda x: x if isinstance(x, tuple) else (x, x)
    for name in ("timm", "timm.models"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["timm.models.layers"] = layers


def load_upstream(path: Path) -> types.ModuleType:
    _timm_stand_in()
    spec = importlib.util.spec_from_file_location("upstream_dehazeformer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def max_difference(upstream: types.ModuleType, size: str, sizes: list[str], folder: Path) -> float:
    """Largest |ours - theirs| over `sizes` for DehazeFormer-`size` with shared random weights."""
    torch.manual_seed(0)
    theirs = getattr(upstream, f"dehazeformer_{size}")().eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = folder / f"dehazeformer-{size}.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in theirs.state_dict().items()}}, path)
    ours, _, _ = model_from_checkpoint(path, f"dehazeformer-{size}")
    worst = 0.0
    for i, (h, w) in enumerate(map(_size, sizes)):
        hazy = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(i)) * 2 - 1
        with torch.no_grad():
            diff = (ours(hazy) - theirs(hazy)).abs().max().item()
        print(f"dehazeformer-{size} {h}x{w}: max abs difference {diff:.2e}")
        worst = max(worst, diff)
    return worst


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("upstream", type=Path, help="a local copy of their dehazeformer.py")
    parser.add_argument("--variants", nargs="+", default=["t", "b"], help="sizes to compare")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="HxW images")
    args = parser.parse_args(argv)
    upstream = load_upstream(args.upstream)
    with tempfile.TemporaryDirectory() as folder:
        worst = max(max_difference(upstream, v, args.sizes, Path(folder)) for v in args.variants)
    print(f"largest difference over all: {worst:.2e}")
    return worst


if __name__ == "__main__":
    sys.exit(1 if main() > TOLERANCE else 0)
