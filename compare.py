"""Compare test.py result folders: is a difference larger than the noise?

python compare.py BASELINE_RESULT RUN_RESULT [RUN_RESULT ...] [--out DIR]

Each RESULT is a folder written by test.py (per_image.csv, metrics.json); the first is the
baseline. Prints a markdown report: the mean of every metric the results share (PSNR/SSIM, or
FADE, LPIPS, ... each with the direction that is better) overall and per domain, the paired
per-image difference of every run against the baseline with a bootstrap confidence interval,
the spread of runs repeated with other seeds, and CLIP's zero-shot accuracy where the data has
true domains. Writes the report, CSV and JSON files and PNG plots to --out.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import re
from pathlib import Path

from utils.cli import entry_parser, parse_before_imports, run, setup_logging


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = entry_parser(__doc__)
    p.add_argument(
        "results", nargs="+", help="result folders of test.py; the first is the baseline"
    )
    p.add_argument(
        "--out", help="folder for the report, CSV/JSON and PNGs (default under results/)"
    )
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level (0.95)")
    p.add_argument("--resamples", type=int, default=9999, help="bootstrap resamples (9999)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap random seed (0)")
    args = p.parse_args(argv)
    if not 0 < args.confidence < 1:
        p.error("--confidence must be between 0 and 1")
    if args.resamples < 1:
        p.error("--resamples must be positive")
    return args


# The arguments are read first (utils.cli.parse_before_imports), then the machinery.
parse_before_imports(__name__, parse_args)

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from utils.comparison import (
    Bootstrap,
    ComparisonError,
    Result,
    build_report,
    load_results,
)
from utils.quality import METRICS


def validation_curves(results: list[Result]) -> tuple[dict[str, list], list[str]]:
    """Validation PSNR per epoch of each run, from the TensorBoard events of the run folder
    that holds the tested checkpoint; and a note for each run without them."""
    curves, notes = {}, []
    for r in results:
        ckpt = r.metrics.get("checkpoint")
        if not ckpt:
            notes.append(f"{r.label}: no metrics.json naming the checkpoint")
            continue
        events = Path(ckpt).parent / "tensorboard"
        if not any(events.glob("events.out.tfevents.*")):
            notes.append(f"{r.label}: no TensorBoard events in {events}")
            continue
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "val/psnr" not in acc.Tags()["scalars"]:
            notes.append(f"{r.label}: no val/psnr in {events}")
            continue
        curves[r.label] = [[e.step, e.value] for e in acc.Scalars("val/psnr")]
    return curves, notes


def _num(x: float | None, digits: int, sign: bool = False) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    if sign and x != 0 and abs(x) < 0.5 * 10**-digits:
        return f"{x:+.2g}"  # a difference too small for `digits` decimals, yet not zero
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ci(row: dict, m: str, digits: int) -> str:
    low, high = row[f"d_{m}_low"], row[f"d_{m}_high"]
    if low is None:
        return "n/a"
    mark = "*" if row[f"d_{m}_method"] == "percentile" else ""
    return f"[{_num(low, digits, True)}, {_num(high, digits, True)}]{mark}"


def _table(header: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(r) + " |" for r in (header, align, *rows)]


def _source_text(report: dict) -> str:
    source = report["domain_source"]
    counts = ", ".join(f"{d} {n}" for d, n in report["domain_counts"].items())
    if source == "true":
        return f"true domains from the labels file ({counts})"
    if source.startswith("clip:"):
        return f"CLIP's zero-shot domains in {source[5:]} ({counts})"
    return "no domains recorded"


def _metric_cells(means: dict, domains: list[str], metrics: list[str]) -> list[str]:
    """Every metric overall, then per domain (means: {metric..., per_domain})."""
    cells = [_num(means[m], METRICS[m].digits) for m in metrics]
    for d in domains:
        cells += [_num(means["per_domain"][d][m], METRICS[m].digits) for m in metrics]
    return cells


def _better_text(report: dict) -> str:
    return ", ".join(f"{METRICS[m].title} {b}" for m, b in report["metrics"].items())


def _delta_title(metric: str) -> str:
    return f"Δ{METRICS[metric].title}" + (" (dB)" if metric == "psnr" else "")


def _means_section(report: dict) -> list[str]:
    domains, runs, metrics = list(report["domain_counts"]), report["runs"], list(report["metrics"])
    lines = [
        f"## {len(runs)} run{'s' * (len(runs) > 1)} on {report['images']} common images "
        f"(baseline: {report['baseline']})",
        "",
        f"Per-domain columns: {_source_text(report)}. Better: {_better_text(report)}.",
    ]
    partial = [r for r in runs if r["images"] != report["images"]]
    if partial:
        left_out = ", ".join(f"{r['label']} {r['images'] - report['images']}" for r in partial)
        lines.append(f"Images left out (not in every run): {left_out}.")
    titles = [METRICS[m].title for m in metrics]
    header = ["run", *titles] + [f"{t} {d}" for d in domains for t in titles]
    rows = [["hazy input", *_metric_cells(report["hazy"], domains, metrics)]]
    rows += [[r["label"], *_metric_cells(r, domains, metrics)] for r in runs]
    return [*lines, "", *_table(header, rows)]


def _differences_section(report: dict) -> list[str]:
    diffs, b, metrics = report["differences"], report["bootstrap"], list(report["metrics"])
    level, first = f"{b['confidence']:.0%}", metrics[0]
    lines = [
        f"### Paired differences against {report['baseline']}",
        "",
        f"Mean of run − baseline per image over the {report['images']} common images, with a "
        f"{level} paired bootstrap confidence interval (BCa, {b['resamples']} resamples, seed "
        f"{b['seed']}). Better: {_better_text(report)}.",
        "",
    ]
    with_seeds = any(f"seed_sd_{first}" in d for d in diffs)
    header = ["run", "domain", "images"]
    for m in metrics:
        header += [_delta_title(m), f"{level} CI"]
    header += [f"{METRICS[first].title} sd over seeds"] if with_seeds else []
    rows = []
    for d in diffs:
        row = [d["run"], d["domain"], str(d["images"])]
        for m in metrics:
            row += [_num(d[f"d_{m}"], METRICS[m].digits, True), _ci(d, m, METRICS[m].digits)]
        if with_seeds:
            sd = d.get(f"seed_sd_{first}")
            row.append("" if sd is None else _num(sd, METRICS[first].digits))
        rows.append(row)
    lines += _table(header, rows, right_from=2)
    if any(d[f"d_{m}_method"] == "percentile" for d in diffs for m in metrics):
        lines += ["", "\\* percentile interval: BCa was undefined for these differences."]
    return lines


def _spread(group: dict, metric: str) -> str:
    n = METRICS[metric].digits
    return f"{group[f'{metric}_mean']:.{n}f} ± {group[f'{metric}_sd']:.{n}f}"


def _seeds_section(report: dict) -> list[str]:
    lines = [
        "### Runs repeated with other seeds",
        "",
        "The spread of a configuration's mean over training seeds; a paired interval narrower "
        "than it speaks for these weights, not for retraining.",
        "",
    ]
    metrics = list(report["metrics"])
    first = METRICS[metrics[0]]
    header = ["config", "seeds", f"{first.title} mean ± sd", f"{first.title} min–max"]
    header += [f"{METRICS[m].title} mean ± sd" for m in metrics[1:]]
    rows = []
    for g in report["seed_groups"]:
        spread = [_spread(g, m) for m in metrics]
        low, high = g[f"{first.name}_min"], g[f"{first.name}_max"]
        span = f"{low:.{first.digits}f}–{high:.{first.digits}f}"
        rows.append([g["config"], ", ".join(map(str, g["seeds"])), spread[0], span, *spread[1:]])
    return lines + _table(header, rows, right_from=2)


def _clip_section(runs: list[dict]) -> list[str]:
    known = sorted({d for r in runs for d in r["clip_domains"]["confusion"]})
    pairs = [(t, p) for t in known for p in known]
    header = ["run", "accuracy"] + [f"{t} → {p}" for t, p in pairs]
    rows = [
        [r["label"], f"{r['clip_domains']['accuracy']:.1%}"]
        + [str(r["clip_domains"]["confusion"].get(t, {}).get(p, 0)) for t, p in pairs]
        for r in runs
    ]
    title = "### CLIP's zero-shot domains against the true domains (true → predicted)"
    return [title, "", *_table(header, rows)]


def markdown(report: dict) -> str:
    """The report as markdown, ready to paste into a paper or a README."""
    sections = [_means_section(report)]
    if report["differences"]:
        sections.append(_differences_section(report))
    if report["seed_groups"]:
        sections.append(_seeds_section(report))
    clip = [r for r in report["runs"] if r["clip_domains"]]
    if clip:
        sections.append(_clip_section(clip))
    if report["notes"]:
        sections.append(["Validation curves: " + "; ".join(report["notes"]) + "."])
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "run"


def default_out_dir(labels: list[str]) -> Path:
    name = "_vs_".join(map(_safe, labels))
    if len(name) > 100:
        digest = hashlib.sha1("\n".join(labels).encode()).hexdigest()[:8]
        name = f"{_safe(labels[0])}_vs_{len(labels) - 1}_runs_{digest}"
    return Path("results") / "compare" / name


def prepare_out_dir(out_dir: Path) -> None:
    """Make `out_dir` ready: files of an earlier comparison there are removed (none of them may
    outlive it); a folder holding anything else is refused."""
    previous = out_dir / "compare.json"
    if previous.is_file():
        for name in json.loads(previous.read_text()).get("files", []):
            (out_dir / Path(name).name).unlink(missing_ok=True)
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        raise ComparisonError(
            f"--out {out_dir} is not empty and holds no earlier comparison: choose another folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_tables(report: dict, text: str, out_dir: Path) -> list[str]:
    """report.md, runs.csv, differences.csv and seeds.csv (when there are repeats)."""
    (out_dir / "report.md").write_text(text)
    metrics, runs = list(report["metrics"]), []
    for r in report["runs"]:
        row = {k: r[k] for k in ("label", "folder", "images", "seed", *metrics)}
        for d, means in r["per_domain"].items():
            row.update({f"{m}_{d}": means[m] for m in metrics})
        row["clip_accuracy"] = r["clip_domains"]["accuracy"] if r["clip_domains"] else ""
        runs.append(row)
    _write_csv(out_dir / "runs.csv", runs)
    files = ["report.md", "runs.csv"]
    if report["differences"]:
        keys = ["run", "baseline", "domain", "images"]
        keys += [f"d_{m}{s}" for m in metrics for s in ("", "_low", "_high", "_method")]
        keys += [f"seed_sd_{m}" for m in metrics]
        _write_csv(
            out_dir / "differences.csv",
            [{k: d.get(k) for k in keys} for d in report["differences"]],
        )
        files.append("differences.csv")
    if report["seed_groups"]:
        groups = [
            {**g, "runs": " ".join(g["runs"]), "seeds": " ".join(map(str, g["seeds"]))}
            for g in report["seed_groups"]
        ]
        _write_csv(out_dir / "seeds.csv", groups)
        files.append("seeds.csv")
    return files


def _difference_panel(ax, diff: np.ndarray, row: dict, level: str, metric: str) -> None:
    """Sorted per-image differences as bars (green where the run is better), their mean and
    its confidence band."""
    diff = np.sort(diff[np.isfinite(diff)])
    x = np.arange(1, len(diff) + 1)
    better = diff <= 0 if METRICS[metric].lower_better else diff >= 0
    colors = np.where(better, "#4c9a2a", "#c0392b")
    ax.bar(x, diff, width=1.0, linewidth=0, color=colors, alpha=0.8)
    if row[f"d_{metric}_low"] is not None:
        band = (row[f"d_{metric}_low"], row[f"d_{metric}_high"])
        ax.axhspan(*band, color="#1f77b4", alpha=0.3, label=f"{level} CI of the mean")
    ax.axhline(row[f"d_{metric}"], color="#1f77b4", linewidth=1.5, label="mean")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlim(0.5, len(diff) + 0.5)
    ax.set_xlabel("images, sorted by difference")
    digits = METRICS[metric].digits
    ax.set_title(
        f"{row['domain']} ({row['images']} images)\nmean {_num(row[f'd_{metric}'], digits, True)}, "
        f"CI {_ci(row, metric, digits)}",
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.3)


def plot_differences(
    results: list[Result], rows: dict[str, list[str]], report: dict, out_dir: Path
) -> list[str]:
    """One PNG per run: its sorted per-image differences of the first metric (PSNR, or FADE on
    data without ground truth) against the baseline with the mean and its confidence band, in
    one panel for all images and one per domain."""
    base, files = results[0], []
    metric = next(iter(report["metrics"]))
    title = METRICS[metric].title
    differences = {(d["run"], d["domain"]): d for d in report["differences"]}
    level = f"{report['bootstrap']['confidence']:.0%}"
    for i, r in enumerate(results[1:], start=1):
        fig = Figure(figsize=(1 + 4.2 * len(rows), 3.8))
        axes = fig.subplots(1, len(rows), sharey=True, squeeze=False)[0]
        for ax, (domain, names) in zip(axes, rows.items(), strict=True):
            diff = r.values(metric, names) - base.values(metric, names)
            _difference_panel(ax, diff, differences[(r.label, domain)], level, metric)
        axes[0].set_ylabel(_delta_title(metric))
        axes[0].legend(loc="best", fontsize=8)
        better = METRICS[metric].better
        fig.suptitle(
            f"{title} per image: {r.label} − {base.label} ({better} is better)", fontsize=11
        )
        fig.tight_layout()
        files.append(f"{metric}_diff_{i}_{_safe(r.label)}.png")
        fig.savefig(out_dir / files[-1], dpi=120)
    return files


def plot_curves(report: dict, out_dir: Path) -> list[str]:
    """Validation PSNR against epoch for every run with TensorBoard events."""
    curves = report["validation_psnr"]
    if not curves:
        return []
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    for label, points in curves.items():
        epochs, values = zip(*points, strict=True)
        marker = "o" if len(points) <= 40 else None
        ax.plot(epochs, values, marker=marker, markersize=3, label=label)
    ax.set(xlabel="epoch", ylabel="validation PSNR (dB)", title="Validation PSNR during training")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "val_psnr.png", dpi=120)
    return ["val_psnr.png"]


def main(argv: list[str] | None = None) -> dict:
    """Compare; returns the report written to compare.json."""
    args = parse_args(argv)
    setup_logging(args.quiet)
    results = load_results([Path(f) for f in args.results])
    report, rows = build_report(results, Bootstrap(args.confidence, args.resamples, args.seed))
    report["validation_psnr"], report["notes"] = validation_curves(results)

    out_dir = Path(args.out) if args.out else default_out_dir([r.label for r in results])
    prepare_out_dir(out_dir)
    text = markdown(report)
    files = write_tables(report, text, out_dir)
    files += plot_differences(results, rows, report, out_dir)
    files += plot_curves(report, out_dir)
    report["files"] = [*files, "compare.json"]
    (out_dir / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    print(text + f"\nWritten to {out_dir}: {', '.join(report['files'])}")
    return report


if __name__ == "__main__":
    run(main)
