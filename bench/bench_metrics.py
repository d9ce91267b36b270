"""Seconds per image of each image-quality metric of test.py --metrics, on one CPU image.

Every metric is loaded as test.py loads it (utils.quality.load_metric, weight files from
--metric-weights or the libraries' caches) and scores one synthetic hazy image of --size
(1024x1024) against its clear image: one untimed call, then --repeats timed calls; the table
gives the median and the spread. A metric whose library or weight file is missing is listed
with the reason, not timed. test.py calls each metric twice per image (output and hazy input).
For scale, the network's forward pass at the same size is timed in the same process (--model,
its optimised CPU setting, random weights): "x network" is a metric's time over the network's.

--random-alexnet times LPIPS with a seeded random AlexNet in place of torchvision's weights
file (the same computation; the values mean nothing) where that file is not available.

Usage: python -m bench.bench_metrics [--metrics psnr,fade,...] [--size 1024] [--model mixcl-t]
       [--metric-weights DIR] [--random-alexnet] [--repeats 5] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from bench.bench_inference import inference_call
from bench.common import add_timing_args, parse_size, report, summarize, time_calls
from datasets.synthetic import synthetic_pair
from utils.errors import UserError
from utils.image import uint8_to_tensor
from utils.quality import ALEXNET, METRICS, load_metric, parse_metric_names


def metric_images(hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic (hazy, clear) pair as (1, 3, H, W) tensors in [0, 1]."""
    clear, hazy, _ = synthetic_pair(np.random.default_rng(0), *hw)
    return uint8_to_tensor(hazy)[None], uint8_to_tensor(clear)[None]


def random_alexnet(folder: Path) -> Path:
    """torchvision's AlexNet with seeded random weights, as its weight file."""
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), folder / ALEXNET.name)
    return folder


def measure(name: str, weights: Path | None, images: tuple, repeats: int) -> dict[str, Any]:
    """Seconds per call of metric `name`, or why it could not be loaded."""
    try:
        scorer = load_metric(name, weights, torch.device("cpu"))
    except UserError as e:
        return {"metric": name, "skipped": str(e)}
    hazy, clear = images
    reference = clear if METRICS[name].needs_gt else None
    with torch.no_grad():  # as test.py scores
        timing = summarize(time_calls(lambda: scorer(hazy, reference), repeats, warmup=1))
    return {"metric": name, **timing}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=parse_metric_names, default=list(METRICS))
    parser.add_argument("--size", type=parse_size, default="1024", help="image side, or WxH")
    parser.add_argument("--metric-weights", type=Path, help="as test.py --metric-weights")
    parser.add_argument("--random-alexnet", action="store_true", help="LPIPS without its file")
    parser.add_argument("--model", default="mixcl-t", help="the network timed for scale")
    add_timing_args(parser, repeats=5, unit="calls")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    images = metric_images(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_alexnet(Path(tmp)) if args.random_alexnet else args.metric_weights
        results = []
        for name in args.metrics:
            results.append(measure(name, weights, images, args.repeats))
            print(f"{name}: {results[-1].get('median_s', 'not timed')}", flush=True)
    call = inference_call(args.model, "optimised", args.size, torch.device("cpu"), "none")
    network = {"model": args.model, **summarize(time_calls(call, args.repeats, warmup=1))}
    print(f"{args.model}: {network['median_s']}", flush=True)

    rows = [
        {
            "metric": r["metric"],
            "s/image (median)": f"{r['median_s']:.3f}" if "median_s" in r else "-",
            "spread": f"{100 * r['spread']:.0f}%" if "spread" in r else "-",
            "x network": f"{r['median_s'] / network['median_s']:.2f}" if "median_s" in r else "-",
            "note": r.get("skipped", "").partition(":")[0],  # the whole message is in the JSON
        }
        for r in results
    ]
    rows.append(
        {
            "metric": f"network: {args.model}, optimised",
            "s/image (median)": f"{network['median_s']:.3f}",
            "spread": f"{100 * network['spread']:.0f}%",
            "x network": "1.00",
            "note": "",
        }
    )
    h, w = args.size
    title = f"Metrics on one {w}x{h} image on CPU, median of {args.repeats} calls"
    payload = {
        "size": f"{w}x{h}",
        "repeats": args.repeats,
        "random_alexnet": args.random_alexnet,
        "results": results,
        "network": network,
    }
    return report(title, rows, payload, args.threads, args.json)


if __name__ == "__main__":
    main()
