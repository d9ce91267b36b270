"""Shared fixtures: tiny synthetic datasets, the tiny random CLIP, and a tiny trained run."""

from pathlib import Path

import pytest
import torch

import networks
from datasets.synthetic import make_synthetic_dataset
from utils import scoring
from utils.clip_domains import load_clip

from . import helpers
from .helpers import load_entry, train_args

# The suite's tensors are tiny: a second intra-op thread costs more in synchronisation than it
# saves, and on a busy machine the threads spin against each other. The computation is the same.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def speed_cache(tmp_path_factory) -> Path:
    """The session's folder of measured speed settings (helpers.SPEED_CACHE); the entry points
    keep their caches in the session's folders, not in the repository, also where they set
    aside the folders a checkpoint names (networks.CACHE_FOLDERS)."""
    helpers.SPEED_CACHE = tmp_path_factory.mktemp("speed-cache")
    networks.CACHE_FOLDERS["speed.cache_dir"] = str(helpers.SPEED_CACHE)
    networks.CACHE_FOLDERS["clip.cache_dir"] = str(tmp_path_factory.mktemp("clip-cache"))
    return helpers.SPEED_CACHE


@pytest.fixture(scope="session", autouse=True)
def score_cache(tmp_path_factory) -> Path:
    """The session's cache of the hazy inputs' scores (test.py's default is in the repository)."""
    scoring.DEFAULT_CACHE = tmp_path_factory.mktemp("score-cache")
    return scoring.DEFAULT_CACHE


@pytest.fixture
def exact_fp32():
    """fp32 on CUDA computed as on the CPU: torch lets cuDNN convolutions use TF32 by default,
    whose 10-bit mantissa is far coarser than the tolerances fp32 comparisons pin."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    yield
    cudnn.allow_tf32, matmul.allow_tf32 = saved


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


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """8 train and 3 test pairs, 40-56 px: shared by the end-to-end tests (read only)."""
    root = tmp_path_factory.mktemp("data") / "synthetic"
    return make_synthetic_dataset(root, n_train=8, n_test=3, size=(40, 56), seed=0)


@pytest.fixture(scope="session")
def trained(data_root, tmp_path_factory) -> Path:
    """The run folder of a finished 2-epoch training (read only)."""
    out = tmp_path_factory.mktemp("runs")
    load_entry("train").main(train_args(data_root, out))
    return out / "run"
