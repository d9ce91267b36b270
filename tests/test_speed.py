"""Every speed option computes the same network: fp32 options within 1e-5, autocast within a
stated tolerance, torch.compile within 1e-5 of eager (CPU, tiny sizes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.mixdehazenet import MixStructureBlock

from .helpers import FP32_TOL, TINY, image, randomize, reference_and, text

# bf16 keeps 8 bits of mantissa (relative step 2**-8 = 0.4%); on outputs of order 1 the
# measured error is about 0.005 at most and 0.001 on average, so these bounds leave 4x room.
BF16_TOL = 0.02
BF16_MEAN_TOL = 0.004
# fp16 keeps 11 bits: 8x finer than bf16.
FP16_TOL = 0.005
# cuDNN's fp32 algorithms (Winograd, FFT) round differently from the CPU's direct convolutions.
CUDA_FP32_TOL = 1e-4
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
OPTIONS = [
    {},
    {"channels_last": False},
    {"fused_dwconv": True},
    {"strips": False},
    {"fused_dwconv": True, "channels_last": False},
]


@pytest.mark.parametrize("overrides", OPTIONS)
def test_options_keep_the_state_dict_keys(overrides):
    assert list(build_model("mixcl-t", **overrides).state_dict()) == list(
        build_model("mixcl-t").state_dict()
    )


@pytest.mark.parametrize("overrides", OPTIONS)
def test_options_give_the_straightforward_outputs_and_gradients(overrides):
    ref, model = reference_and(overrides)
    x, t = image(45, 61, batch=2), text(batch=2)
    out_ref, out = ref(x, t), model(x, t)
    assert (out - out_ref).abs().max() <= FP32_TOL
    with torch.no_grad():
        assert (model(x, t) - out_ref).abs().max() <= FP32_TOL
    params, params_ref = dict(model.named_parameters()), dict(ref.named_parameters())
    names = [n for n in params_ref if n in params]
    grads_ref = torch.autograd.grad(out_ref.square().mean(), [params_ref[n] for n in names])
    grads = torch.autograd.grad(out.square().mean(), [params[n] for n in names])
    for name, g_ref, g in zip(names, grads_ref, grads, strict=True):
        assert (g - g_ref).abs().max() <= FP32_TOL * max(1.0, g_ref.abs().max()), name


def test_options_match_in_training_mode_batchnorm():
    """BatchNorm on batch statistics (and its running-stat update) sees the same tensors."""
    ref, model = reference_and({})
    ref.train(), model.train()
    x, t = image(40, 44, batch=2), text(batch=2)
    assert (model(x, t) - ref(x, t)).abs().max() <= FP32_TOL
    for key, value in model.state_dict().items():
        assert (value.float() - ref.state_dict()[key].float()).abs().max() <= FP32_TOL, key


@pytest.mark.parametrize(("batch", "hw"), [(1, (52, 45)), (2, (40, 97))])
def test_inference_strips_equal_whole_maps(monkeypatch, batch, hw):
    """Strips of a few rows, the last one shorter, give the whole-map result."""
    model = randomize(build_model("mixcl-t", depths=TINY))
    x, t = image(*hw, batch=batch), text(batch=batch)
    whole = model(x, t).detach()
    monkeypatch.setattr(MixStructureBlock, "STRIP_VALUES", 7 * 4 * 24 * hw[1])
    with torch.inference_mode():
        strips = model(x, t)
    assert (strips - whole).abs().max() <= FP32_TOL


def test_block_strips_do_not_modify_the_input():
    block = randomize(MixStructureBlock(24))
    x = torch.randn(1, 24, 20, 30)
    before = x.clone()
    with torch.no_grad():
        block(x)
    assert torch.equal(x, before)


def test_output_is_a_plain_contiguous_tensor():
    out = randomize(build_model("mixcl-t", depths=TINY))(image(41, 43), text())
    assert out.is_contiguous()


def test_bf16_autocast_on_cpu_stays_within_tolerance():
    model = randomize(build_model("mixcl-t", depths=TINY))
    x, t = image(48, 48, batch=2), text(batch=2)
    with torch.no_grad():
        ref = model(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t)
    err = (low.float() - ref).abs()
    assert err.max() <= BF16_TOL
    assert err.mean() <= BF16_MEAN_TOL


@CUDA
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, FP16_TOL), (torch.bfloat16, BF16_TOL)])
def test_cuda_autocast_stays_within_tolerance(dtype, tol):
    """Against fp32 on the CPU: the GPU's own fp32 lets cuDNN use TF32 by default."""
    model = randomize(build_model("mixcl-t", depths=TINY))
    x, t = image(64, 64, batch=2), text(batch=2)
    with torch.no_grad():
        ref = model(x, t)
        with torch.autocast("cuda", dtype=dtype):
            low = model.cuda()(x.cuda(), t.cuda()).float().cpu()
    assert (low - ref).abs().max() <= tol


