"""Paired comparison of test.py results: which images they share, per-domain means, paired
bootstrap intervals of the differences, and runs that repeat one configuration with other seeds.

Every metric the results share is compared (PSNR/SSIM, FADE, LPIPS, ...: the columns of
per_image.csv named in utils.quality.METRICS), each with the direction that is better.

compare.py presents what is computed here (markdown, CSV, JSON, plots).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import DegenerateDataWarning, bootstrap

from utils.config import REPEAT_IGNORES, WEIGHTS_KEYS, covers, flatten
from utils.domain_labels import domain_confusion
from utils.errors import UserError
from utils.quality import METRICS
from utils.weights import weights_id

COLUMNS = ("name", "domain")  # test.py's per_image.csv, then each metric and hazy_<metric>
# Two results of the same images agree on the hazy input's scores to float rounding (PSNR in
# dB, the other metrics relatively).
HAZY_PSNR_TOLERANCE_DB = 1e-3
HAZY_RELATIVE_TOLERANCE = 1e-4


class ComparisonError(UserError, ValueError):
    """Result folders that cannot be compared; the message names them."""


@dataclass
class Result:
    """One test.py result folder: per-image rows by file name, and its metrics.json (or {})."""

    folder: Path
    rows: dict[str, dict]
    metrics: dict
    scored: list[str]  # the metrics of per_image.csv, in its order
    label: str = ""

    def values(self, key: str, names: list[str]) -> np.ndarray:
        return np.array([self.rows[n][key] for n in names], dtype=np.float64)

    def column(self, key: str, names: list[str]) -> list[str]:
        return [self.rows[n].get(key) or "" for n in names]

    @property
    def config(self) -> dict | None:
        """The resolved config test.py recorded (None in results written before it did)."""
        config = self.metrics.get("config")
        return config if isinstance(config, dict) else None


@dataclass(frozen=True)
class Bootstrap:
    """How the paired confidence intervals are drawn (the seed makes them reproducible)."""

    confidence: float = 0.95
    resamples: int = 9999
    seed: int = 0


@dataclass(frozen=True)
class Interval:
    """Mean paired difference and its confidence interval (None where there is none); `method`
    says how it was found."""

    mean: float
    low: float | None
    high: float | None
    method: str


def _number(raw: str, where: str) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise ComparisonError(f"{where}: {raw!r} is not a number") from None


def _result_hint(folder: Path) -> str:
    inside = [*folder.glob("*/per_image.csv"), *folder.glob("*/*/per_image.csv")]
    found = sorted(p.parent for p in inside)[:5]
    if found:
        return " (result folders inside it: " + ", ".join(map(str, found)) + ")"
    return " (pass folders written by test.py: results/<run>_<checkpoint>/<dataset>-<split>)"


def load_result(folder: str | Path) -> Result:
    """Read a result folder; any problem is an error naming the file."""
    folder = Path(folder)
    csv_path = folder / "per_image.csv"
    if not folder.is_dir():
        raise ComparisonError(f"result folder not found: {folder}")
    if not csv_path.is_file():
        raise ComparisonError(f"{folder}: no per_image.csv{_result_hint(folder)}")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        scored = [c for c in columns if c in METRICS]
        missing = [c for c in (*COLUMNS, *(f"hazy_{m}" for m in scored)) if c not in columns]
        if missing or not scored:
            raise ComparisonError(
                f"{csv_path}: no column {', '.join(missing) or 'of a metric'}; expected test.py's "
                f"columns {', '.join(COLUMNS)}, then metrics ({', '.join(METRICS)}) each with "
                "hazy_<metric>"
            )
        rows: dict[str, dict] = {}
        for row in reader:
            where = f"{csv_path}, line {reader.line_num}"
            if row["name"] in rows:
                raise ComparisonError(f"{where}: {row['name']} is listed twice")
            for key in (*scored, *(f"hazy_{m}" for m in scored)):
                row[key] = _number(row[key], f"{where}, column {key}")
            rows[row["name"]] = row
    if not rows:
        raise ComparisonError(f"{csv_path}: no images")
    metrics: dict = {}
    metrics_path = folder / "metrics.json"
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except json.JSONDecodeError as e:
            raise ComparisonError(f"{metrics_path}: not valid JSON ({e})") from None
        if not isinstance(metrics, dict):
            raise ComparisonError(f"{metrics_path}: expected a JSON object, as test.py writes")
    return Result(folder, rows, metrics, scored)


def short_labels(folders: list[Path]) -> list[str]:
    """The shortest distinct path endings, after dropping the endings every folder shares
    (test.py's `<dataset>-<split>`), e.g. `quickstart_best`, `quickstart-oracle_best`."""
    parts = [f.resolve().parts for f in folders]
    if len(parts) == 1:
        return ["/".join(parts[0][-2:])]
    while all(len(p) > 1 for p in parts) and len({p[-1] for p in parts}) == 1:
        parts = [p[:-1] for p in parts]
    for k in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(f) for f in folders]


