"""Use a trained model without this code: one ONNX graph for ONNX Runtime, or the bare weights.

    python export.py --ckpt runs/reside6k-mixcl-s/best.pth --onnx mixcl-s.onnx
    python export.py --ckpt best.pth --state-dict mixcl-s.pth     # and mixcl-s.pth.sha256

The ONNX graph takes `hazy` (1x3xHxW float32 RGB in [0, 1], any H and W) and, for CLIP-guided
models, `domain` (1xK float32: the probabilities of the checkpoint's domains, indoor and outdoor
by default, e.g. CLIP's or [[1, 0]] for indoor); it returns `dehazed` (1x3xHxW in [0, 1]).
The graph is checked before it is kept: ONNX Runtime against predict.py's computation at three
odd sizes (docs/DEPLOYMENT.md). The state dict holds the network's weights under the authors'
parameter names, as their scripts save them ({"state_dict": ...}).

An existing file is replaced only with --overwrite, and never the checkpoint read (nor a link
to it) or its digest; each file is written beside its target under a unique temporary name and
renamed into place, which replaces a link there instead of writing where it points.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import warnings
from pathlib import Path

from utils.cli import (
    add_checkpoint_args,
    add_overrides,
    entry_parser,
    parse_before_imports,
    parse_with_overrides,
    run,
    setup_logging,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = entry_parser(__doc__)
    add_overrides(p)
    add_checkpoint_args(p)
    p.add_argument("--onnx", type=Path, help="write the checked ONNX graph here")
    p.add_argument("--state-dict", type=Path, help="write the bare network weights here")
    p.add_argument("--overwrite", action="store_true", help="replace files already there")
    args = parse_with_overrides(p, argv)
    if args.onnx is None and args.state_dict is None:
        p.error("nothing to do: pass --onnx OUT.onnx and/or --state-dict OUT.pth")
    return args


# The arguments are read first (utils.cli.parse_before_imports), then the machinery.
parse_before_imports(__name__, parse_args)

import numpy as np
import torch
from torch import nn

from models.mixdehazenet import MixDehazeNet
from models.text_fusion import TEXT_BRANCH_MODULES, TextImageFusion
from networks import build_network, model_from_checkpoint
from predict import Dehazer
from utils.checkpoint import digest_path, save_atomic
from utils.clip_domains import text_features
from utils.errors import OutputError, OutputExistsError
from utils.extras import require
from utils.files import Temporaries, create_synced, existing
from utils.image import from_model_range, to_model_range, uint8_to_tensor
from utils.speed import speed_for

# (height, width) of the random images the ONNX graph is checked at: odd, so that the padding
# to multiples of 4 and the crop back are exercised, and none of them the size it was traced at.
CHECK_SIZES = ((67, 94), (45, 130), (101, 59))
TRACE_SIZE = (75, 97)
# Largest |ONNX Runtime - PyTorch| allowed on outputs in [0, 1] (fp32 on both sides).
TOLERANCE = 1e-4


class ExportCheckError(RuntimeError):
    """ONNX Runtime's output differs from PyTorch's: the graph is not kept."""


class Deployable(nn.Module):
    """predict.py's computation around the network: [0, 1] in and out, and the text feature of
    the given domain probabilities (the prompt embeddings are constants of the graph)."""

    def __init__(self, net: nn.Module, prompt_emb: torch.Tensor | None, mode: str) -> None:
        super().__init__()
        self.net, self.mode = net, mode
        self.register_buffer("prompt_emb", prompt_emb)

    def forward(self, hazy: torch.Tensor, domain: torch.Tensor | None = None) -> torch.Tensor:
        text = None if domain is None else text_features(domain, self.prompt_emb, self.mode)
        return from_model_range(self.net(to_model_range(hazy), text))


def targets(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """Every file the export writes, with the flag that names it."""
    files = []
    if args.state_dict is not None:
        files += [("--state-dict", args.state_dict), ("--state-dict", digest_path(args.state_dict))]
    if args.onnx is not None:
        files.append(("--onnx", args.onnx))
    return files


def _same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name one file (through links and hard links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing, or a dangling link
        return False


def check_targets(args: argparse.Namespace) -> None:
    """Before anything is loaded, refuse a target that is a folder, one that is the checkpoint
    read or its digest (a link or a hard link to them too: even with --overwrite), one file
    named twice, and an existing file (a dangling link included) without --overwrite."""
    files = targets(args)
    if len({os.path.abspath(p) for _, p in files}) < len(files):
        raise OutputError("--onnx and --state-dict name the same file: give each its own name")
    ckpt = Path(args.ckpt)
    for flag, path in files:
        if path.is_dir():
            raise OutputError(f"{flag}: {path} is a folder; name the file to write in it")
        read = next((p for p in (ckpt, digest_path(ckpt)) if _same_file(path, p)), None)
        if read is not None:
            raise OutputError(
                f"{flag}: {path} is the checkpoint read ({read}), which export.py never writes "
                "over, even with --overwrite; choose another name"
            )
    earlier = existing(p for _, p in files)
    if earlier and not args.overwrite:
        raise OutputExistsError(
            f"{', '.join(map(str, earlier))} already exist{'s' if len(earlier) == 1 else ''}: "
            "pass --overwrite to replace, or choose another name"
        )
    for path in earlier:
        print(f"replacing {path}")


def authors_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """The weights under the authors' names; for MixCLDehazeNet also the text branch their
    network defines but never uses, as zeros, so that their strict loading finds every key."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    fusion = getattr(net, "text_emb", None)
    if isinstance(net, MixDehazeNet) and fusion is not None and not fusion.text_branch:
        full = TextImageFusion(
            fusion.q1.in_channels,
            fusion.text_dim,
            fusion.q1.out_channels,
            fusion.postProj_s.out_channels,
            fusion.mode,
            text_branch=True,
        )
        for key, value in full.state_dict().items():
            if key.split(".")[0] in TEXT_BRANCH_MODULES:
                state[f"text_emb.{key}"] = torch.zeros_like(value)
    return state


