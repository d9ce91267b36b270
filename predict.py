"""Dehaze your own images: files or folders of any size and format, written as PNG.

    python predict.py --ckpt runs/reside6k-mixcl-s/best.pth photo.jpg more_photos/ --out dehazed
    python predict.py --ckpt best.pth photos/ --out dehazed --compare   # side by side
    python predict.py --ckpt best.pth photos/ --out dehazed clip.pretrained=/path/ViT-B-32.pt

Each image's domain (indoor/outdoor) is classified by the checkpoint's CLIP on the fly.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from utils.cli import (
    add_checkpoint_args,
    add_overrides,
    entry_parser,
    parse_before_imports,
    parse_with_overrides,
    positive_int,
    run,
    setup_logging,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = entry_parser(__doc__)
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    add_overrides(p)
    add_checkpoint_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--compare", action="store_true", help="also write hazy|dehazed side by side")
    p.add_argument("--overwrite", action="store_true", help="replace outputs already in --out")
    p.add_argument(
        "--max-side",
        type=positive_int,
        default=None,
        help="downscale images whose longer side exceeds this before dehazing",
    )
    args = parse_with_overrides(p, argv, "inputs")
    if not args.inputs:
        p.error("no input images given")
    return args


# The arguments are read first (utils.cli.parse_before_imports), then the machinery.
parse_before_imports(__name__, parse_args)

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from datasets import input_images
from models.registry import memory_scale
from networks import inference_network, model_from_checkpoint, pick_device
from utils.clip_domains import classify, load_classifier, text_features
from utils.config import Config
from utils.distributed import DistInfo, barrier, cleanup, gather_lists, init_distributed, main_first
from utils.errors import OutputError, OutputExistsError, UserError
from utils.files import existing
from utils.image import (
    PathLike,
    fitted_size,
    from_model_range,
    png_names,
    read_header,
    read_rgb,
    to_model_range,
    uint8_to_tensor,
    write_rgb,
)
from utils.memory import available_memory
from utils.speed import speed_for

# Peak memory of a full-resolution forward pass grows linearly with the pixel count; per
# (device type, precision), MixDehazeNet's bytes per input pixel that bench/bench_inference.py
# measured with the default speed settings, plus a margin for run-to-run variation
# (docs/PERFORMANCE.md); other backbones scale it by their registry entry's memory_scale.
BYTES_PER_PIXEL: dict[tuple[str, str], int] = {
    ("cpu", "none"): 1300,  # measured 720-870 for every variant; 460-700 since the folded path
    ("cpu", "bf16"): 2300,  # mixcl-s: 1500 where bf16 is emulated (AVX2); 413-1160 native
    # Not measured yet: the CPU's fp32 figure until bench/gpu_check.sh has run on a GPU.
    ("cuda", "none"): 1300,
    ("cuda", "fp16"): 1300,
    ("cuda", "bf16"): 1300,
}


class PredictError(UserError, RuntimeError):
    """Some inputs could not be dehazed; the others were written."""


def check_memory(h: int, w: int, model: str, device: torch.device, precision: str) -> None:
    """Refuse, with a way out, an image that would exhaust memory rather than crash midway."""
    per_pixel = memory_scale(model) * BYTES_PER_PIXEL.get(  # fp16 off CUDA runs in fp32
        (device.type, precision), BYTES_PER_PIXEL[(device.type, "none")]
    )
    need, have = h * w * per_pixel, available_memory(device)
    if need > have:
        side = int(max(h, w) * (have / need) ** 0.5) // 8 * 8
        raise MemoryError(
            f"{w}x{h} pixels ({h * w / 1e6:.0f} MP): dehazing at full resolution needs "
            f"about {need / 2**30:.1f} GiB on {device.type}, {have / 2**30:.1f} GiB are free. "
            f"Use --max-side {side} to downscale it first"
        )


def plan_outputs(inputs: list[Path], out: Path, compare: bool, overwrite: bool) -> list[list[Path]]:
    """The output files of every input, after refusing anything that would touch an input,
    write two outputs to one file, or replace an earlier output without --overwrite."""
    holding = [p for p in inputs if p.parent == out.resolve()]
    if holding:
        raise OutputExistsError(
            f"--out {out} holds input images ({holding[0]}): their outputs could replace them "
            f"and be dehazed again on the next run; choose another folder, e.g. {out / 'dehazed'}"
        )
    names = png_names([p.name for p in inputs])
    plan = []
    for p in inputs:
        png = out / names[p.name]
        plan.append([png, png.with_name(f"{png.stem}_compare.png")] if compare else [png])
    targets = [t for files in plan for t in files]
    clashes = sorted(str(t) for t, n in Counter(targets).items() if n > 1)
    if clashes:
        raise OutputError(f"two outputs would share a file name: {', '.join(clashes)}")
    earlier = existing(targets)  # a dangling link too: it would be replaced
    if earlier and not overwrite:
        shown = ", ".join(t.name for t in earlier[:5]) + (" ..." if len(earlier) > 5 else "")
        raise OutputExistsError(
            f"{len(earlier)} output(s) already exist in {out} ({shown}): pass --overwrite to "
            "replace them, or choose another --out"
        )
    if earlier:
        print(f"replacing {len(earlier)} earlier output(s) in {out}")
    return plan


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output folder {out}: {e.strerror}") from e
    if not os.access(out, os.W_OK):
        raise OutputError(f"output folder {out} is not writable; pick another with --out")


class Dehazer:
    """A checkpoint's network on the chosen device with its measured speed settings and
    precision, and its CLIP: predict.py's path, which demo.py and export.py run too."""

    def __init__(
        self, net: nn.Module, cfg: Config, clip: tuple | None, precision: str | None = None
    ) -> None:
        """`precision`: autocast's, by default `speed.predict_precision` (measured or set)."""
        self.net, self.cfg, self.device = net, cfg, pick_device()
        self.precision = precision or speed_for(cfg, self.device, "predict")[0].predict_precision
        self.run_net = inference_network(net, cfg, self.device, self.precision)
        self.clip = clip  # (model, preprocess, prompt embeddings) for CLIP-guided networks

    @classmethod
    def load(
        cls,
        ckpt: str | Path,
        model: str | None = None,
        config: str | None = None,
        overrides: Sequence[str] = (),
        precision: str | None = None,
    ) -> Dehazer:
        """The network and CLIP of a checkpoint (released weights need `model`)."""
        net, cfg, _ = model_from_checkpoint(ckpt, model, config, overrides, phase="predict")
        clip = load_classifier(cfg.clip, str(pick_device())) if cfg.model.needs_text else None
        return cls(net, cfg, clip, precision)

    def read(self, path: PathLike, max_side: int | None) -> np.ndarray:
        """The image at `path`, shrunk to `max_side`, judged by its header before it is
        decoded: DataError or MemoryError when it could not be decoded or dehazed in memory."""
        header = read_header(path)
        h, w = fitted_size(header.height, header.width, max_side)
        check_memory(h, w, self.cfg.model.name, self.device, self.precision)
        return read_rgb(path, max_side)

    def domain_probs(self, img: np.ndarray) -> torch.Tensor | None:
        """CLIP's (1, K) domain probabilities of `img` (None without CLIP guidance)."""
        if self.clip is None:
            return None
        clip_model, preprocess, prompt_emb = self.clip
        return classify(clip_model, preprocess, [img], prompt_emb)

    @torch.no_grad()
    def __call__(self, img: np.ndarray, probs: torch.Tensor | None = None) -> torch.Tensor:
        """The dehazed (3, H, W) image in [0, 1], guided by the domain `probs` (1, K)."""
        hazy = uint8_to_tensor(img)[None].to(self.device)
        text = None
        if self.clip is not None:
            text = text_features(probs, self.clip[2], self.cfg.clip.mode).to(self.device)
        return from_model_range(self.run_net(to_model_range(hazy), text))[0].cpu()


