"""Evaluate a checkpoint on a test split with the published protocol (whole images, batch 1).

python test.py --ckpt runs/reside6k-mixcl-s/best.pth
python test.py --ckpt MixCLDehazeNet-S.pth --model mixcl-s      # the authors' weights
python test.py --ckpt best.pth --data-dir data/my-set --save-images
python test.py --ckpt best.pth --data-dir data/RTTS --split test --metrics fade,brisque

A split without a GT folder (real hazy photos) is scored with no-reference metrics
(docs/EVALUATION.md); every metric also scores the hazy input, as the baseline.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import PairedDataset
from networks import inference_network, model_from_checkpoint, pick_device
from utils.cli import (
    add_checkpoint_args,
    add_overrides,
    entry_parser,
    parse_with_overrides,
    run,
    setup_logging,
)
from utils.clip_domains import split_text_features
from utils.config import LOCATION_KEYS, WEIGHTS_KEYS, Config, config_to_dict, covers
from utils.domain_labels import domain_confusion, labels_file, read_domain_labels
from utils.errors import DataError, OutputExistsError
from utils.image import from_model_range, png_names, write_rgb
from utils.quality import METRICS, Scorer, default_metrics, load_metrics, parse_metric_names
from utils.weights import weights_id

RESULT_FILES = ("per_image.csv", "metrics.json", "images")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = entry_parser(__doc__)
    add_checkpoint_args(p, "YAML config for released weights (CLIP and data settings)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data-dir", help="dataset root holding <split>/GT and <split>/hazy")
    data.add_argument("--dataset", help="dataset name beside the configured one, e.g. RESIDE-IN")
    p.add_argument("--split", help="split folder (default: the config's data.test_split)")
    p.add_argument(
        "--out",
        help="result folder (default: results/<run>_<ckpt>/<dataset>-<split>, followed by the "
        "settings the overrides change)",
    )
    p.add_argument(
        "--metrics",
        type=_metric_names,
        help="comma-separated metrics (default: psnr,ssim with ground truth, fade without); "
        f"known: {', '.join(METRICS)}",
    )
    p.add_argument(
        "--metric-weights",
        type=Path,
        help="folder of the metrics' weight files (default: each library's own cache folder)",
    )
    p.add_argument("--save-images", action="store_true", help="also write the dehazed PNGs")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    add_overrides(p)
    return parse_with_overrides(p, argv)


def _metric_names(text: str) -> list[str]:
    try:
        return parse_metric_names(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def data_to_test(args: argparse.Namespace, cfg: Config) -> tuple[Path, str]:
    """The dataset root and split to evaluate; a missing one is named with where it came from."""
    root = Path(args.data_dir or cfg.data.root)
    if args.dataset:
        root = Path(cfg.data.root).parent / args.dataset
    split = args.split or cfg.data.test_split
    if not (root / split).is_dir():
        origin = "--data-dir" if args.data_dir else "--dataset" if args.dataset else "data.root"
        raise DataError(
            f"test split not found: {root / split} (from {origin}; relative paths are relative "
            f"to the folder you run from, {Path.cwd()}); pass --data-dir DIR [--split NAME]"
        )
    return root, split


def results_dir(args: argparse.Namespace, root: Path, split: str, changes: dict) -> Path:
    """--out, or a folder per checkpoint, dataset and the settings the overrides change: file
    locations are left out, but weights other than the checkpoint's are named by identity."""
    if args.out:
        return Path(args.out)
    ckpt = Path(args.ckpt).resolve()
    name = f"{root.resolve().name}-{split}"
    settings = []
    for key, (old, new) in sorted(changes.items()):
        if covers(WEIGHTS_KEYS, key):
            if weights_id(key, new) != weights_id(key, old):
                settings.append(f"{key}={weights_id(key, new)}")
        elif not covers(LOCATION_KEYS, key):
            settings.append(f"{key}={new}")
    if settings:
        name += "_" + re.sub(r"[^\w.=-]+", "-", "_".join(settings))
    return Path("results") / f"{ckpt.parent.name}_{ckpt.stem}" / name


