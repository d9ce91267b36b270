"""The parts of the networks' inference path: eval-mode BatchNorm and 1x1 convolutions folded
into the convolution after them, and convolutions that apply their activation or residual
addition in the same oneDNN call on the CPU (elsewhere: the same operations one after another).

Folding is exact in real arithmetic: a per-pixel affine map (BatchNorm, a 1x1 convolution)
commutes with reflect padding, which only repeats pixels, so it can be composed into the weights
and bias of a convolution that follows it. The folded weights are computed on every call from
the parameters: they are small, and nothing computed earlier can go stale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Activations of `conv`, by oneDNN's post-op names; GELU is the exact (erf) one, as nn.GELU's.
ACTIVATIONS = {"gelu": F.gelu, "sigmoid": torch.sigmoid}

Weights = tuple[torch.Tensor, torch.Tensor]  # a convolution's weight and bias


def batchnorm_affine(bn: nn.BatchNorm2d) -> Weights:
    """Scale and shift per channel of an eval-mode BatchNorm: bn(x) = scale * x + shift."""
    var, mean = bn.running_var, bn.running_mean
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def conv_weights(conv: nn.Conv2d) -> Weights:
    """A convolution's weight and bias (zeros where it has none)."""
    bias = conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
    return conv.weight, bias


def after_affine(conv: Weights, scale: torch.Tensor, shift: torch.Tensor) -> Weights:
    """`conv` applied to scale * x + shift (per input channel), as one convolution of x.

    Exact for a 1x1 convolution, and for a larger one whose padding repeats pixels (reflect),
    not for one that pads with zeros (the shift would reach the zeros).
    """
    weight, bias = conv
    return weight * scale[:, None, None], bias + (weight * shift[:, None, None]).sum((1, 2, 3))


def after_pointwise(conv: Weights, inner: Weights) -> Weights:
    """`conv` (dense, any kernel) applied to the output of the 1x1 convolution `inner`, as one
    convolution (exact under the same condition as `after_affine`)."""
    weight, bias = conv
    inner_weight, inner_bias = inner
    composed = torch.einsum("omhw,mi->oihw", weight, inner_weight[:, :, 0, 0])
    return composed, bias + torch.einsum("omhw,m->o", weight, inner_bias)


def _has_onednn_fusion() -> bool:
    """Whether torch has oneDNN's fused convolutions (built with mkldnn, as x86 wheels are)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._convolution_pointwise.binary  # noqa: B018 (resolves the op)
    except (AttributeError, RuntimeError):
        return False
    return True


ONEDNN_FUSION = _has_onednn_fusion()


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a convolution of `x` computes in: autocast's where it is on, else x's."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def conv(
    x: torch.Tensor,
    weights: Weights,
    *,
    dilation: int = 1,
    groups: int = 1,
    act: str | None = None,
    add: torch.Tensor | None = None,
) -> torch.Tensor:
    """act(conv2d(x)) or conv2d(x) + add, without padding; on the CPU one oneDNN call (where
    torch has it).

    Without autograd only (the fused call has no backward). Under autocast it computes in
    autocast's dtype, as F.conv2d would.
    """
    if act is not None and add is not None:
        raise ValueError("conv applies an activation or adds a tensor, not both")
    weight, bias = weights
    if x.device.type != "cpu" or not ONEDNN_FUSION:
        out = F.conv2d(x, weight, bias, dilation=dilation, groups=groups)
        return ACTIVATIONS[act](out) if act else out if add is None else out + add
    dtype = compute_dtype(x)
    x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
    geometry = ([0, 0], [1, 1], [dilation, dilation], groups)
    mkldnn = torch.ops.mkldnn
    if add is None:  # algorithm: GELU's exact (erf) form, called "none"
        algorithm = "none" if act == "gelu" else None
        return mkldnn._convolution_pointwise(
            x, weight, bias, *geometry, act or "none", [], algorithm
        )
    return mkldnn._convolution_pointwise.binary(
        x, add.to(dtype), weight, bias, *geometry, "add", None, None, [], None
    )


def add_conv_(out: torch.Tensor, x: torch.Tensor, weights: Weights) -> torch.Tensor:
    """out += conv2d(x), in place (`out` may be a view); on the CPU one oneDNN call."""
    weight, bias = weights
    if x.device.type != "cpu" or not ONEDNN_FUSION:
        return out.add_(F.conv2d(x, weight, bias))
    dtype = out.dtype
    geometry = ([0, 0], [1, 1], [1, 1], 1)
    return torch.ops.mkldnn._convolution_pointwise_.binary(
        out, x.to(dtype), weight.to(dtype), bias.to(dtype), *geometry, "add", None, None, [], None
    )


def rows_padded(x: torch.Tensor, start: int, stop: int, pad: int) -> torch.Tensor:
    """Rows start..stop of `x` reflect-padded by `pad` on every side: the same pixels as those
    rows of F.pad(x, (pad,) * 4, mode='reflect'), without padding the whole map."""
    h = x.shape[-2]
    low, high = max(0, start - pad), min(h, stop + pad)
    top, bottom = pad - (start - low), pad - (high - stop)
    return F.pad(x[:, :, low:high], (pad, pad, top, bottom), mode="reflect")


def empty_padded(x: torch.Tensor, pad: int) -> torch.Tensor:
    """An uninitialised map of x's size plus `pad` on every side, in x's memory layout and the
    dtype x's convolutions compute in."""
    b, c, h, w = x.shape
    layout = torch.channels_last
    if not x.is_contiguous(memory_format=torch.channels_last):
        layout = torch.contiguous_format
    size = (b, c, h + 2 * pad, w + 2 * pad)
    return torch.empty(size, dtype=compute_dtype(x), device=x.device, memory_format=layout)


def reflect_border(padded: torch.Tensor, pad: int) -> torch.Tensor:
    """Fill the `pad` wide border of `padded` from its interior, as reflect padding does."""
    h, w = padded.shape[-2] - 2 * pad, padded.shape[-1] - 2 * pad
    padded[:, :, :pad] = padded[:, :, pad + 1 : 2 * pad + 1].flip(2)
    padded[:, :, pad + h :] = padded[:, :, h - 1 : h + pad - 1].flip(2)
    padded[..., :pad] = padded[..., pad + 1 : 2 * pad + 1].flip(3)
    padded[..., pad + w :] = padded[..., w - 1 : w + pad - 1].flip(3)
    return padded