def load_results(folders: list[Path]) -> list[Result]:
    """Read result folders (a folder given twice is refused) and label each one."""
    resolved = [f.resolve() for f in folders]
    repeated = sorted({str(f) for f in folders if resolved.count(f.resolve()) > 1})
    if repeated:
        raise ComparisonError(f"result folder given more than once: {', '.join(repeated)}")
    results = [load_result(f) for f in folders]
    for r, label in zip(results, short_labels(folders), strict=True):
        r.label = label
    return results


def shared_metrics(results: list[Result]) -> list[str]:
    """The metrics every result holds, in the baseline's order; refuses results with none."""
    shared = [m for m in results[0].scored if all(m in r.scored for r in results)]
    if not shared:
        held = "; ".join(f"{r.folder}: {', '.join(r.scored)}" for r in results)
        raise ComparisonError(f"the results share no metric ({held}): test them with one")
    return shared


def _same_data(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    if metric == "psnr":
        return np.isclose(a, b, rtol=0, atol=HAZY_PSNR_TOLERANCE_DB)  # inf equals inf
    return np.isclose(a, b, rtol=HAZY_RELATIVE_TOLERANCE, atol=0)


def common_images(results: list[Result], metrics: list[str]) -> list[str]:
    """Names of the images every result holds; refuses results of different test data (the
    hazy input's scores differ)."""
    base = results[0]
    for other in results[1:]:
        shared = sorted(set(base.rows) & set(other.rows))
        if not shared:
            raise ComparisonError(
                f"{base.folder} and {other.folder} share no image ({len(base.rows)} images, "
                f"e.g. {min(base.rows)}; {len(other.rows)} images, e.g. {min(other.rows)}): "
                "compare results of the same test split"
            )
        for m in metrics:
            key = f"hazy_{m}"
            close = _same_data(base.values(key, shared), other.values(key, shared), m)
            differ = [n for n, ok in zip(shared, close, strict=True) if not ok]
            if differ:
                n = differ[0]
                raise ComparisonError(
                    f"{base.folder} and {other.folder} were tested on different data: the hazy "
                    f"input's {METRICS[m].title} differs for {len(differ)} of {len(shared)} "
                    f"shared images (e.g. {n}: {base.rows[n][key]:.4g} vs "
                    f"{other.rows[n][key]:.4g})"
                )
    names = sorted(set.intersection(*(set(r.rows) for r in results)))
    if not names:
        raise ComparisonError(
            "no image is common to all of " + ", ".join(str(r.folder) for r in results)
        )
    return names


def image_domains(results: list[Result], names: list[str]) -> tuple[dict[str, str], str]:
    """The domain of each image for the per-domain columns, and where it comes from: the true
    domains when a result has them (all must agree), else CLIP's in the first result with any."""
    labelled = [r for r in results if all(r.column("true_domain", names))]
    for r in labelled[1:]:
        differ = [
            n for n in names if r.rows[n]["true_domain"] != labelled[0].rows[n]["true_domain"]
        ]
        if differ:
            raise ComparisonError(
                f"{labelled[0].folder} and {r.folder} were tested with different domain labels "
                f"(e.g. {differ[0]})"
            )
    if labelled:
        return dict(zip(names, labelled[0].column("true_domain", names), strict=True)), "true"
    for r in results:
        if all(r.column("domain", names)):
            return dict(zip(names, r.column("domain", names), strict=True)), f"clip:{r.label}"
    return {}, "none"


def domain_subsets(domains: dict[str, str], names: list[str]) -> dict[str, list[str]]:
    """The images of each row of the report: "all", then each domain's."""
    out = {"all": names}
    for d in sorted(set(domains.values())):
        out[d] = [n for n in names if domains[n] == d]
    return out


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)


def paired_interval(run_values: np.ndarray, base_values: np.ndarray, boot: Bootstrap) -> Interval:
    """Mean of run - baseline over the same images, with a paired bootstrap interval.

    Images are resampled together (paired), with a fixed seed, so the output is reproducible.
    Identical differences give the exact zero-width interval (every resample has that mean);
    BCa falls back to the percentile interval when it is undefined; a single image or an
    infinite PSNR (an output equal to its ground truth) has no interval.
    """
    diff = run_values - base_values
    if len(diff) and np.all(diff == diff[0]):
        return Interval(float(diff[0]), float(diff[0]), float(diff[0]), "exact")
    mean = float(np.mean(diff))
    if len(diff) < 2 or not np.all(np.isfinite(diff)):
        return Interval(mean, None, None, "none")
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DegenerateDataWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            ci = bootstrap(
                (run_values, base_values),
                _mean_difference,
                paired=True,
                vectorized=True,
                n_resamples=boot.resamples,
                batch=1000,  # bounds the memory of the resamples on large test sets
                confidence_level=boot.confidence,
                method=method,
                rng=np.random.default_rng(boot.seed),
            ).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            return Interval(mean, float(ci.low), float(ci.high), method)
    return Interval(mean, None, None, "none")