@torch.no_grad()
def main(argv: list[str] | None = None) -> list[Path]:
    """Dehaze every input image; returns the written output paths (under torchrun the ranks
    share the images, and each returns them all)."""
    args = parse_args(argv)
    setup_logging(args.quiet)
    info = init_distributed()
    try:
        return _dehaze_all(args, info)
    finally:
        cleanup(info)


def _dehaze_all(args: argparse.Namespace, info: DistInfo) -> list[Path]:
    """This rank's share of the inputs, dehazed and written; the written paths of all ranks."""
    out_dir = Path(args.out)
    inputs = input_images(args.inputs)
    plan = plan_outputs(inputs, out_dir, args.compare, args.overwrite)
    _check_out_dir(out_dir)
    barrier(info)  # every rank has checked the outputs before any writes one
    load = partial(Dehazer.load, args.ckpt, args.model, args.config, args.overrides)
    dehazer = main_first(info, load)

    written: list[Path] = []
    failed: list[str] = []
    jobs = list(zip(inputs, plan, strict=True))[info.rank :: info.world_size]
    shown = None if info.is_main else True
    for path, targets in tqdm(jobs, "dehazing", len(jobs), disable=shown):
        try:
            img = dehazer.read(path, args.max_side)
        except (ValueError, MemoryError) as e:
            warnings.warn(f"skipping {path}: {e}", stacklevel=1)
            failed.append(f"{path}: {e}")
            continue
        out01 = dehazer(img, dehazer.domain_probs(img))
        write_rgb(targets[0], out01)
        written.append(targets[0])
        if args.compare:
            write_rgb(targets[1], torch.cat([uint8_to_tensor(img), out01], dim=-1))
    order = {targets[0]: i for i, targets in enumerate(plan)}
    written = sorted(gather_lists(written, info), key=order.__getitem__)
    failed = gather_lists(failed, info)
    if info.is_main:
        print(f"wrote {len(written)} image(s) to {out_dir}")
    if failed:
        raise PredictError(f"{len(failed)} image(s) not dehazed:\n  " + "\n  ".join(failed))
    return written


if __name__ == "__main__":
    run(main)
