"""docs/EXTENDING.md: its code blocks run and do what the recipes say, and every file, field and
test it names exists."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets import PairedDataset
from models.registry import Backbone
from utils.image import read_rgb, write_rgb
from utils.losses import Criterion, L1Loss

from .helpers import REPO, image

GUIDE = (REPO / "docs" / "EXTENDING.md").read_text()


def recipe(name: str) -> dict:
    """The names a `# recipe: <name>` code block of the guide defines, after running it."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE, re.S)
    code = [b for b in blocks if b.lstrip(" ").startswith(f"# recipe: {name}\n")]
    assert len(code) == 1, f"docs/EXTENDING.md has no single '# recipe: {name}' block"
    indent = len(code[0]) - len(code[0].lstrip(" "))
    namespace: dict = {}
    source = "\n".join(line[indent:] for line in code[0].splitlines())
    exec(compile(source, f"EXTENDING.md:{name}", "exec"), namespace)
    return namespace


def test_a_loss_term_of_the_recipe_joins_the_weighted_sum():
    term = recipe("loss term")["MSELoss"]()
    criterion = Criterion({"l1": L1Loss(), "mse": term}, {"l1": 1.0, "mse": 0.5})
    out, gt, hazy = image(8, 8, seed=1), image(8, 8, seed=2), image(8, 8, seed=3)
    values = criterion.values(out, gt, hazy)
    assert list(values) == ["l1", "mse"]
    assert torch.equal(values["mse"], F.mse_loss(out, gt))
    assert torch.equal(criterion(out, gt, hazy), values["l1"] + 0.5 * values["mse"])


def test_a_metric_of_the_recipe_gives_one_value_per_image():
    names = recipe("metric")
    a, b = torch.rand(2, 3, 9, 7), torch.rand(2, 3, 9, 7)
    value = names["mae"](a, b)
    assert value.shape == (2,)
    assert torch.allclose(value.float(), (a - b).abs().mean(dim=(1, 2, 3)))
    entry = names["MAE"]
    assert (entry.name, entry.better, entry.needs_gt) == ("mae", "lower", True)
    score = entry.build([], torch.device("cpu"))
    assert score(a[:1], b[:1]) == pytest.approx(value[0].item())


def test_a_linked_dataset_layout_loads_its_pairs(tmp_path):
    link = recipe("dataset layout")["link_reside_outdoor"]
    hazy_dir, clear_dir = tmp_path / "OTS" / "hazy", tmp_path / "OTS" / "clear"
    hazy_dir.mkdir(parents=True)
    clear_dir.mkdir()
    rng = np.random.default_rng(0)
    clear = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    write_rgb(clear_dir / "0001.png", clear)
    for name in ("0001_0.8_0.2.png", "0001_0.9_0.1.png"):
        write_rgb(hazy_dir / name, rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    link(hazy_dir, clear_dir, tmp_path / "data" / "train")
    dataset = PairedDataset(tmp_path / "data", "train", "test")
    assert dataset.names == ["0001_0.8_0.2.png", "0001_0.9_0.1.png"]
    assert np.array_equal(read_rgb(tmp_path / "data/train/GT/0001_0.9_0.1.png"), clear)


def test_the_backbone_recipe_names_every_field_of_a_registry_entry():
    section = GUIDE.split("## Add a backbone")[1].split("\n## ")[0]
    for field in dataclasses.fields(Backbone):
        assert f"`{field.name}`" in section, field.name


@pytest.mark.parametrize("name", sorted(set(re.findall(r"`(test_\w+)`", GUIDE))))
def test_every_test_the_guide_names_exists(name):
    assert any(f"def {name}(" in p.read_text() for p in (REPO / "tests").glob("test_*.py"))


@pytest.mark.parametrize(
    "path", sorted(set(re.findall(r"`((?:models|utils|tests|datasets|bench)/[\w/]+\.py)`", GUIDE)))
)
def test_every_file_the_guide_names_exists(path):
    assert (REPO / path).is_file()