def clear_results(out_dir: Path, overwrite: bool) -> None:
    """Refuse to mix with earlier results in `out_dir`, or remove them with --overwrite."""
    earlier = [out_dir / f for f in RESULT_FILES if (out_dir / f).exists()]
    if earlier and not overwrite:
        raise OutputExistsError(
            f"{out_dir} already holds results ({', '.join(p.name for p in earlier)}): pass "
            "--overwrite to replace them, or --out DIR"
        )
    for path in earlier:
        print(f"replacing {path}")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _means(rows: list[dict], metrics: Sequence[str], prefix: str = "") -> dict:
    return {m: _mean([r[prefix + m] for r in rows]) for m in metrics}


def _per_domain(rows: list[dict], key: str, metrics: Sequence[str]) -> dict:
    """Means per value of the column `key` ("domain" or "true_domain"), empty values left out."""
    by_domain: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r[key]:
            by_domain[r[key]].append(r)
    return {d: {**_means(rs, metrics), "count": len(rs)} for d, rs in sorted(by_domain.items())}


def summarise(rows: list[dict], metrics: Sequence[str]) -> dict:
    """Means over images, overall and per predicted domain (the reported figures), and which
    way each metric is better."""
    hazy = {f"hazy_{m}": v for m, v in _means(rows, metrics, "hazy_").items()}
    return {
        **_means(rows, metrics),
        "count": len(rows),
        **hazy,
        "better": {m: METRICS[m].better for m in metrics},
        "per_domain": _per_domain(rows, "domain", metrics),
    }


def score_images(
    scorers: dict[str, Scorer], output: torch.Tensor, hazy: torch.Tensor, gt: torch.Tensor | None
) -> dict[str, float]:
    """Every metric of the output, then of the hazy input (`hazy_<metric>`, the baseline).
    Metrics other than PSNR/SSIM see the 8-bit images, as saved (docs/PROTOCOL.md)."""
    scores: dict[str, dict[str, float]] = {"": {}, "hazy_": {}}
    for name, scorer in scorers.items():
        as_saved = _eight_bit if METRICS[name].eight_bit else lambda x: x
        ref = None if gt is None else as_saved(gt)
        for prefix, image in (("", output), ("hazy_", hazy)):
            scores[prefix][prefix + name] = scorer(as_saved(image), ref)
    return {**scores[""], **scores["hazy_"]}


def _eight_bit(image: torch.Tensor) -> torch.Tensor:
    """The image as an 8-bit file holds it (write_rgb's rounding), in [0, 1]."""
    return (image.clamp(0, 1) * 255).round() / 255


def label_summary(
    rows: list[dict], metrics: Sequence[str], domains: Sequence[str], labels_path: Path
) -> dict:
    """Means per true domain (from the split's labels file) and, when CLIP classified the
    images, its zero-shot accuracy against the labels and the confusion between domains."""
    out: dict = {
        "labels": str(labels_path),
        "per_true_domain": _per_domain(rows, "true_domain", metrics),
    }
    if any(r["domain"] for r in rows):
        true = {r["name"]: r["true_domain"] for r in rows}
        predicted = {r["name"]: r["domain"] for r in rows}
        out["clip_domains"] = domain_confusion(true, predicted, domains)
    return out


def print_summary(summary: dict, title: str, out_dir: Path) -> None:
    """The printed summary: overall, per CLIP domain and, with a labels file, per true domain
    and CLIP's accuracy against the labels."""
    metrics = list(summary["better"])

    def values(means: dict, prefix: str = "") -> str:
        shown = (METRICS[m] for m in metrics)
        return "  ".join(f"{m.title} {means[prefix + m.name]:.{m.digits}f}" for m in shown)

    better = ", ".join(f"{METRICS[m].title} {b}" for m, b in summary["better"].items())
    print(f"{title}: {summary['count']} images, {summary['model']} (better: {better})")
    print(f"  dehazed    {values(summary)}")
    print(f"  hazy input {values(summary, 'hazy_')}")
    per_domain = [("", summary["per_domain"]), ("true ", summary.get("per_true_domain", {}))]
    for kind, means in per_domain:
        for domain, m in means.items():
            print(f"  {kind}{domain:<10} {values(m)}  ({m['count']} images)")
    if "clip_domains" in summary:
        c = summary["clip_domains"]
        confusion = ", ".join(
            f"{t}->{p} {n}" for t, row in c["confusion"].items() for p, n in row.items()
        )
        print(
            f"  CLIP domains vs {summary['labels']}: {c['accuracy']:.1%} correct "
            f"({c['correct']}/{c['count']}; true->predicted: {confusion})"
        )
    print(f"results in {out_dir}")


