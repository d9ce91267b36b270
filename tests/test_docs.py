"""README.md and docs/ state what the code defines: scripts/docs.py writes those sections, and
they are stale as soon as a hand or the code changes what they say."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from bench.params import row
from scripts import docs
from utils.speed import DEVICE_SPEED

from .helpers import REPO


def copy_pages(tmp_path: Path) -> Path:
    """README.md and docs/*.md under `tmp_path`, as in the repository."""
    (tmp_path / "docs").mkdir()
    for page in docs.pages(REPO):
        shutil.copy(page, tmp_path / page.relative_to(REPO))
    return tmp_path


def test_every_generated_section_is_what_the_code_writes():
    assert docs.update(REPO, write=False) == []


def test_a_section_edited_by_hand_is_named_and_written_again(tmp_path, capsys):
    root = copy_pages(tmp_path)
    page = root / "docs" / "EVALUATION.md"
    page.write_text(
        page.read_text().replace(
            "| `fade` | perceptual fog density | lower |",
            "| `fade` | perceptual fog density | higher |",
        )
    )
    assert docs.main(["--check"], root=root) == 1
    assert "stale: docs/EVALUATION.md: metrics" in capsys.readouterr().err
    assert docs.main([], root=root) == 0
    assert page.read_text() == (REPO / "docs" / "EVALUATION.md").read_text()
    assert docs.main(["--check"], root=root) == 0


def test_a_change_of_the_code_makes_its_section_stale(monkeypatch):
    cuda = dataclasses.replace(DEVICE_SPEED["cuda"], compile=True)
    monkeypatch.setitem(DEVICE_SPEED, "cuda", cuda)
    assert docs.update(REPO, write=False) == ["docs/PERFORMANCE.md: device-speed"]


def test_a_missing_or_unknown_section_is_an_error_and_nothing_is_written(tmp_path, capsys):
    root = copy_pages(tmp_path)
    readme = root / "README.md"
    text = readme.read_text()
    readme.write_text(
        text + "\n" + docs.BEGIN.format("nonsense") + "\n" + docs.END.format("nonsense") + "\n"
    )
    assert docs.main([], root=root) == 1
    assert "README.md: sections that nothing generates: nonsense" in capsys.readouterr().err
    readme.write_text(text.replace(docs.END.format("model-names"), ""))
    with pytest.raises(docs.SectionError, match=r"README\.md: no single section 'model-names'"):
        docs.update(root, write=True)
    assert readme.read_text() == text.replace(docs.END.format("model-names"), "")


def test_the_measured_model_sizes_are_those_of_the_code():
    """docs/results/params.json (too slow to count in the check) against a count of the
    paper's model."""
    data = json.loads((REPO / docs.PARAMS_FILE).read_text())
    measured = {r["model"]: r for r in data["rows"]}
    assert measured["mixcl-t"] == row("mixcl-t", data["size"])
