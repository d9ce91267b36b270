"""True domains of a split's images (`<root>/<split>/domains.csv`) and CLIP's agreement with them.

The labels file lets the same training run with CLIP's zero-shot guesses and with perfect
domains (`clip.domain_source: labels`), and lets test.py say how often CLIP guessed right.
Format: a CSV with the header `name,domain` and one row per image of the split.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from utils.errors import DataError, name_list

LABELS_FILE = "domains.csv"
COLUMNS = ("name", "domain")


def labels_file(split_dir: str | Path) -> Path:
    """Where a split's labels live: beside its GT and hazy folders."""
    return Path(split_dir) / LABELS_FILE


def write_domain_labels(path: str | Path, labels: Mapping[str, str]) -> None:
    """Write `name -> domain` as a labels file, rows sorted by name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(sorted(labels.items()))


def read_domain_labels(
    path: str | Path, domains: Sequence[str], names: Iterable[str]
) -> dict[str, str]:
    """`name -> domain` for exactly the images `names`, checked against the known `domains`.

    Every problem (missing header, unknown domains, repeated, missing or extra names) is
    reported together in one DataError naming the file; a labels file that no longer matches
    its images is an error, never silently used.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"domain labels file not found: {path} (a CSV with columns name,domain, one row "
            "per image, as `python -m datasets.synthetic` writes; without one, use CLIP's "
            "domains: clip.domain_source=clip)"
        )
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not set(COLUMNS) <= set(reader.fieldnames):
            raise DataError(
                f"{path}: expected a header with the columns name,domain, got {reader.fieldnames}"
            )
        rows = [(row["name"], row["domain"], reader.line_num) for row in reader]
    problems = []
    unknown = [f"line {line}: {domain!r}" for _, domain, line in rows if domain not in domains]
    if unknown:
        problems.append(f"domains not in clip.domains {list(domains)}: {name_list(unknown, 10)}")
    counts = Counter(name for name, _, _ in rows)
    repeated = [name for name, n in counts.items() if n > 1]
    if repeated:
        problems.append(f"names listed more than once: {name_list(sorted(repeated), 10)}")
    labels = {name: domain for name, domain, _ in rows}
    missing, extra = set(names) - set(labels), set(labels) - set(names)
    if missing:
        problems.append(f"no label for {len(missing)} image(s): {name_list(sorted(missing), 10)}")
    if extra:
        problems.append(
            f"labels for {len(extra)} name(s) that are not images of the split: "
            + name_list(sorted(extra), 10)
        )
    if problems:
        details = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"invalid domain labels file {path}:\n{details}")
    return labels


def domain_confusion(
    true: Mapping[str, str], predicted: Mapping[str, str], domains: Sequence[str]
) -> dict:
    """CLIP's accuracy against the true domains over the images in `true`, and the confusion.

    Returns {"accuracy", "correct", "count", "confusion"}, where confusion[t][p] counts the
    images of true domain t predicted as p (every domain listed, zeros included).
    """
    confusion = {t: dict.fromkeys(domains, 0) for t in domains}
    for name, t in true.items():
        confusion[t][predicted[name]] += 1
    correct = sum(confusion[d][d] for d in domains)
    count = len(true)
    return {
        "accuracy": correct / count if count else float("nan"),
        "correct": correct,
        "count": count,
        "confusion": confusion,
    }