def metrics_to_compute(args: argparse.Namespace, split_dir: Path, has_gt: bool) -> list[str]:
    """--metrics, or the defaults for the split; a metric that needs ground truth on a split
    without a GT folder is refused."""
    metrics = args.metrics or default_metrics(has_gt)
    need_gt = [m for m in metrics if METRICS[m].needs_gt]
    if need_gt and not has_gt:
        no_ref = ",".join(m.name for m in METRICS.values() if not m.needs_gt)
        raise DataError(
            f"{', '.join(need_gt)} need ground truth, and {split_dir / 'GT'} does not exist: "
            f"choose no-reference metrics (--metrics NAME,... from {no_ref})"
        )
    return metrics


def open_test_split(
    cfg: Config, root: Path, split: str, device: torch.device, has_gt: bool
) -> tuple[PairedDataset, dict[str, str], dict[str, str]]:
    """The split (hazy images only, without ground truth) with its CLIP text features (if
    the network takes them), CLIP's domain of each image, and the true domains of the split's
    labels file (empty without one)."""
    dataset, domains = PairedDataset(root, split, "test", ground_truth=has_gt), {}
    if cfg.model.needs_text:
        features, cache = split_text_features(cfg.clip, root / split, dataset.names, str(device))
        dataset.set_text_features(features)
        domains = cache.domains
    labels_path = labels_file(root / split)
    true_domains = {}
    if labels_path.is_file():
        true_domains = read_domain_labels(labels_path, cfg.clip.domains, dataset.names)
    return dataset, domains, true_domains


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    """Evaluate; returns the summary written to metrics.json."""
    args = parse_args(argv)
    setup_logging(args.quiet)
    net, cfg, changes = model_from_checkpoint(args.ckpt, args.model, args.config, args.overrides)
    root, split = data_to_test(args, cfg)
    out_dir = results_dir(args, root, split, changes)
    has_gt = (root / split / "GT").is_dir()  # no GT folder: real haze, no-reference metrics
    metrics = metrics_to_compute(args, root / split, has_gt)
    device = pick_device()
    scorers = load_metrics(metrics, args.metric_weights, device)  # a missing file fails here
    clear_results(out_dir, args.overwrite)
    run_net = inference_network(net, cfg, device)
    dataset, domains, true_domains = open_test_split(cfg, root, split, device, has_gt)
    loader = DataLoader(dataset, batch_size=1, num_workers=min(4, cfg.data.num_workers))

    out_dir.mkdir(parents=True, exist_ok=True)
    output_names = png_names(dataset.names)
    rows = []
    for batch in tqdm(loader, f"testing {root.name}/{split}", disable=None, dynamic_ncols=True):
        hazy = batch["hazy"].to(device)
        text = batch["text"].to(device) if "text" in batch else None
        out01 = from_model_range(run_net(hazy, text))
        gt01 = from_model_range(batch["gt"].to(device)) if "gt" in batch else None
        name = batch["name"][0]
        scores = score_images(scorers, out01, from_model_range(hazy), gt01)
        rows.append(
            {
                "name": name,
                "domain": domains.get(name, ""),
                **scores,
                "true_domain": true_domains.get(name, ""),
            }
        )
        if args.save_images:
            write_rgb(out_dir / "images" / output_names[name], out01[0].cpu())

    with open(out_dir / "per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows, metrics)
    if true_domains:
        labels = labels_file(root / split)
        summary.update(label_summary(rows, metrics, cfg.clip.domains, labels))
    summary.update(checkpoint=str(args.ckpt), model=cfg.model.name, data=str(root / split))
    summary.update(overrides=list(args.overrides), config=config_to_dict(cfg))
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary, f"{root.name}/{split}", out_dir)
    return summary


if __name__ == "__main__":
    run(main)
