"""DehazeFormer and its CLIP-guided variant: the authors' layout, padding and warm start, and
every entry point with a tiny variant (CPU, seconds)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import models
from bench.params import count_macs
from models import build_model
from models.registry import MODEL_NAMES, speed_options
from networks import build_network
from utils.checkpoint import load_checkpoint
from utils.config import load_config
from utils.image import from_model_range, read_rgb, to_model_range, uint8_to_tensor, write_rgb
from utils.speed import DEVICE_SPEED

from .helpers import REPO, image, load_entry, randomize, text, train_args

train, evaluate, predict, compare = (load_entry(n) for n in ("train", "test", "predict", "compare"))

# Tiny stages of dehazeformer-t with both kinds of attention block: layer2's second block
# (shifted windows) and layer3's only block (unshifted); the others convolve only.
TINY = (1, 2, 1, 1, 1)
TINY_ARG = "model.depths=[1,2,1,1,1]"
# Parameters per size, and the paper's counts, which leave out RLN's own weight and bias (a
# counter that only sums the parameters of leaf modules misses them).
PARAMS = {"t": 687_404, "s": 1_284_884, "b": 2_517_612, "m": 4_635_952, "l": 25_451_652}
# (millions, the last digit printed): 25.445 M for L is printed 25.44.
PUBLISHED_PARAMS_M = {
    "t": (0.686, 1e-3),
    "s": (1.283, 1e-3),
    "b": (2.514, 1e-3),
    "m": (4.634, 1e-3),
    "l": (25.44, 1e-2),
}
# Keys and shapes of the authors' DehazeFormer-T state_dict as their train.py saves it
# (DataParallel's prefix), read from their models/dehazeformer.py.
AUTHORS_T_KEYS = {
    "module.patch_embed.proj.weight": (24, 3, 3, 3),
    "module.layer1.blocks.0.attn.conv.weight": (24, 1, 5, 5),
    "module.layer1.blocks.0.attn.V.weight": (24, 24, 1, 1),
    "module.layer1.blocks.0.mlp.mlp.0.weight": (48, 24, 1, 1),
    "module.patch_merge1.proj.weight": (48, 24, 2, 2),
    "module.layer2.blocks.2.norm1.weight": (1, 48, 1, 1),
    "module.layer2.blocks.2.norm1.meta1.weight": (48, 1, 1, 1),
    "module.layer2.blocks.3.attn.QK.weight": (96, 48, 1, 1),
    "module.layer2.blocks.3.attn.attn.relative_positions": (64, 64, 2),
    "module.layer2.blocks.3.attn.attn.meta.2.weight": (4, 256),
    "module.layer3.blocks.0.attn.attn.meta.0.weight": (256, 2),
    "module.patch_split1.proj.0.weight": (192, 96, 1, 1),
    "module.fusion1.mlp.0.weight": (6, 48, 1, 1),
    "module.fusion2.mlp.2.weight": (48, 4, 1, 1),
    "module.patch_unembed.proj.0.weight": (4, 24, 3, 3),
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", ["t", "s", "b", "m", "l"])
def test_parameter_counts_and_the_published_ones(size):
    model = build_model(f"dehazeformer-{size}")
    assert n_params(model) == PARAMS[size]
    rln_own = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.endswith((".norm1.weight", ".norm1.bias"))
    )
    published, digit = PUBLISHED_PARAMS_M[size]
    assert abs((PARAMS[size] - rln_own) / 1e6 - published) < digit
    guided = build_model(f"clipdehazeformer-{size}")
    assert guided.needs_text and not model.needs_text
    assert (
        n_params(guided) - PARAMS[size]
        == n_params(guided.text_emb) + guided.patch_embed.proj.weight[:, 3:].numel()
    )


def test_macs_of_dehazeformer_b_are_the_published_ones():
    """The paper's 25.79 G at 256x256; our count leaves out element-wise operations."""
    assert count_macs("dehazeformer-b", 256) == pytest.approx(25.79e9, rel=0.005)


def test_names_and_speed_options():
    for size in "tsbml":
        assert {f"dehazeformer-{size}", f"clipdehazeformer-{size}"} <= set(MODEL_NAMES)
    assert speed_options("dehazeformer-b") == ()
    assert speed_options("mixcl-s") == ("channels_last", "strips", "fused_dwconv")
    cfg = load_config(None, ["model.name=dehazeformer-t", "speed.channels_last=true"])
    assert isinstance(build_network(cfg, None, DEVICE_SPEED["cpu"]), models.DehazeFormer)


