"""CLIP zero-shot domain classification throughput (images per second), tiny config.

The repository's tiny-clip (random weights; its speed does not depend on them) classifies
random RGB images with utils.clip_domains.classify. "images" feeds uint8 arrays, so the time
includes CLIP's preprocessing (resize, crop, normalise); "tensors" feeds an already
preprocessed batch, the encoder alone. Each batch size is warmed up once and timed `repeats`
times; the table gives the median and the spread.

Usage: python -m bench.bench_clip [--batches 1 8 32] [--side 480] [--repeats 5]
       [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.common import report, time_calls
from utils.cli import positive_int
from utils.clip_domains import classify, domain_prompts, load_clip, prompt_embeddings

ARCH = "tiny-clip"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="+", type=positive_int, default=[1, 8, 32])
    parser.add_argument("--side", type=positive_int, default=480, help="side of the input images")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed calls per setting")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, preprocess, tokenizer = load_clip(ARCH, None)
    prompt_emb = prompt_embeddings(model, tokenizer, domain_prompts())
    rng = np.random.default_rng(0)
    results = []
    for batch in args.batches:
        images = [
            rng.integers(0, 256, (args.side, args.side, 3), dtype=np.uint8) for _ in range(batch)
        ]
        tensors = torch.stack([preprocess(Image.fromarray(im)) for im in images])
        for inputs, what in ((images, "images"), (tensors, "tensors")):
            timing = time_calls(
                lambda x=inputs: classify(model, preprocess, x, prompt_emb), args.repeats
            )
            r = {
                "input": what,
                "batch": batch,
                **timing.summary(),
                "images_per_s": batch / timing.median,
            }
            results.append(r)
            print(f"{what} batch {batch}: {r['images_per_s']:.1f} images/s", flush=True)

    rows = [
        {
            "input": r["input"],
            "batch": str(r["batch"]),
            "images/s (median)": f"{r['images_per_s']:.1f}",
            "median s": f"{r['median_s']:.4f}",
            "spread": f"{100 * r['spread']:.0f}%",
        }
        for r in results
    ]
    title = (
        f"{ARCH} zero-shot classification, {args.side}x{args.side} images, "
        f"{args.threads} threads, median of {args.repeats}"
    )
    payload = {"arch": ARCH, "side": args.side, "repeats": args.repeats, "results": results}
    return report(title, rows, payload, args.threads, args.json)


if __name__ == "__main__":
    main()
