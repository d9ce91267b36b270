"""Does the fusion's attention run in a fused kernel on this device, in every precision, at the
training size and at 4K? A fused kernel never stores the (H*W x 512) attention map.

scaled_dot_product_attention falls back to its math path, which stores the map, whenever no
fused kernel accepts the inputs, and says nothing. Here only the fused backends may run
(torch.nn.attention.sdpa_kernel), so a fallback raises instead. For each precision and size:
the fusion module alone (forward, and backward at the training size) with its time and, on
CUDA, its peak memory next to the size the map would have; each fused backend alone, to show
which accept the inputs; the whole network (forward, backward at the training size); and, at
the training size, the largest difference between the fused attention and the explicit
formula computed in fp32 from the same inputs. Exit status 1 if anything fell back.

Usage: python -m bench.fused_attention [--device cpu] [--model mixcl-s] [--train 16x256]
       [--large 3840x2160] [--precisions none fp16 bf16] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.common import (
    MIB,
    PRECISIONS,
    free_cuda_memory,
    model_args,
    parse_shape,
    parse_size,
    report,
    size_label,
    synchronize,
)
from models import TextImageFusion, build_model
from models.text_fusion import FUSED_HEAD_MULTIPLE, fused_attention, pixel_text_attention
from utils.devices import autocast
from utils.image import to_model_range

# The fused kernels of each device; the math path is left out on purpose.
FUSED_BACKENDS: dict[str, dict[str, SDPBackend]] = {
    "cuda": {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    },
    "cpu": {"flash": SDPBackend.FLASH_ATTENTION},
}
TEXT_DIM = 512


def attempt(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Run `fn`; its time and peak memory (CUDA), or the first line of its error."""
    free_cuda_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    try:
        fn()
        synchronize(device)
    except RuntimeError as e:  # no kernel available, out of memory
        return {"ok": False, "error": str(e).strip().splitlines()[0]}
    r: dict[str, Any] = {"ok": True, "seconds": time.perf_counter() - start}
    if device.type == "cuda":
        r["peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / MIB
    return r


def run_case(
    net: torch.nn.Module,
    fusion: TextImageFusion,
    batch: int,
    hw: tuple[int, int],
    precision: str,
    backward: bool,
    device: torch.device,
) -> dict[str, Any]:
    """Fusion alone, each backend alone, and the whole network, under the fused backends."""
    gen = torch.Generator().manual_seed(0)
    hazy = to_model_range(torch.rand(batch, 3, *hw, generator=gen)).to(device)
    text = torch.randn(batch, 1, TEXT_DIM, generator=gen).to(device)
    backends = FUSED_BACKENDS[device.type]

    def call(module: torch.nn.Module, allowed: list[SDPBackend]) -> Callable[[], None]:
        def run() -> None:
            with sdpa_kernel(allowed), torch.set_grad_enabled(backward):
                with autocast(device, precision):
                    out = module(hazy, text)
                if backward:
                    out.float().mean().backward()

        return run

    element = 4 if precision == "none" else 2
    r: dict[str, Any] = {
        "batch": batch,
        "size": size_label(hw),
        "precision": precision,
        "backward": backward,
        "map_mib": batch * hw[0] * hw[1] * TEXT_DIM * element / MIB,
        "fusion": attempt(call(fusion, list(backends.values())), device),
        "model": attempt(call(net, list(backends.values())), device),
    }
    # Last: a backend probed alone could fail in a way that spoils this process's later work.
    r["backends"] = {n: attempt(call(fusion, [b]), device)["ok"] for n, b in backends.items()}
    return r


def attention_error(precision: str, device: torch.device) -> float:
    """Largest difference between the fused attention (head width 5 padded as the network pads
    it on this device) and the explicit formula in fp32, on random inputs."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(4, n, 5, generator=gen).to(device) for n in (4096, 512, 512))
    low = {"none": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if device.type != "cuda" and precision == "fp16":
        low = torch.float32  # autocast runs fp16 on CUDA only
    multiple = 1 if device.type == "cpu" else FUSED_HEAD_MULTIPLE
    with sdpa_kernel(list(FUSED_BACKENDS[device.type].values())), torch.no_grad():
        fused = fused_attention(q.to(low), k.to(low), v.to(low), multiple).float()
        ref = pixel_text_attention(q.to(low).float(), k.to(low).float(), v.to(low).float())
    return (fused - ref).abs().max().item()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default="mixcl-s")
    parser.add_argument("--train", type=parse_shape, default="16x256", help="batch x patch")
    parser.add_argument("--large", type=parse_size, default="3840x2160", help="inference, WxH")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch, patch = args.train
    cases = [(batch, (patch, patch), True), (1, args.large, False)]
    torch.manual_seed(0)
    net = build_model(args.model, **model_args(args.model, device, {})).to(device)
    fusion = net.text_emb

    results = []
    for precision in args.precisions:
        error = attention_error(precision, device)
        for case_batch, hw, backward in cases:
            net.train(backward)
            r = run_case(net, fusion, case_batch, hw, precision, backward, device)
            if backward:
                r["attention_max_error"] = error
            results.append(r)
            print(
                f"{precision} {case_batch}x{r['size']}: fusion "
                f"{'fused' if r['fusion']['ok'] else r['fusion']['error']}, network "
                f"{'fused' if r['model']['ok'] else r['model']['error']}",
                flush=True,
            )
    all_fused = all(r["fusion"]["ok"] and r["model"]["ok"] for r in results)
    rows = [
        {
            "precision": r["precision"],
            "batch x size": f"{r['batch']}x{r['size']}",
            "backward": str(r["backward"]),
            "fusion": "fused" if r["fusion"]["ok"] else "FELL BACK / FAILED",
            "fusion s": f"{r['fusion'].get('seconds', 0):.3f}",
            "fusion peak MiB": f"{r['fusion'].get('peak_mib', 0):.0f}",
            "map MiB": f"{r['map_mib']:.0f}",
            "backends": " ".join(n for n, ok in r["backends"].items() if ok) or "none",
            "network": "fused" if r["model"]["ok"] else "FELL BACK / FAILED",
            "max error": f"{r['attention_max_error']:.1e}" if "attention_max_error" in r else "",
        }
        for r in results
    ]
    title = (
        f"{args.model} text fusion on {args.device} with only the fused SDPA backends allowed "
        f"({', '.join(FUSED_BACKENDS[args.device])})"
    )
    payload = {"device": args.device, "model": args.model, "all_fused": all_fused}
    payload["results"] = results
    out = report(title, rows, payload, args.threads, args.json)
    if not all_fused:
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    main()
