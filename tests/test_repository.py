"""What the repository promises beside the code: how it installs, its version, its results table."""

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_METRICS = REPO / "docs" / "results" / "quickstart" / "metrics.json"


def readme_section(title: str) -> str:
    """The text of the README's `## title` section, up to the next `## ` heading."""
    text = (REPO / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def test_no_installable_project_is_declared():
    # A run-from-root codebase: installing it would put top-level `datasets`, `models` and
    # `utils` packages into site-packages, where `datasets` shadows Hugging Face's.
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "project" not in pyproject
    assert "build-system" not in pyproject
    assert not (REPO / "setup.py").exists()
    assert not (REPO / "setup.cfg").exists()


def test_runtime_dependencies_are_listed_once():
    def names(path: Path) -> set[str]:
        lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
        return {re.split(r"[<>=!~;\[ ]", line)[0].lower() for line in lines if line} - {"-r"}

    test_file = REPO / "requirements-test.txt"
    assert "-r requirements.txt" in test_file.read_text().splitlines()
    assert not names(REPO / "requirements.txt") & names(test_file)


def test_citation_version_is_the_changelog_version():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert cff["license"] == "MIT"
    newest = re.search(r"^## \[(\d+\.\d+\.\d+)\]", (REPO / "CHANGELOG.md").read_text(), re.M)
    assert newest, "CHANGELOG.md has no '## [x.y.z]' version heading"
    assert cff["version"] == newest.group(1)


def test_results_table_has_a_row_for_every_shipped_config():
    results = readme_section("Results")
    for config in sorted((REPO / "configs").rglob("*.yaml")):
        assert f"configs/{config.relative_to(REPO / 'configs').as_posix()}" in results, config


def test_quickstart_row_shows_the_committed_metrics():
    metrics = json.loads(QUICKSTART_METRICS.read_text())
    rows = [r for r in readme_section("Results").splitlines() if "configs/quickstart.yaml" in r]
    assert len(rows) == 1
    row = rows[0]
    assert f"{metrics['psnr']:.2f} / {metrics['ssim']:.3f}" in row
    assert f"{metrics['hazy_psnr']:.2f} / {metrics['hazy_ssim']:.3f}" in row
    assert QUICKSTART_METRICS.relative_to(REPO).as_posix() in row


def test_the_readme_is_a_front_door_with_the_reproduction_status_on_top():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    assert any("Reproduction status" in line for line in lines[:20])
    sections = {line[3:] for line in lines if line.startswith("## ")}
    assert {"First two commands", "Data", "Train, test, predict", "Results"} <= sections


@pytest.mark.parametrize(
    "page", sorted(set(re.findall(r"\]\((docs/[\w./-]+\.md)", (REPO / "README.md").read_text())))
)
def test_the_readmes_docs_pages_exist(page):
    assert (REPO / page).is_file()


def test_the_networks_import_nothing_of_the_rest_of_the_project():
    """models/ is a package anyone can lift out: torch, and nothing of utils/ or datasets/."""
    imported = set()
    for source in (REPO / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {(source.name, alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add((source.name, node.module))
    own = {
        "utils",
        "datasets",
        "train",
        "test",
        "predict",
        "networks",
        "bench",
        "training_run",
        "compare",
        "demo",
        "export",
    }
    assert [(f, m) for f, m in sorted(imported) if m.split(".")[0] in own] == []