def test_reading_a_config_imports_neither_torch_nor_open_clip():
    code = (
        "import sys, utils.config, models.registry; "
        "print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("name", ["dehazeformer-t", "clipdehazeformer-t"])
def test_forward_keeps_shape_and_every_parameter_learns(name):
    model = build_model(name, depths=TINY).train()
    t = text(batch=2) if model.needs_text else None
    out = model(image(37, 53, batch=2), t)
    assert out.shape == (2, 3, 37, 53)
    out.square().mean().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("hw", [(1, 1), (5, 90), (31, 9)])
def test_inputs_smaller_than_a_window_at_every_scale(hw):
    model = randomize(build_model("dehazeformer-t", depths=TINY))
    with torch.no_grad():
        out = model(image(*hw))
    assert out.shape == (1, 3, *hw) and torch.isfinite(out).all()


@pytest.mark.parametrize("hw", [(32, 33), (37, 53), (45, 38)])
def test_inputs_upstream_accepts_use_its_padding(hw):
    """From 32 px on, the input is padded to the next multiple of 4 only, as upstream does."""
    model = randomize(build_model("dehazeformer-t", depths=TINY))
    x, (h, w) = image(*hw), hw
    padded = F.pad(x, (0, -w % 4, 0, -h % 4), mode="reflect")
    with torch.no_grad():
        k, b = model.forward_features(padded, None).split((1, 3), dim=1)
        assert torch.equal(model(x), (k * padded - b + padded)[:, :, :h, :w])


def test_the_authors_released_checkpoint_format_is_evaluated_by_test_py(data_root, tmp_path):
    source = randomize(build_model("dehazeformer-t"))
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    assert {k: tuple(state[k].shape) for k in AUTHORS_T_KEYS} == AUTHORS_T_KEYS
    assert "module.layer1.blocks.0.norm1.weight" not in state  # no attention in T's layer1
    path = tmp_path / "dehazeformer-t.pth"
    torch.save({"state_dict": state}, path)
    out = tmp_path / "result"
    args = ["--ckpt", str(path), "--model", "dehazeformer-t", "--data-dir", str(data_root)]
    args.append("data.num_workers=0")
    summary = evaluate.main([*args, "--out", str(out), "--save-images"])
    name = sorted((data_root / "test" / "hazy").iterdir())[0]
    with torch.no_grad():
        expected = from_model_range(source(to_model_range(uint8_to_tensor(read_rgb(name)))[None]))
    saved = uint8_to_tensor(read_rgb(out / "images" / f"{name.stem}.png"))
    assert (saved - expected[0]).abs().max() <= 1 / 255
    assert summary["psnr"] == json.loads((out / "metrics.json").read_text())["psnr"]


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    """A tiny DehazeFormer trained 2 epochs, and a CLIP-guided one warm-started from it."""
    out = tmp_path_factory.mktemp("dehazeformer")
    plain = [*train_args(data_root, out, exp="plain"), "model.name=dehazeformer-t", TINY_ARG]
    train.main(plain)
    guided = train_args(data_root, out, exp="guided")
    init = f"model.init_from={out / 'plain' / 'best.pth'}"
    train.main([*guided, "model.name=clipdehazeformer-t", TINY_ARG, init, "train.epochs=1"])
    return out


def test_training_resumes_to_the_uninterrupted_weights(runs, data_root, tmp_path):
    args = [*train_args(data_root, tmp_path, exp="plain"), "model.name=dehazeformer-t", TINY_ARG]
    train.main([*args, "--stop-after-epochs", "1"])
    train.main([*args, "--resume"])
    resumed = load_checkpoint(tmp_path / "plain" / "last.pth")
    straight = load_checkpoint(runs / "plain" / "last.pth")
    assert resumed["model_name"] == "dehazeformer-t" and resumed["epoch"] == 2
    tol = 0 if not torch.cuda.is_available() else 1e-4
    for key, value in straight["model"].items():
        assert (value.double() - resumed["model"][key].double()).abs().max() <= tol, key


def test_test_predict_and_compare_with_both_networks(runs, tmp_path):
    results = {}
    for exp in ("plain", "guided"):
        results[exp] = tmp_path / "results" / f"{exp}_best" / "synthetic-test"
        evaluate.main(["--ckpt", str(runs / exp / "best.pth"), "--out", str(results[exp])])
    guided = load_checkpoint(runs / "guided" / "best.pth")
    assert guided["model_name"] == "clipdehazeformer-t"
    report = compare.main([*map(str, results.values()), "--out", str(tmp_path / "cmp")])
    assert [r["label"] for r in report["runs"]] == ["plain_best", "guided_best"]
    assert report["images"] == 3

    inputs = tmp_path / "in"
    sizes = {"a.png": (37, 53), "b.png": (1, 1)}
    for name, (h, w) in sizes.items():
        write_rgb(inputs / name, torch.rand(3, h, w, generator=torch.Generator().manual_seed(h)))
    for exp in ("plain", "guided"):
        out = tmp_path / f"pred-{exp}"
        predict.main(["--ckpt", str(runs / exp / "best.pth"), str(inputs), "--out", str(out)])
        for name, (h, w) in sizes.items():
            assert read_rgb(out / name).shape == (h, w, 3)
