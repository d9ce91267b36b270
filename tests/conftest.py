"""Shared fixtures: a tiny synthetic dataset and the tiny randomly initialised CLIP."""

from pathlib import Path

import pytest
import torch

from datasets.synthetic import make_synthetic_dataset
from utils.clip_domains import load_clip


@pytest.fixture
def synthetic_root(tmp_path: Path) -> Path:
    """A fresh `<root>/{train,test}/{GT,hazy}` dataset (4 train, 3 test pairs, 36-52 px)."""
    return make_synthetic_dataset(
        tmp_path / "synthetic", n_train=4, n_test=3, size=((36, 52), (36, 52)), seed=0
    )


@pytest.fixture(scope="session")
def tiny_clip():
    """(model, preprocess, tokenizer) of the repository's tiny-clip with random weights."""
    return load_clip("tiny-clip", None)


@pytest.fixture(scope="session")
def tiny_clip_weights(tmp_path_factory, tiny_clip) -> Path:
    """A local weights file (state dict) of the tiny CLIP, as a user would pass one."""
    path = tmp_path_factory.mktemp("clip") / "tiny-clip.pt"
    torch.save(tiny_clip[0].state_dict(), path)
    return path