@CUDA
@pytest.mark.parametrize("overrides", OPTIONS)
def test_options_on_cuda_give_the_straightforward_cpu_outputs(overrides, exact_fp32):
    """Every option's CUDA path (fused attention kernel, strips, channels-last), with and
    without autograd, computes what the straightforward model computes on the CPU."""
    ref, model = reference_and(overrides)
    x, t = image(45, 61, batch=2), text(batch=2)
    with torch.no_grad():
        out_ref = ref(x, t)
    model.cuda()
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            out = model(x.cuda(), t.cuda()).cpu()
        assert (out - out_ref).abs().max() <= CUDA_FP32_TOL, f"grad enabled: {grad}"


@pytest.mark.parametrize(
    "backend", ["aot_eager", pytest.param("inductor", marks=CUDA, id="inductor-cuda")]
)
def test_torch_compile_inference_matches_eager(backend):
    """The captured inference graph; on CUDA also Inductor's generated (Triton) kernels.

    speed.compile is off by default on every device; Inductor's C++ kernels for the CPU took
    about a minute to compile from a cold cache on 2 cores, a third of the suite's time.
    """
    device = "cuda" if backend == "inductor" else "cpu"
    model = randomize(build_model("mixcl-t", depths=TINY)).to(device)
    x, t = image(32, 32).to(device), text().to(device)
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        assert (compiled(x, t) - model(x, t)).abs().max() <= FP32_TOL


def test_torch_compile_training_graph_matches_eager():
    """The captured training graph and its AOT-autograd backward; `aot_eager` runs them with
    eager kernels, because inductor's backward adds over a minute of compiling on 2 cores."""
    model = randomize(build_model("mixcl-t", depths=TINY)).train()
    x, t = image(32, 32, batch=2), text(batch=2)
    compiled = torch.compile(model, backend="aot_eager")
    out, out_ref = compiled(x, t), model(x, t)
    assert (out - out_ref).abs().max() <= FP32_TOL
    weight = model.patch_embed.proj.weight
    g = torch.autograd.grad(F.l1_loss(out, x), weight)[0]
    g_ref = torch.autograd.grad(F.l1_loss(out_ref, x), weight)[0]
    assert (g - g_ref).abs().max() <= FP32_TOL * max(1.0, g_ref.abs().max())


@pytest.mark.parametrize("name", ["mixdehazenet-t", "mixcl-t"])
def test_channels_last_reaches_every_stage(name):
    """The fused input must not fall back to NCHW: every convolution would run on the slow path."""
    model = build_model(name, depths=(1, 1, 1, 1, 1), text_dim=8).eval()
    seen = []
    for module in (model.patch_embed, model.layer1, model.layer3, model.layer5):
        module.register_forward_pre_hook(
            lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )
    text = torch.randn(1, 1, 8) if model.needs_text else None
    with torch.no_grad():
        model(torch.rand(1, 3, 44, 52) * 2 - 1, text)
    assert seen == [True] * 4
