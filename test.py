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
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import NamedTuple

from utils.cli import (
    add_checkpoint_args,
    add_overrides,
    entry_parser,
    non_negative_int,
    parse_before_imports,
    parse_with_overrides,
    run,
    setup_logging,
)
from utils.quality import METRICS, default_metrics, parse_metric_names


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
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace earlier results in --out (other files there are kept), or discard "
        "another evaluation's unfinished progress there",
    )
    p.add_argument(
        "--metric-workers",
        type=non_negative_int,
        help="processes that compute the CPU-side metrics (FADE, CIEDE2000) while the network "
        "runs (default: with a GPU the CPUs less one, at most 8; on the CPU those torch's "
        "threads leave free, usually none; 0: in this process)",
    )
    p.add_argument(
        "--score-cache",
        type=Path,
        help="folder of the hazy inputs' cached scores (default: cache/scores)",
    )
    add_overrides(p)
    return parse_with_overrides(p, argv)


def _metric_names(text: str) -> list[str]:
    try:
        return parse_metric_names(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# The arguments are read first (utils.cli.parse_before_imports), then the machinery.
parse_before_imports(__name__, parse_args)

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import PairedDataset
from networks import inference_network, model_from_checkpoint, pick_device
from predict import check_memory
from utils.clip_domains import split_text_features
from utils.config import LOCATION_KEYS, WEIGHTS_KEYS, Config, config_to_dict, covers
from utils.distributed import DistInfo, barrier, cleanup, init_distributed, main_first
from utils.domain_labels import domain_confusion, labels_file, read_domain_labels
from utils.errors import DataError, name_list
from utils.evaluation import ResultsFolder, identity
from utils.image import from_model_range, png_names
from utils.scoring import (
    Images,
    ScoreCache,
    Scoring,
    WithDigests,
    default_workers,
    load_scorers,
    metric_version,
)
from utils.weights import weights_id


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
            named = weights_id(key, new)
            if named != weights_id(key, old):
                settings.append(f"{key}={named}")
        elif not covers(LOCATION_KEYS, key):
            settings.append(f"{key}={new}")
    if settings:
        name += "_" + re.sub(r"[^\w.=-]+", "-", "_".join(settings))
    return Path("results") / f"{ckpt.parent.name}_{ckpt.stem}" / name


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


def check_memory_of(dataset: PairedDataset, cfg: Config, device: torch.device) -> None:
    """Refuse, from the file headers and before any image is decoded, images too large to
    dehaze whole in the free memory (the protocol evaluates whole images)."""
    too_large = []
    by_size = sorted(dataset.sizes.items(), key=lambda item: -item[1][0] * item[1][1])
    for name, (h, w) in by_size:
        try:
            check_memory(h, w, cfg.model.name, device, cfg.precision.eval)
        except MemoryError:
            too_large.append(f"{name} ({w}x{h})")
            continue
        break  # the others are smaller
    if too_large:
        raise DataError(
            f"{len(too_large)} image(s) in {dataset.split_dir / 'hazy'} too large to dehaze "
            f"whole in the free {device.type} memory: {name_list(too_large)}; the protocol "
            "evaluates whole images: free memory, use a larger machine, or move them out of "
            "the split"
        )


def attach_domains(
    cfg: Config, dataset: PairedDataset, info: DistInfo, device: torch.device
) -> tuple[dict[str, str], dict[str, str]]:
    """Give the split its CLIP text features (if the network takes them; rank 0 classifies,
    the others read its cache); returns CLIP's domain of each image and the true domains of the
    split's labels file (empty without one)."""
    domains = {}
    if cfg.model.needs_text:
        args = (cfg.clip, dataset.split_dir, dataset.names, str(device))
        features, cache = main_first(info, lambda: split_text_features(*args))
        dataset.set_text_features(features)
        domains = cache.domains
    labels_path = labels_file(dataset.split_dir)
    true_domains = {}
    if labels_path.is_file():
        true_domains = read_domain_labels(labels_path, cfg.clip.domains, dataset.names)
    return domains, true_domains


def evaluation_of(
    args: argparse.Namespace, cfg: Config, dataset: PairedDataset, versions: dict[str, str]
) -> dict:
    """What this evaluation is of (utils.evaluation.identity)."""
    labels = labels_file(dataset.split_dir)
    return identity(
        Path(args.ckpt),
        config_to_dict(cfg),
        versions,
        dataset.split_dir,
        dataset.folders,
        dataset.names,
        labels if labels.is_file() else None,
        args.save_images,
    )


def score_split(
    run_net: Callable,
    batches: Iterable[dict],
    scoring: Scoring,
    stage: Callable[[str, torch.Tensor], None] | None,
    device: torch.device,
) -> Iterator[tuple[str, dict]]:
    """Dehaze every image of `batches`; yields (name, scores) of each as soon as it is scored.
    `stage` writes the dehazed image, before its scores say that the image is done."""
    for batch in batches:
        hazy = batch["hazy"].to(device)
        text = batch["text"].to(device) if "text" in batch else None
        out01 = from_model_range(run_net(hazy, text))
        gt01 = from_model_range(batch["gt"].to(device)) if "gt" in batch else None
        name = batch["name"][0]
        if stage is not None:
            stage(name, out01[0].cpu())
        gt_sha = batch["gt_sha256"][0] if "gt_sha256" in batch else None
        hazy_sha = batch["hazy_sha256"][0]
        yield from scoring.submit(
            Images(name, out01, from_model_range(hazy), gt01, hazy_sha, gt_sha)
        )
    yield from scoring.drain()


class Evaluation(NamedTuple):
    """One evaluation's network, data and results folder, as every rank sets them up (a named
    tuple: test.py is loaded by path in the tests, where a dataclass cannot find its module)."""

    net: torch.nn.Module
    cfg: Config
    device: torch.device
    metrics: list[str]
    dataset: PairedDataset
    folder: ResultsFolder
    pngs: dict[str, str]


def set_up(args: argparse.Namespace, info: DistInfo) -> tuple[Evaluation, Scoring]:
    """The network, the split (judged by its file headers), the metrics' scorers and the
    results folder ready to continue or start this evaluation; refuses what would be lost."""
    load = partial(model_from_checkpoint, args.ckpt, args.model, args.config, args.overrides)
    net, cfg, changes = main_first(info, load)
    root, split = data_to_test(args, cfg)
    out_dir = results_dir(args, root, split, changes)
    has_gt = (root / split / "GT").is_dir()  # no GT folder: real haze, no-reference metrics
    metrics = metrics_to_compute(args, root / split, has_gt)
    device = pick_device()
    workers = default_workers(device) if args.metric_workers is None else args.metric_workers
    scorers = load_scorers(metrics, args.metric_weights, device, workers)  # a missing file: here
    dataset = PairedDataset(root, split, "test", ground_truth=has_gt)
    check_memory_of(dataset, cfg, device)
    pngs = png_names(dataset.names)
    folder = ResultsFolder(out_dir, pngs.values() if args.save_images else ())
    versions = {m: metric_version(m, args.metric_weights) for m in metrics}
    wanted = evaluation_of(args, cfg, dataset, versions)
    discard = folder.check(wanted, args.overwrite)
    barrier(info)  # every rank has looked before rank 0 changes anything
    if info.is_main:
        folder.start(wanted, discard)
    barrier(info)
    cache = ScoreCache(args.score_cache, versions, device)
    scoring = Scoring(metrics, scorers, args.metric_weights, workers, cache)
    return Evaluation(net, cfg, device, metrics, dataset, folder, pngs), scoring


def score_remaining(
    ev: Evaluation, scoring: Scoring, info: DistInfo, save_images: bool
) -> dict[str, str]:
    """Score this rank's share of the images not scored yet, each row logged as it is scored;
    returns the true domain of each image (empty without a labels file)."""
    scored = ev.folder.scored()
    barrier(info)  # every rank splits the same images: none is scored before all have looked
    domains, true_domains = attach_domains(ev.cfg, ev.dataset, info, ev.device)
    todo = [i for i, n in enumerate(ev.dataset.names) if n not in scored]
    if scored and info.is_main:
        print(f"continuing in {ev.folder.out}: {len(scored)} of {len(ev.dataset)} images scored")
    mine = WithDigests(ev.dataset, todo[info.rank :: info.world_size])
    workers = min(4, ev.cfg.data.num_workers, len(mine))  # none that would decode nothing
    loader = DataLoader(mine, batch_size=1, num_workers=workers)
    split = ev.dataset.split_dir
    shown = tqdm(
        loader,
        f"testing {split.parent.name}/{split.name}",
        disable=None if info.is_main else True,
        dynamic_ncols=True,
    )
    stage = None
    if save_images:
        stage = lambda name, image: ev.folder.stage_image(ev.pngs[name], image)  # noqa: E731
    log = ev.folder.row_log(info.rank)
    try:
        run_net = inference_network(ev.net, ev.cfg, ev.device)
        for name, scores in score_split(run_net, shown, scoring, stage, ev.device):
            true = true_domains.get(name, "")
            log.append(
                {"name": name, "domain": domains.get(name, ""), **scores, "true_domain": true}
            )
    finally:
        log.close()
    return true_domains


def write_results(args: argparse.Namespace, ev: Evaluation, true_domains: dict) -> dict:
    """metrics.json and per_image.csv from every image's logged row, installed in the results
    folder; returns the summary."""
    scored = ev.folder.scored()
    rows = [scored[n] for n in ev.dataset.names]
    summary = summarise(rows, ev.metrics)
    split_dir = ev.dataset.split_dir
    if true_domains:
        labels = labels_file(split_dir)
        summary.update(label_summary(rows, ev.metrics, ev.cfg.clip.domains, labels))
    summary.update(checkpoint=str(args.ckpt), model=ev.cfg.model.name, data=str(split_dir))
    summary.update(overrides=list(args.overrides), config=config_to_dict(ev.cfg))
    ev.folder.finish(rows, summary)
    print_summary(summary, f"{split_dir.parent.name}/{split_dir.name}", ev.folder.out)
    return summary


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    """Evaluate; returns the summary written to metrics.json (under torchrun the ranks share
    the images, and rank 0 writes and returns it; the others return an empty dict)."""
    args = parse_args(argv)
    setup_logging(args.quiet)
    info = init_distributed()
    try:
        ev, scoring = set_up(args, info)
        with scoring:
            true_domains = score_remaining(ev, scoring, info, args.save_images)
        barrier(info)
        return write_results(args, ev, true_domains) if info.is_main else {}
    finally:
        cleanup(info)


if __name__ == "__main__":
    run(main)