def export_state_dict(net: nn.Module, out: Path) -> None:
    """The weights as the authors' scripts save them, with `<out>.sha256` beside them."""
    save_atomic({"state_dict": authors_state_dict(net)}, out, keep=None)
    print(f"wrote {out} and {out.name}.sha256")


def exportable(dehazer: Dehazer) -> Deployable:
    """The checkpoint's network on the CPU with the same weights, built without strips (a loop
    over rows, which a graph with dynamic sizes cannot hold; the same numbers)."""
    cfg = dehazer.cfg
    prompt_emb = None if dehazer.clip is None else dehazer.clip[2]
    speed = dataclasses.replace(speed_for(cfg, torch.device("cpu"), "predict")[0], strips=False)
    text_dim = None if prompt_emb is None else prompt_emb.shape[1]
    net = build_network(cfg, text_dim, speed)
    net.load_state_dict(dehazer.net.state_dict())
    return Deployable(net.eval(), prompt_emb, cfg.clip.mode).eval()


def write_onnx(model: Deployable, out: Path) -> None:
    """torch.onnx's dynamo exporter, H and W of `hazy` dynamic."""
    dim = torch.export.Dim.DYNAMIC
    hazy = torch.rand(1, 3, *TRACE_SIZE)
    args: tuple = (hazy,)
    shapes: dict = {"hazy": {2: dim, 3: dim}}
    if model.prompt_emb is not None:
        k = model.prompt_emb.shape[0]
        args, shapes = (hazy, torch.full((1, k), 1 / k)), {**shapes, "domain": None}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(out),
            dynamo=True,
            input_names=list(shapes),
            output_names=["dehazed"],
            dynamic_shapes=shapes,
            verbose=False,
        )


def finish(traced: Path, out: Path, dehazer: Dehazer) -> None:
    """The exporter's graph as one new file `out` (weights inside), recording what its inputs
    mean for whoever runs it without this code."""
    onnx = require("onnx", "the ONNX export")
    model = onnx.load(str(traced))  # with the weights the exporter may have put beside it
    info = {"model": dehazer.cfg.model.name, "input_range": "[0, 1] RGB"}
    if dehazer.clip is not None:
        clip = dehazer.cfg.clip
        info |= {"domains": list(clip.domains), "clip_arch": clip.arch, "text_feature": clip.mode}
    onnx.helper.set_model_props(model, {"mixcldehazenet": json.dumps(info)})
    onnx.checker.check_model(model)
    create_synced(out, lambda f: onnx.save(model, f))


def check_onnx(path: Path, dehazer: Dehazer) -> list[tuple[tuple[int, int], float]]:
    """ONNX Runtime against predict.py's path in fp32 on random images of CHECK_SIZES, each with
    CLIP's domain of that image; raises ExportCheckError beyond TOLERANCE."""
    ort = require("onnxruntime", "the ONNX export's check")
    # The reference in fp32, as ONNX Runtime computes: autocast would differ by more than the
    # tolerance, and TF32 convolutions on a GPU too.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    reference = Dehazer(dehazer.net, dehazer.cfg, dehazer.clip, precision="none")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    results = []
    for size in CHECK_SIZES:
        img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        probs = dehazer.domain_probs(img)
        feeds = {"hazy": uint8_to_tensor(img)[None].numpy()}
        if probs is not None:
            feeds["domain"] = probs.numpy()
        got = session.run(None, feeds)[0][0]
        diff = float(np.abs(got - reference(img, probs).numpy()).max())
        results.append((size, diff))
        domain = "" if probs is None else ", domain " + " ".join(f"{p:.3f}" for p in probs[0])
        print(f"ONNX Runtime vs PyTorch at {size[1]}x{size[0]}: max |diff| {diff:.2e}{domain}")
        if not diff <= TOLERANCE:
            raise ExportCheckError(
                f"{path}: ONNX Runtime differs from PyTorch by {diff:.2e} (> {TOLERANCE}) at "
                f"{size[1]}x{size[0]}; the graph is not kept"
            )
    return results


def export_onnx(dehazer: Dehazer, out: Path) -> list[tuple[tuple[int, int], float]]:
    """Write the graph beside `out` under a name no other export uses, check it, then rename it
    into place (nothing unchecked is ever at `out`)."""
    require("onnxscript", "the ONNX export")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Temporaries()
    try:
        staged = tmp.new(out)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as traced:
            write_onnx(exportable(dehazer), Path(traced) / "model.onnx")
            finish(Path(traced) / "model.onnx", staged, dehazer)
        results = check_onnx(staged, dehazer)
        os.replace(staged, out)
    finally:
        tmp.remove()
    print(f"wrote {out}")
    return results


def main(argv: list[str] | None = None) -> list[tuple[tuple[int, int], float]]:
    """Export; returns the ONNX check's (size, max |diff|) per image (empty without --onnx)."""
    args = parse_args(argv)
    setup_logging(args.quiet)
    check_targets(args)
    if args.onnx is None:
        net, _, _ = model_from_checkpoint(args.ckpt, args.model, args.config, args.overrides)
        export_state_dict(net, args.state_dict)
        return []
    dehazer = Dehazer.load(args.ckpt, args.model, args.config, args.overrides)
    if args.state_dict is not None:
        export_state_dict(dehazer.net, args.state_dict)
    return export_onnx(dehazer, args.onnx)


if __name__ == "__main__":
    run(main)
