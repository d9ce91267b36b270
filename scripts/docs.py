"""Write the sections of README.md and docs/*.md that state what the code defines, from the code.

    python -m scripts.docs            # rewrite every generated section
    python -m scripts.docs --check    # change nothing; exit 1 naming each stale section

A generated section is the text between the lines
`<!-- begin generated: NAME (python -m scripts.docs) -->` and `<!-- end generated: NAME -->`;
SECTIONS says which file holds each NAME and what writes it. Edit the code (or the measurement
file a section is read from), never the section, then run the first command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from models.registry import BACKBONES, MODEL_NAMES
from utils.config import KEY_ROLES, Config, Role, config_to_dict, flatten, keys_where
from utils.protocol import AUTHORS_TRAIN_PY, PUBLISHED_SETTINGS, show_value
from utils.quality import METRICS, HubWeights, Metric
from utils.speed import DEVICE_SPEED, SPEED_KEYS

REPO = Path(__file__).resolve().parents[1]
BEGIN = "<!-- begin generated: {} (python -m scripts.docs) -->"
END = "<!-- end generated: {} -->"
MARKER = re.compile(r"^<!-- (begin|end) generated: ([\w-]+)", re.M)
# What bench/params.py measured (parameters and MACs of every model), too slow to count here.
PARAMS_FILE = "docs/results/params.json"
PARAMS_COMMAND = f"python -m bench.params --json {PARAMS_FILE}"


class SectionError(Exception):
    """A generated section cannot be written: what it is read from is out of date."""


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A markdown table."""
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def code_list(keys: Iterable[str]) -> str:
    """Config keys (or whole sections, as `section.*`) as an inline list."""
    plain = flatten(config_to_dict(Config()))
    return ", ".join(f"`{k}`" if k in plain else f"`{k}.*`" for k in keys)


def model_names() -> str:
    families = []
    for backbone in BACKBONES:
        sizes = ",".join(backbone.sizes)
        families.append(
            f"`{backbone.plain}-{{{sizes}}}` (without CLIP) and "
            f"`{backbone.guided}-{{{sizes}}}` (CLIP-guided)"
        )
    return f"Models (`model.name`, `models/registry.py`): {'; '.join(families)}."


def model_sizes() -> str:
    data = json.loads((REPO / PARAMS_FILE).read_text())
    listed = [row["model"] for row in data["rows"]]
    if listed != list(MODEL_NAMES):
        raise SectionError(
            f"{PARAMS_FILE} lists {', '.join(listed)}, the registry {', '.join(MODEL_NAMES)}: "
            f"run `{PARAMS_COMMAND}`"
        )
    columns = list(data["rows"][0])
    return table(columns, ([row[c] for c in columns] for row in data["rows"]))


def _grouped_metrics() -> dict[tuple[str, bool], list[Metric]]:
    groups: dict[tuple[str, bool], list[Metric]] = {}
    for m in METRICS.values():
        groups.setdefault((m.better, m.needs_gt), []).append(m)
    return groups


def metrics_summary() -> str:
    rows = (
        [
            ", ".join(f"`{m.name}`" for m in group),
            "; ".join(m.meaning for m in group),
            better,
            "yes" if needs_gt else "no",
        ]
        for (better, needs_gt), group in _grouped_metrics().items()
    )
    return table(["metric", "measures", "better", "needs GT"], rows)


def _library(m: Metric) -> str:
    if m.package is None:
        return "this project (`utils/metrics.py`)"
    return m.package if m.module == m.package else f"{m.package} (`{m.module}`)"


def _files(m: Metric) -> str:
    names = [
        f"`{f.name}` (Hugging Face cache)" if isinstance(f, HubWeights) else f"`{f.name}`"
        for f in m.files
    ]
    return ", ".join(names) or "none"


def metrics_table() -> str:
    rows = (
        [
            f"`{m.name}`",
            m.meaning,
            m.better,
            "yes" if m.needs_gt else "no",
            _library(m),
            _files(m),
        ]
        for m in METRICS.values()
    )
    header = ["`--metrics`", "what it measures", "better", "needs GT", "library", "weight files"]
    return table(header, rows)


def device_speed() -> str:
    rows = (
        [f"`{kind}`", *(f"`{show_value(getattr(s, k))}`" for k in SPEED_KEYS)]
        for kind, s in DEVICE_SPEED.items()
    )
    return table(["device kind", *(f"`speed.{k}`" for k in SPEED_KEYS)], rows)


def override_keys() -> str:
    return code_list(keys_where(lambda role: role.evaluation))


def resume_keys() -> str:
    return code_list(keys_where(lambda role: role.resume))


# The columns of the roles table: a Role field and what a "yes" in it means.
ROLE_COLUMNS = {
    "changes_results": "compared with the paper",
    "resume": "may change on `--resume`",
    "evaluation": "may change in test.py, predict.py",
    "location": "left out of results folder names",
    "repeat": "runs differing in it repeat one configuration",
    "weights": "compared by which weights it names",
}


def key_roles() -> str:
    keys: dict[Role, list[str]] = {}
    for key, role in KEY_ROLES.items():
        keys.setdefault(role, []).append(key)
    rows = (
        [role.name, code_list(names), *("yes" if getattr(role, f) else "" for f in ROLE_COLUMNS)]
        for role, names in keys.items()
    )
    return table(["role", "keys", *ROLE_COLUMNS.values()], rows)


