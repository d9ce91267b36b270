"""The inference path (eval mode, no autograd): folded weights, fused convolutions and strips
compute what the modules compute one after another, in fp32 within float tolerance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import build_model, inference
from models.common import SKFusion
from models.inference import (
    add_conv_,
    after_affine,
    after_pointwise,
    batchnorm_affine,
    conv,
    conv_weights,
    reflect_border,
    rows_padded,
)
from models.mixdehazenet import EMBED_DIMS, MixStructureBlock

from .helpers import FP32_TOL, TINY, image, randomize, text

CHANNELS_LAST = torch.channels_last
WIDTHS = sorted(set(EMBED_DIMS))  # the blocks' widths in every stage


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_(1, 0.2)
        bn.bias.normal_()
    return bn


def test_batchnorm_is_its_affine_map():
    bn, x = _bn(6), torch.randn(2, 6, 5, 7)
    scale, shift = batchnorm_affine(bn)
    expected = bn(x)
    assert (x * scale[:, None, None] + shift[:, None, None] - expected).abs().max() <= FP32_TOL


def test_folding_is_exact_before_a_reflect_padded_conv():
    """bn -> 1x1 conv -> 5x5 conv with reflect padding is one 5x5 conv of the padded input."""
    torch.manual_seed(0)
    bn, one, five = (
        _bn(8),
        nn.Conv2d(8, 8, 1),
        nn.Conv2d(8, 6, 5, padding=2, padding_mode="reflect"),
    )
    x = torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        expected = five(one(bn(x)))
        folded = after_affine(
            after_pointwise(conv_weights(five), conv_weights(one)), *batchnorm_affine(bn)
        )
        got = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), *folded)
    assert (got - expected).abs().max() <= FP32_TOL


@pytest.mark.parametrize("fused", [True, False], ids=["onednn", "unfused"])
@pytest.mark.parametrize("act", [None, "gelu", "sigmoid"])
def test_conv_applies_its_activation_or_addition(monkeypatch, fused, act):
    monkeypatch.setattr(inference, "ONEDNN_FUSION", fused and inference.ONEDNN_FUSION)
    torch.manual_seed(0)
    x = torch.randn(1, 8, 6, 10).contiguous(memory_format=CHANNELS_LAST)
    weights = (torch.randn(6, 4, 3, 3) * 0.2, torch.randn(6))
    plain = F.conv2d(x, *weights, dilation=2, groups=2)
    with torch.no_grad():
        got = conv(x, weights, dilation=2, groups=2, act=act)
        assert (got - (inference.ACTIVATIONS[act](plain) if act else plain)).abs().max() <= FP32_TOL
        other = torch.randn_like(plain)
        assert (
            conv(x, weights, dilation=2, groups=2, add=other) - plain - other
        ).abs().max() <= FP32_TOL
    with pytest.raises(ValueError, match="not both"):
        conv(x, weights, act="gelu", add=other)


@pytest.mark.parametrize("fused", [True, False], ids=["onednn", "unfused"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_add_conv_adds_into_rows_of_a_map(monkeypatch, fused, channels_last):
    monkeypatch.setattr(inference, "ONEDNN_FUSION", fused and inference.ONEDNN_FUSION)
    torch.manual_seed(0)
    layout = CHANNELS_LAST if channels_last else torch.contiguous_format
    out = torch.randn(1, 6, 9, 10).contiguous(memory_format=layout)
    x = torch.randn(1, 4, 3, 10).contiguous(memory_format=layout)
    weights = (torch.randn(6, 4, 1, 1), torch.randn(6))
    expected = out.clone()
    expected[:, :, 2:5] += F.conv2d(x, *weights)
    with torch.no_grad():
        add_conv_(out[:, :, 2:5], x, weights)
    assert (out - expected).abs().max() <= FP32_TOL


def test_conv_computes_in_autocasts_dtype():
    x, weights = torch.randn(1, 4, 5, 5), (torch.randn(3, 4, 1, 1), torch.randn(3))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x, weights, act="gelu").dtype == torch.bfloat16


@pytest.mark.parametrize(("start", "stop"), [(0, 2), (1, 5), (3, 9), (0, 9), (8, 9)])
def test_padded_rows_and_border_are_those_of_reflect_padding(start, stop):
    x = torch.randn(1, 3, 9, 12).contiguous(memory_format=CHANNELS_LAST)
    whole = F.pad(x, (3, 3, 3, 3), mode="reflect")
    assert torch.equal(rows_padded(x, start, stop, 3), whole[:, :, start : stop + 6])
    border = torch.full_like(whole, float("nan"))
    border[:, :, 3:-3, 3:-3] = x
    assert torch.equal(reflect_border(border, 3), whole)


@pytest.mark.parametrize("dim", WIDTHS)
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_block_inference_path_equals_its_modules(monkeypatch, dim, channels_last):
    """Strips of 3 rows (the last one shorter), batch of 2, both memory layouts."""
    block = randomize(MixStructureBlock(dim), seed=dim)
    x = torch.randn(2, dim, 11, 23)
    if channels_last:
        x = x.contiguous(memory_format=CHANNELS_LAST)
    block.strips = False
    with torch.no_grad():
        expected = block(x)
    block.strips = True
    monkeypatch.setattr(MixStructureBlock, "STRIP_VALUES", 3 * 4 * dim * 23)
    with torch.inference_mode():
        got = block(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= FP32_TOL * max(1.0, expected.abs().max())


def test_training_mode_without_autograd_uses_batch_statistics():
    """Training-mode BatchNorm under no_grad (its running statistics updated) is not folded."""
    torch.manual_seed(0)
    model, ref = (randomize(build_model("mixcl-t", depths=TINY)).train() for _ in range(2))
    x, t = image(40, 44, batch=2), text(batch=2)
    with torch.no_grad():
        out = model(x, t)
    expected = ref(x, t)
    assert (out - expected).abs().max() <= FP32_TOL
    for key, value in model.state_dict().items():
        assert (value.float() - ref.state_dict()[key].float()).abs().max() <= FP32_TOL, key


@pytest.mark.parametrize("batch", [1, 2])
def test_skip_fusion_without_the_stored_skip_conv(batch):
    torch.manual_seed(0)
    fusion, skip_conv = SKFusion(24).eval(), nn.Conv2d(24, 24, 1)
    x, skip = torch.randn(batch, 24, 7, 9), torch.randn(batch, 24, 7, 9)
    with torch.no_grad():
        expected = fusion([x, skip_conv(skip)]) + x
        got = fusion.with_conv_skip(x, skip, skip_conv)
    assert (got - expected).abs().max() <= FP32_TOL
