"""Evaluate a checkpoint on a test split with the published protocol (whole images, batch 1).

python test.py --ckpt runs/reside6k-mixcl-s/best.pth
python test.py --ckpt MixCLDehazeNet-S.pth --model mixcl-s      # the authors' weights
python test.py --ckpt best.pth --data-dir data/my-set --save-images
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import PairedDataset
from utils.builders import (
    domain_text_features,
    inference_network,
    model_from_checkpoint,
    needs_text,
    pick_device,
)
from utils.cli import run
from utils.config import config_to_dict
from utils.domain_labels import domain_confusion, labels_file, read_domain_labels
from utils.image import from_model_range, write_rgb
from utils.metrics import psnr, ssim


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint from train.py, or released weights")
    p.add_argument("--model", help="model name for released weights (e.g. mixcl-s)")
    p.add_argument("--config", help="YAML config for released weights (CLIP and data settings)")
    p.add_argument("--data-dir", help="dataset root holding <split>/GT and <split>/hazy")
    p.add_argument("--dataset", help="dataset name beside the configured one, e.g. RESIDE-IN")
    p.add_argument("--split", help="split folder (default: the config's data.test_split)")
    p.add_argument("--out", help="result folder (default: results/<run>_<ckpt>/<dataset>-<split>)")
    p.add_argument("--save-images", action="store_true", help="also write the dehazed PNGs")
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    return p.parse_intermixed_args(argv)


def png_names(names: list[str]) -> dict[str, str]:
    """Output file per input: `a.jpg` -> `a.png`, unless that collides with another input."""
    stems = Counter(Path(n).stem for n in names)
    return {n: f"{Path(n).stem if stems[Path(n).stem] == 1 else n}.png" for n in names}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _per_domain(rows: list[dict], key: str) -> dict:
    """Means per value of the column `key` ("domain" or "true_domain"), empty values left out."""
    by_domain: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r[key]:
            by_domain[r[key]].append(r)
    return {
        d: {
            "psnr": _mean([r["psnr"] for r in rs]),
            "ssim": _mean([r["ssim"] for r in rs]),
            "count": len(rs),
        }
        for d, rs in sorted(by_domain.items())
    }


def summarise(rows: list[dict]) -> dict:
    """Means over images, overall and per predicted domain (the reported figures)."""
    return {
        "psnr": _mean([r["psnr"] for r in rows]),
        "ssim": _mean([r["ssim"] for r in rows]),
        "count": len(rows),
        "hazy_psnr": _mean([r["hazy_psnr"] for r in rows]),
        "hazy_ssim": _mean([r["hazy_ssim"] for r in rows]),
        "per_domain": _per_domain(rows, "domain"),
    }


def label_summary(rows: list[dict], domains: Sequence[str], labels_path: Path) -> dict:
    """Means per true domain (from the split's labels file) and, when CLIP classified the
    images, its zero-shot accuracy against the labels and the confusion between domains."""
    out: dict = {"labels": str(labels_path), "per_true_domain": _per_domain(rows, "true_domain")}
    if any(r["domain"] for r in rows):
        true = {r["name"]: r["true_domain"] for r in rows}
        predicted = {r["name"]: r["domain"] for r in rows}
        out["clip_domains"] = domain_confusion(true, predicted, domains)
    return out


def print_label_summary(report: dict) -> None:
    """The true-domain lines of the printed summary."""
    for domain, m in report["per_true_domain"].items():
        print(
            f"  true {domain:<10} PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  "
            f"({m['count']} images)"
        )
    if "clip_domains" in report:
        c = report["clip_domains"]
        confusion = ", ".join(
            f"{t}->{p} {n}" for t, row in c["confusion"].items() for p, n in row.items()
        )
        print(
            f"  CLIP domains vs {report['labels']}: {c['accuracy']:.1%} correct "
            f"({c['correct']}/{c['count']}; true->predicted: {confusion})"
        )


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    """Evaluate; returns the summary written to metrics.json."""
    args = parse_args(argv)
    net, cfg = model_from_checkpoint(args.ckpt, args.model, args.config, args.overrides)
    device = pick_device()
    run_net = inference_network(net, cfg, device)

    root = Path(args.data_dir or cfg.data.root)
    if args.dataset:
        root = Path(cfg.data.root).parent / args.dataset
    split = args.split or cfg.data.test_split

    text_features, domains = None, {}
    if needs_text(cfg):
        text_features, cache = domain_text_features(cfg, root / split, device=str(device))
        domains = cache.domains
    dataset = PairedDataset(root, split, "test", text_features=text_features)
    labels_path = labels_file(root / split)
    true_domains = {}
    if labels_path.is_file():
        true_domains = read_domain_labels(labels_path, cfg.clip.domains, dataset.names)
    loader = DataLoader(dataset, batch_size=1, num_workers=min(4, cfg.data.num_workers))

    ckpt = Path(args.ckpt)
    default_out = Path("results") / f"{ckpt.parent.name}_{ckpt.stem}" / f"{root.name}-{split}"
    out_dir = Path(args.out or default_out)
    out_dir.mkdir(parents=True, exist_ok=True)
    output_names = png_names(dataset.names)
    rows = []
    for batch in tqdm(loader, desc=f"testing {root.name}/{split}", dynamic_ncols=True):
        hazy, gt = batch["hazy"].to(device), batch["gt"].to(device)
        text = batch["text"].to(device) if "text" in batch else None
        out01 = from_model_range(run_net(hazy, text))
        gt01, hazy01 = from_model_range(gt), from_model_range(hazy)
        name = batch["name"][0]
        rows.append(
            {
                "name": name,
                "domain": domains.get(name, ""),
                "psnr": psnr(out01, gt01).item(),
                "ssim": ssim(out01, gt01).item(),
                "hazy_psnr": psnr(hazy01, gt01).item(),
                "hazy_ssim": ssim(hazy01, gt01).item(),
                "true_domain": true_domains.get(name, ""),
            }
        )
        if args.save_images:
            write_rgb(out_dir / "images" / output_names[name], out01[0].cpu())

    with open(out_dir / "per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows)
    if true_domains:
        summary.update(label_summary(rows, cfg.clip.domains, labels_path))
    summary.update(checkpoint=str(args.ckpt), model=cfg.model.name, data=str(root / split))
    summary.update(config=config_to_dict(cfg), overrides=list(args.overrides))
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")

    print(f"{root.name}/{split}: {summary['count']} images, {cfg.model.name}")
    print(f"  dehazed    PSNR {summary['psnr']:.2f} dB  SSIM {summary['ssim']:.4f}")
    print(f"  hazy input PSNR {summary['hazy_psnr']:.2f} dB  SSIM {summary['hazy_ssim']:.4f}")
    for domain, m in summary["per_domain"].items():
        print(
            f"  {domain:<10} PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  ({m['count']} images)"
        )
    if true_domains:
        print_label_summary(summary)
    print(f"results in {out_dir}")
    return summary


if __name__ == "__main__":
    run(main)
