"""Behaviour of the networks and the weight loader (CPU, tiny sizes)."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from models import MODEL_NAMES, TextImageFusion, build_model, load_pretrained
from models.common import pad_bottom_right, padded_size
from models.registry import split_name
from models.text_fusion import fused_attention, pixel_text_attention

from .helpers import REPO, TINY, image, randomize, text

MIXDEHAZENET = split_name("mixcl-s")[0]  # the paper's backbone
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
# SDPA's fused kernels: with only these allowed, a fallback to the math path raises.
FUSED_CUDA_BACKENDS = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
]
# What bench/params.py measured, which docs/BASELINES.md shows: {model name: its row}.
MEASURED = {
    r["model"]: r for r in json.loads((REPO / "docs/results/params.json").read_text())["rows"]
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.mark.parametrize("size", MIXDEHAZENET.sizes)
def test_parameter_counts(size):
    """Those of docs/BASELINES.md; the paper's concat fusion leaves out upstream's unused text
    branch (q2, k1, v1, postProj_t: 56 parameters)."""
    plain = build_model(f"{MIXDEHAZENET.plain}-{size}")
    assert not plain.needs_text
    assert n_params(plain) == count(MEASURED[f"{MIXDEHAZENET.plain}-{size}"]["params"])
    mixcl = build_model(f"{MIXDEHAZENET.guided}-{size}")
    measured = MEASURED[f"{MIXDEHAZENET.guided}-{size}"]
    assert mixcl.needs_text
    assert n_params(mixcl) == count(measured["params"])
    with_branch = build_model(f"{MIXDEHAZENET.guided}-{size}", text_branch=True)
    assert n_params(with_branch) == count(measured["params with unused text branch"])
    assert n_params(with_branch) - n_params(mixcl) == 56


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_name_of_the_registry_builds_its_variant(name):
    backbone, size, fusion = split_name(name)
    with torch.device("meta"):  # shapes only
        model = build_model(name, depths=[1] * backbone.stages)
    assert model.fusion == fusion and model.needs_text == (fusion != "none")
    assert name in (f"{backbone.plain}-{size}", f"{backbone.guided}-{size}")


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=", ".join(MODEL_NAMES)):
        build_model("mixcl-xl")


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("mixdehazenet-t", {}),
        ("mixcl-t", {}),
        ("mixcl-t", {"fusion": "add", "depths": TINY}),
        ("mixdehazenet-s", {"depths": TINY, "fused_dwconv": False}),
    ],
)
def test_forward_keeps_shape_and_every_parameter_learns(name, overrides):
    model = build_model(name, **overrides).train()
    t = text(batch=2) if model.needs_text else None
    out = model(image(37, 53, batch=2), t)
    assert out.shape == (2, 3, 37, 53)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("hw", [(1, 1), (5, 90), (2, 3), (39, 4)])
def test_tiny_and_thin_inputs(hw):
    model = randomize(build_model("mixcl-t", depths=TINY))
    with torch.no_grad():
        out = model(image(*hw), text())
    assert out.shape == (1, 3, *hw)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("hw", [(40, 41), (38, 45), (44, 37)])
def test_inputs_upstream_accepts_use_its_padding(hw):
    """Sides of 37 px and more pad to the next multiple of 4 only, as upstream does."""
    model = randomize(build_model("mixcl-t", depths=TINY))
    x, t = image(*hw), text()
    h, w = hw
    padded = F.pad(x, (0, -w % 4, 0, -h % 4), mode="reflect")
    with torch.no_grad():
        k, b = model.forward_features(padded, t).split((1, 3), dim=1)
        expected = (k * padded - b + padded)[:, :, :h, :w]
        assert torch.equal(model(x, t), expected)


def test_text_is_required_by_fusion_and_ignored_without():
    mixcl = build_model("mixcl-t", depths=TINY).eval()
    with pytest.raises(ValueError, match="text"):
        mixcl(image(8, 8))
    with pytest.raises(ValueError, match=r"\(B, 1, 512\)"):
        mixcl(image(8, 8), torch.randn(1, 256))
    with torch.no_grad():
        assert torch.equal(mixcl(image(8, 8), text()), mixcl(image(8, 8), text()[:, 0]))
    plain = randomize(build_model("mixdehazenet-t", depths=TINY))
    with torch.no_grad():
        assert torch.equal(plain(image(8, 8)), plain(image(8, 8), text()))


@pytest.mark.parametrize("mode", ["concat", "add"])
def test_sdpa_fusion_equals_explicit_formula(mode):
    sdpa = randomize(TextImageFusion(mode=mode, text_branch=True), seed=3)
    explicit = TextImageFusion(mode=mode, attention="explicit", text_branch=True)
    explicit.load_state_dict(sdpa.state_dict())
    x, t = image(48, 40, batch=2), text(batch=2) * 3
    out_sdpa = sdpa(x.requires_grad_(), t)
    out_explicit = explicit(x, t)
    assert (out_sdpa - out_explicit).abs().max() <= 1e-5
    grad_sdpa = torch.autograd.grad(out_sdpa.sum(), sdpa.q1.weight)[0]
    grad_explicit = torch.autograd.grad(out_explicit.sum(), explicit.q1.weight)[0]
    assert (grad_sdpa - grad_explicit).abs().max() <= 1e-5 * grad_explicit.abs().max()


def test_upstream_checkpoint_with_prefix_and_text_branch(tmp_path, caplog):
    upstream = randomize(build_model("mixcl-t", depths=TINY, text_branch=True))
    state = {f"module.{k}": v for k, v in upstream.state_dict().items()}
    path = tmp_path / "mixcl.pth"
    torch.save({"state_dict": state}, path)

    model = build_model("mixcl-t", depths=TINY).eval()
    with caplog.at_level(logging.INFO, logger="models.loading"):
        load_pretrained(model, torch.load(path, weights_only=True))
    assert "text_emb.postProj_t.weight" in caplog.text
    assert torch.equal(
        model.layer3.blocks[0].norm2.running_var, upstream.layer3.blocks[0].norm2.running_var
    )
    x, t = image(40, 40), text()
    with torch.no_grad():
        assert torch.equal(model(x, t), upstream(x, t))

    with_branch = build_model("mixcl-t", depths=TINY, text_branch=True)
    load_pretrained(with_branch, state)
    assert torch.equal(with_branch.text_emb.k1.weight, upstream.text_emb.k1.weight)


def test_own_checkpoint_format_round_trips():
    source = randomize(build_model("mixdehazenet-t", depths=TINY))
    model = build_model("mixdehazenet-t", depths=TINY)
    load_pretrained(model, {"model": source.state_dict(), "epoch": 3, "config": {"lr": 1e-3}})
    for (name, a), b in zip(model.state_dict().items(), source.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_loader_names_bad_keys():
    state = build_model("mixcl-t", depths=TINY).state_dict()
    model = build_model("mixcl-t", depths=TINY)

    bad_shape = dict(state, **{"layer1.blocks.0.conv2.weight": torch.zeros(24, 24, 3, 3)})
    with pytest.raises(ValueError, match=r"shape mismatch: layer1\.blocks\.0\.conv2\.weight"):
        load_pretrained(model, bad_shape)

    missing = {k: v for k, v in state.items() if k != "skip1.bias"}
    with pytest.raises(ValueError, match=r"missing keys: skip1\.bias"):
        load_pretrained(model, missing)

    # A prefix on only some keys is not stripped, so those keys are unexpected.
    partly_prefixed = {("module." + k if k == "skip1.bias" else k): v for k, v in state.items()}
    with pytest.raises(ValueError, match=r"unexpected keys: module\.skip1\.bias"):
        load_pretrained(model, partly_prefixed)

    plain = build_model("mixdehazenet-t", depths=TINY)
    with pytest.raises(ValueError, match=r"unexpected keys: text_emb\.k2\.bias"):
        load_pretrained(plain, state)


@pytest.mark.parametrize("channels_last", [False, True])
def test_sdpa_fusion_runs_on_the_fused_kernel(channels_last):
    """The memory saving needs the fused kernel; limiting SDPA to it raises if it is not usable."""
    fusion = TextImageFusion()
    x = image(40, 48)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        fusion(x.requires_grad_(), text()).sum().backward()


def test_attention_padded_for_the_cuda_kernels_equals_the_explicit_formula(monkeypatch):
    """Zero columns up to a head width of 8 (what the fused CUDA kernels need) change nothing."""
    widths = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, *args, **kwargs):
        widths.append(q.shape[-1])
        return sdpa(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, n, 5, generator=gen).requires_grad_() for n in (300, 512, 512))
    padded, explicit = fused_attention(q, k, v, head_multiple=8), pixel_text_attention(q, k, v)
    assert widths == [8]
    assert padded.shape == (2, 300, 5)
    assert (padded - explicit).abs().max() <= 1e-5
    grads = torch.autograd.grad(padded.square().sum(), (q, k, v))
    grads_ref = torch.autograd.grad(explicit.square().sum(), (q, k, v))
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert (g - g_ref).abs().max() <= 1e-5 * max(1.0, g_ref.abs().max())


@CUDA
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)]
)
def test_fusion_runs_on_a_fused_cuda_kernel_in_every_precision(dtype, tol, exact_fp32):
    """The math path would store the (H*W x D) map; only the fused kernels are allowed here."""
    ref_fusion = randomize(TextImageFusion(), seed=3)
    fusion = copy.deepcopy(ref_fusion).cuda()
    x, t = image(40, 48, batch=2), text(batch=2) * 3
    with torch.no_grad():
        ref = ref_fusion(x, t)
    low = torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32)
    with sdpa_kernel(FUSED_CUDA_BACKENDS):
        with low:
            out = fusion(x.cuda().requires_grad_(), t.cuda())
        out.float().sum().backward()
    assert (out.float().cpu() - ref).abs().max() <= tol * max(1.0, ref.abs().max())
    assert all(torch.isfinite(p.grad).all() for p in fusion.parameters())


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (5, 90), (40, 41)])
def test_padding_reflects_repeatedly_as_single_reflect_pads_do(hw):
    """pad_bottom_right (index arithmetic, which exports with dynamic sizes) equals reflect pads
    applied one after another, each as long as the side allows (a 1-px side replicated)."""
    x = image(*hw)
    height, width = padded_size(hw[0], 40), padded_size(hw[1], 40)
    expected = x
    while expected.shape[-2:] != (height, width):
        h, w = expected.shape[-2:]
        pad_h, pad_w = height - h, width - w
        if (h == 1 and pad_h) or (w == 1 and pad_w):
            steps, mode = (int(h == 1 and pad_h > 0), int(w == 1 and pad_w > 0)), "replicate"
        else:
            steps, mode = (min(pad_h, h - 1), min(pad_w, w - 1)), "reflect"
        expected = F.pad(expected, (0, steps[1], 0, steps[0]), mode=mode)
    assert torch.equal(pad_bottom_right(x, height, width), expected)