def _means(result: Result, names: list[str], metrics: list[str]) -> dict:
    return {m: float(np.mean(result.values(m, names))) for m in metrics} | {"count": len(names)}


def run_summaries(
    results: list[Result],
    subsets: dict[str, list[str]],
    domains: dict[str, str],
    source: str,
    metrics: list[str],
) -> list[dict]:
    """Per run: means overall and per domain over the common images, its seed, and (when the
    domains are the true ones) the accuracy and confusion of its CLIP domains."""
    names = subsets["all"]
    out = []
    for r in results:
        row = {
            "label": r.label,
            "folder": str(r.folder),
            "images": len(r.rows),
            "seed": (r.config or {}).get("train", {}).get("seed"),
            **_means(r, names, metrics),
            "per_domain": {d: _means(r, ns, metrics) for d, ns in subsets.items() if d != "all"},
            "clip_domains": None,
        }
        predicted = dict(zip(names, r.column("domain", names), strict=True))
        if source == "true" and all(predicted.values()):
            known = sorted(set(domains.values()) | set(predicted.values()))
            row["clip_domains"] = domain_confusion(domains, predicted, known)
        out.append(row)
    return out


def paired_differences(
    results: list[Result], subsets: dict[str, list[str]], boot: Bootstrap, metrics: list[str]
) -> list[dict]:
    """Every run against the baseline, overall and per domain, for every metric."""
    base, out = results[0], []
    for r in results[1:]:
        for subset, names in subsets.items():
            row = {"run": r.label, "baseline": base.label, "domain": subset, "images": len(names)}
            for m in metrics:
                iv = paired_interval(r.values(m, names), base.values(m, names), boot)
                row[f"d_{m}"] = iv.mean
                row[f"d_{m}_low"], row[f"d_{m}_high"] = iv.low, iv.high
                row[f"d_{m}_method"] = iv.method
            out.append(row)
    return out


def repeat_key(result: Result) -> str | None:
    """What a run computes (its config without REPEAT_IGNORES, the weights its keys name rather
    than their paths, and which checkpoint was tested), or None when its metrics.json records
    no config."""
    if result.config is None:
        return None
    kept = {
        k: weights_id(k, v) if covers(WEIGHTS_KEYS, k) else v
        for k, v in flatten(result.config).items()
        if not covers(REPEAT_IGNORES, k)
    }
    return json.dumps([kept, Path(result.metrics.get("checkpoint", "")).name], sort_keys=True)


def seed_groups(results: list[Result], runs: list[dict], metrics: list[str]) -> list[dict]:
    """Runs of one configuration with different seeds, and the spread of their means."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(results):
        key = repeat_key(r)
        if key is not None:
            members[key].append(i)
    out = []
    for idx in members.values():
        seeds = [runs[i]["seed"] for i in idx]
        if len(set(seeds)) < 2:
            continue
        first = results[idx[0]]
        ckpt = Path(first.metrics.get("checkpoint", "")).name
        group = {
            "config": f"{first.config.get('exp_name', first.label)} ({ckpt})",
            "runs": [runs[i]["label"] for i in idx],
            "seeds": seeds,
        }
        for m in metrics:
            values = np.array([runs[i][m] for i in idx])
            group.update(
                {
                    f"{m}_mean": float(values.mean()),
                    f"{m}_sd": float(values.std(ddof=1)),
                    f"{m}_min": float(values.min()),
                    f"{m}_max": float(values.max()),
                }
            )
        out.append(group)
    return out


def _hazy_means(base: Result, subsets: dict[str, list[str]], metrics: list[str]) -> dict:
    """The unprocessed input's means (the same in every result: the data are checked equal)."""
    means = {
        d: {m: float(np.mean(base.values(f"hazy_{m}", ns))) for m in metrics}
        for d, ns in subsets.items()
    }
    return {**means.pop("all"), "per_domain": means}


def build_report(results: list[Result], boot: Bootstrap) -> tuple[dict, dict[str, list[str]]]:
    """Everything compared, as plain data (compare.json), and the images of each report row."""
    metrics = shared_metrics(results)
    names = common_images(results, metrics)
    domains, source = image_domains(results, names)
    rows = domain_subsets(domains, names)
    runs = run_summaries(results, rows, domains, source, metrics)
    seeds = seed_groups(results, runs, metrics)
    differences = paired_differences(results, rows, boot, metrics)
    for group in seeds:
        for row in differences:
            if row["run"] in group["runs"] and row["domain"] == "all":
                row.update({f"seed_sd_{m}": group[f"{m}_sd"] for m in metrics})
    report = {
        "baseline": results[0].label,
        "metrics": {m: METRICS[m].better for m in metrics},
        "images": len(names),
        "domain_source": source,
        "domain_counts": {d: len(ns) for d, ns in rows.items() if d != "all"},
        "hazy": _hazy_means(results[0], rows, metrics),
        "runs": runs,
        "differences": differences,
        "seed_groups": seeds,
        "bootstrap": {**dataclasses.asdict(boot), "paired": True},
    }
    return report, rows