def published_settings() -> str:
    rows = []
    for dataset, setting in PUBLISHED_SETTINGS.items():
        own = (
            f"`{key}={show_value(value)}`"
            for key, value in setting.values.items()
            if key not in AUTHORS_TRAIN_PY or AUTHORS_TRAIN_PY[key] != value
        )
        rows.append([dataset, setting.source, ", ".join(own)])
    return table(["dataset", "source", "its values (the others: the authors' train.py's)"], rows)


def _ci() -> tuple[list[str], list[str]]:
    """The requirements files CI installs and its pytest selections (.ci/run), checked against
    pyproject.toml's default selection."""
    script = (REPO / ".ci" / "run").read_text()
    requirements = re.findall(r"-r (\S+)", script)
    loop = re.search(r"^for selection in (.+); do$", script, re.M)
    if loop is None or "ruff check ." not in script:
        raise SectionError(".ci/run no longer runs `ruff check .` and a `for selection in` loop")
    selections = shlex.split(loop.group(1))
    if f"-m '{selections[0]}'" not in _pytest_setting("addopts"):
        raise SectionError(
            f"pyproject.toml's addopts do not select CI's first -m {selections[0]!r}"
        )
    return requirements, selections


def _pytest_setting(name: str) -> str:
    """The text of a [tool.pytest.ini_options] setting in pyproject.toml (up to the next one)."""
    text = (REPO / "pyproject.toml").read_text().split("[tool.pytest.ini_options]")[1]
    match = re.search(rf"^{name} = (.*?)(?=^\w+ = |^\[|\Z)", text, re.M | re.S)
    if match is None:
        raise SectionError(f"pyproject.toml has no [tool.pytest.ini_options] {name}")
    return match.group(1)


def _markers() -> dict[str, str]:
    """pytest's markers (pyproject.toml) and what each marks."""
    return dict(re.findall(r'"(\w+): (.*?)",?\n', _pytest_setting("markers")))


def test_command() -> str:
    requirements, selections = _ci()
    steps = [
        "pip install " + " ".join(f"-r {r}" for r in requirements),
        "ruff check .",
        "python -m pytest -q",  # the first selection is pyproject's default
        *(f'python -m pytest -q -m "{s}"' for s in selections[1:]),
    ]
    return "```bash\n" + " && ".join(steps) + "\n```"


def ci_steps() -> str:
    _, selections = _ci()
    lines = ["1. `ruff check .`"]
    for i, selection in enumerate(selections, start=2):
        chosen = [
            f"`{name}`: {what}"
            for name, what in _markers().items()
            if re.search(rf"(?<!not ){name}\b", selection)
        ]
        what = "; ".join(chosen) or "the suite (`python -m pytest -q`, pyproject.toml's default)"
        lines.append(f'{i}. `python -m pytest -q -m "{selection}"`: {what}')
    return "\n".join(lines)


@dataclass(frozen=True)
class Section:
    """A generated section: the file that holds it and what writes it."""

    file: str
    render: Callable[[], str]


SECTIONS: dict[str, Section] = {
    "test-command": Section("README.md", test_command),
    "metrics-summary": Section("README.md", metrics_summary),
    "model-names": Section("README.md", model_names),
    "ci-steps": Section("docs/DEVELOPMENT.md", ci_steps),
    "metrics": Section("docs/EVALUATION.md", metrics_table),
    "model-sizes": Section("docs/BASELINES.md", model_sizes),
    "device-speed": Section("docs/PERFORMANCE.md", device_speed),
    "override-keys": Section("docs/TEST_AND_PREDICT.md", override_keys),
    "resume-keys": Section("docs/TRAINING.md", resume_keys),
    "key-roles": Section("docs/PROTOCOL.md", key_roles),
    "published-settings": Section("docs/PROTOCOL.md", published_settings),
}


def pages(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def regenerate(text: str, names: Iterable[str], where: str) -> tuple[str, list[str]]:
    """`text` with the sections `names` written anew, and the names of those that changed."""
    changed = []
    for name in names:
        begin, end = BEGIN.format(name), END.format(name)
        if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
            raise SectionError(f"{where}: no single section {name!r} between {begin} and {end}")
        head, rest = text.split(begin + "\n", 1)
        old, tail = rest.split(end, 1)
        new = SECTIONS[name].render() + "\n"
        if new != old:
            changed.append(name)
        text = head + begin + "\n" + new + end + tail
    return text, changed


def update(root: Path, write: bool) -> list[str]:
    """The stale sections of the pages under `root` (`file: name`), rewritten if `write`; a
    page that cannot be generated (a missing or unknown section) fails before any is written."""
    stale, rewritten = [], {}
    for page in pages(root):
        rel = page.relative_to(root).as_posix()
        text = page.read_text()
        names = [n for n, s in SECTIONS.items() if s.file == rel]
        unknown = {m[2] for m in MARKER.finditer(text)} - set(names)
        if unknown:
            raise SectionError(
                f"{rel}: sections that nothing generates: {', '.join(sorted(unknown))}"
            )
        new, changed = regenerate(text, names, rel)
        stale += [f"{rel}: {name}" for name in changed]
        if changed:
            rewritten[page] = new
    for page, text in rewritten.items() if write else ():
        _write_atomic(page, text)
    return stale


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def main(argv: list[str] | None = None, root: Path = REPO) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--check", action="store_true", help="write nothing; fail on a stale section")
    args = p.parse_args(argv)
    try:
        stale = update(root, write=not args.check)
    except SectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for section in stale:
        verb = "stale" if args.check else "rewritten"
        print(f"{verb}: {section}", file=sys.stderr if args.check else sys.stdout)
    if args.check and stale:
        print("run `python -m scripts.docs` to write them from the code", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
