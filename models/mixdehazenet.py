"""MixDehazeNet encoder-decoder, optionally guided by a CLIP text feature (MixCLDehazeNet).

Module and parameter names, Sequential indices, padding modes and the order of operations follow
the authors' code, so their released checkpoints load unchanged (see `models.load_pretrained`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.common import PatchEmbed, PatchUnEmbed, SKFusion, UNetDehazer
from models.inference import (
    add_conv_,
    after_affine,
    after_pointwise,
    batchnorm_affine,
    compute_dtype,
    conv,
    conv_weights,
    empty_padded,
    reflect_border,
    rows_padded,
)

EMBED_DIMS = (24, 48, 96, 48, 24)
# Side of the padded input that every stage can reflect-pad: the 1/4-scale stage pads by 9.
MIN_SIDE = 40
# Blocks per stage of each size (models/registry.py names the sizes).
DEPTHS: dict[str, tuple[int, ...]] = {
    "t": (1, 1, 2, 1, 1),
    "s": (2, 2, 4, 2, 2),
    "b": (4, 4, 8, 4, 4),
    "l": (8, 8, 16, 8, 8),
}


def _conv_mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(dim * 3, dim * 4, 1), nn.GELU(), nn.Conv2d(dim * 4, dim, 1))


class MixStructureBlock(nn.Module):
    """Multi-scale parallel large kernels, then enhanced parallel attention; both residual.

    Args:
        dim: channels.
        fused_dwconv: with autograd, run the three dilated depthwise convs as one grouped conv
            (same numbers, one kernel instead of three pads, three convs and a cat; the
            parameters stay the three upstream tensors). On CPU it measures no faster.
        strips: in eval mode without autograd, the inference path (`_forward_inference`):
            folded, fused and over strips of rows, so the 3*dim and 4*dim channel
            intermediates exist for one strip at a time, not the whole image.
    """

    # Values (pixels x channels) of the widest intermediate (4*dim channels) of one strip of the
    # inference path: small enough for it to stay in the allocator's reused memory and mostly in
    # cache, large enough for each convolution call to be efficient.
    STRIP_VALUES = 2**21

    def __init__(self, dim: int, fused_dwconv: bool = False, strips: bool = True) -> None:
        super().__init__()
        self.fused_dwconv = fused_dwconv
        self.strips = strips
        self.norm1 = nn.BatchNorm2d(dim)
        self.norm2 = nn.BatchNorm2d(dim)

        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.conv2 = nn.Conv2d(dim, dim, 5, padding=2, padding_mode="reflect")
        self.conv3_19 = nn.Conv2d(
            dim, dim, 7, padding=9, groups=dim, dilation=3, padding_mode="reflect"
        )
        self.conv3_13 = nn.Conv2d(
            dim, dim, 5, padding=6, groups=dim, dilation=3, padding_mode="reflect"
        )
        self.conv3_7 = nn.Conv2d(
            dim, dim, 3, padding=3, groups=dim, dilation=3, padding_mode="reflect"
        )

        self.Wv = nn.Sequential(
            nn.Conv2d(dim, dim, 1),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, padding_mode="reflect"),
        )
        self.Wg = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim, 1), nn.Sigmoid())
        self.ca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, dim, 1),
            nn.GELU(),
            nn.Conv2d(dim, dim, 1),
            nn.Sigmoid(),
        )
        self.pa = nn.Sequential(
            nn.Conv2d(dim, dim // 8, 1), nn.GELU(), nn.Conv2d(dim // 8, 1, 1), nn.Sigmoid()
        )
        self.mlp = _conv_mlp(dim)
        self.mlp2 = _conv_mlp(dim)

    def _multi_scale_separate(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.conv3_19(x), self.conv3_13(x), self.conv3_7(x)], dim=1)
        return self.mlp(x)

    def _multi_scale_fused(self, x: torch.Tensor) -> torch.Tensor:
        """One grouped 7x7 dilated conv over a single reflect pad of 9.

        The 5x5 and 3x3 kernels are zero-padded to 7x7 (same centre, same dilation), so each
        output equals its own conv: reflect padding by 9 contains the reflect padding by 6 and 3.
        The output is interleaved per input channel (19, 13, 7, 19, ...), so the first conv of
        `mlp` gets its input channels permuted to match instead of reordering the activations.
        """
        dim = x.shape[1]
        w19 = self.conv3_19.weight
        w13 = F.pad(self.conv3_13.weight, (1, 1, 1, 1))
        w7 = F.pad(self.conv3_7.weight, (2, 2, 2, 2))
        weight = torch.stack([w19, w13, w7], dim=1).reshape(3 * dim, 1, 7, 7)
        bias = torch.stack([self.conv3_19.bias, self.conv3_13.bias, self.conv3_7.bias], dim=1)
        x = F.pad(x, (9, 9, 9, 9), mode="reflect")
        x = F.conv2d(x, weight, bias.reshape(-1), dilation=3, groups=dim)

        first = self.mlp[0]
        mlp_weight = first.weight.reshape(-1, 3, dim).transpose(1, 2).reshape_as(first.weight)
        x = F.conv2d(x, mlp_weight, first.bias)
        return self.mlp[2](self.mlp[1](x))

    def _epa_inputs(
        self, y: torch.Tensor, v: torch.Tensor, g: torch.Tensor, c: torch.Tensor
    ) -> torch.Tensor:
        """The three attention branches, concatenated: input of `mlp2`."""
        return torch.cat([v * g, c * y, self.pa(y) * y], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strips and not self.training and not torch.is_grad_enabled():
            return self._forward_inference(x)
        identity = x
        x = self.conv2(self.conv1(self.norm1(x)))
        multi_scale = self._multi_scale_fused if self.fused_dwconv else self._multi_scale_separate
        x = identity + multi_scale(x)

        identity = x
        y = self.norm2(x)
        x = self._epa_inputs(y, self.Wv(y), self.Wg(y), self.ca(y))
        return identity + self.mlp2(x)

    def _strip_rows(self, x: torch.Tensor) -> int:
        return max(1, self.STRIP_VALUES // (4 * x.shape[1] * x.shape[-1]))

    def _forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """The same computation in eval mode without autograd: folded, fused, in strips, one
        image at a time.

        norm1, conv1 and conv2 are affine and conv2 pads by reflection, so they are one 5x5
        convolution; norm2 is folded into the convolutions that read it, and the image's gates
        Wg and ca into mlp2's first layer; activations and residual additions are part of
        their convolutions (models.inference.conv). Everything runs over strips of rows; the
        whole maps are the padded inputs of the depthwise convolutions and the first half's
        result (the pooled branches need its mean), into which the second half adds.
        """
        if x.shape[0] > 1:
            return torch.cat([self._forward_inference(image[None]) for image in x])
        return self._attention_inference(self._multi_scale_inference(x))

    def _dwconvs_on_padded(self, padded: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """The three dilated depthwise convs of `rows` rows of a map reflect-padded by 9.

        Kernel k (dilation 3) with padding p reads the rows of `padded` from 9 - p on, and its
        output's columns from 9 - p on are the map's: whole rows of a channels-last map are one
        block of memory, so only the output is cropped, by the concatenation's copy.
        """
        outs = []
        for layer in (self.conv3_19, self.conv3_13, self.conv3_7):
            off = 9 - layer.padding[0]
            crop = padded[:, :, off : off + rows + 2 * layer.padding[0]]
            out = conv(crop, conv_weights(layer), dilation=3, groups=layer.groups)
            outs.append(out[..., off : off + cols])
        return torch.cat(outs, dim=1)

    def _multi_scale_inference(self, x: torch.Tensor) -> torch.Tensor:
        """x + mlp(the three depthwise convs of conv2(conv1(norm1(x))))."""
        h, w = x.shape[-2:]
        step = self._strip_rows(x)
        entry = after_pointwise(conv_weights(self.conv2), conv_weights(self.conv1))
        entry = after_affine(entry, *batchnorm_affine(self.norm1))
        padded = empty_padded(x, 9)
        for r in range(0, h, step):
            rows = slice(r, min(r + step, h))
            padded[:, :, 9 + r : 9 + rows.stop, 9 : 9 + w] = conv(
                rows_padded(x, r, rows.stop, 2), entry
            )
        reflect_border(padded, 9)
        hidden, last = conv_weights(self.mlp[0]), conv_weights(self.mlp[2])
        out = empty_padded(x, 0)
        for r in range(0, h, step):
            rows = slice(r, min(r + step, h))
            multi = self._dwconvs_on_padded(padded[:, :, r : rows.stop + 18], rows.stop - r, w)
            out[:, :, rows] = conv(conv(multi, hidden, act="gelu"), last, add=x[:, :, rows])
        return out

    def _attention_inference(self, x: torch.Tensor) -> torch.Tensor:
        """x + mlp2(the attention branches of y = norm2(x)), written into x (the first half's
        result, which nothing else reads): each strip's branches are computed before its rows
        are overwritten."""
        h, w = x.shape[-2:]
        step = self._strip_rows(x)
        scale, shift = batchnorm_affine(self.norm2)
        value_in = after_affine(conv_weights(self.Wv[0]), scale, shift)
        value = empty_padded(x, 1)
        for r in range(0, h, step):
            rows = slice(r, min(r + step, h))
            value[:, :, 1 + r : 1 + rows.stop, 1 : 1 + w] = conv(x[:, :, rows], value_in)
        reflect_border(value, 1)

        depthwise = conv_weights(self.Wv[1])
        pa_in = after_affine(conv_weights(self.pa[0]), scale, shift)
        pa_out = conv_weights(self.pa[2])
        dtype = compute_dtype(x)
        scale, shift = scale[:, None, None].to(dtype), shift[:, None, None].to(dtype)
        pooled = torch.addcmul(shift, x.mean((2, 3), keepdim=True), scale)  # y's mean
        gates = torch.cat([self.Wg[1:](pooled), self.ca[1:](pooled), torch.ones_like(pooled)], 1)
        weight, bias = conv_weights(self.mlp2[0])
        hidden, last = (weight * gates, bias), conv_weights(self.mlp2[2])
        for r in range(0, h, step):
            rows = slice(r, min(r + step, h))
            y = torch.addcmul(shift, x[:, :, rows], scale)
            v = conv(value[:, :, r : rows.stop + 2], depthwise, groups=x.shape[1])
            p = conv(conv(x[:, :, rows], pa_in, act="gelu"), pa_out, act="sigmoid")
            branches = torch.cat([v, y, p * y], dim=1)
            add_conv_(x[:, :, rows], conv(branches, hidden, act="gelu"), last)
        return x


class BasicLayer(nn.Module):
    """`depth` MixStructureBlocks in sequence."""

    def __init__(
        self, dim: int, depth: int, fused_dwconv: bool = False, strips: bool = True
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            MixStructureBlock(dim, fused_dwconv, strips) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class MixDehazeNet(UNetDehazer):
    """The dehazing network; with fusion 'concat' or 'add' it is MixCLDehazeNet.

    Args:
        depths: blocks per stage (5 stages).
        fusion: 'none' (no text input), 'concat' (the paper's) or 'add'.
        text_dim: CLIP embedding width D.
        attention: 'sdpa' or 'explicit' (see TextImageFusion).
        text_branch: build/run upstream's unused text branch (benchmarks only).
        fused_dwconv: see MixStructureBlock.
        channels_last: run on channels-last (NHWC) activations, which oneDNN's depthwise and
            1x1 convolutions on CPU compute several times faster (same numbers).
        strips: see MixStructureBlock (the inference path); it also folds each skip
            connection's 1x1 conv into its fusion (SKFusion.with_conv_skip).
        in_chans, out_chans: image channels and head channels (K and B: 1 + 3).
    """

    min_side = MIN_SIDE

    def __init__(
        self,
        depths: Sequence[int] = (1, 1, 2, 1, 1),
        fusion: str = "none",
        text_dim: int = 512,
        attention: str = "sdpa",
        text_branch: bool = False,
        fused_dwconv: bool = False,
        channels_last: bool = True,
        strips: bool = True,
        in_chans: int = 3,
        out_chans: int = 4,
    ) -> None:
        super().__init__(fusion, text_dim, attention, text_branch, in_chans)
        if len(depths) != len(EMBED_DIMS):
            raise ValueError(f"depths needs {len(EMBED_DIMS)} entries, got {list(depths)}")
        self.channels_last = channels_last
        self.fold_skips = strips
        dims = EMBED_DIMS

        self.patch_embed = PatchEmbed(1, self.embed_chans, dims[0], kernel_size=3)
        self.layer1 = BasicLayer(dims[0], depths[0], fused_dwconv, strips)
        self.patch_merge1 = PatchEmbed(2, dims[0], dims[1], kernel_size=3)
        self.skip1 = nn.Conv2d(dims[0], dims[0], 1)
        self.layer2 = BasicLayer(dims[1], depths[1], fused_dwconv, strips)
        self.patch_merge2 = PatchEmbed(2, dims[1], dims[2], kernel_size=3)
        self.skip2 = nn.Conv2d(dims[1], dims[1], 1)
        self.layer3 = BasicLayer(dims[2], depths[2], fused_dwconv, strips)
        self.patch_split1 = PatchUnEmbed(2, dims[3], dims[2])
        self.fusion1 = SKFusion(dims[3])
        self.layer4 = BasicLayer(dims[3], depths[3], fused_dwconv, strips)
        self.patch_split2 = PatchUnEmbed(2, dims[4], dims[3])
        self.fusion2 = SKFusion(dims[4])
        self.layer5 = BasicLayer(dims[4], depths[4], fused_dwconv, strips)
        self.patch_unembed = PatchUnEmbed(1, out_chans, dims[4], kernel_size=3)

    def embed_input(self, x: torch.Tensor, text_feature: torch.Tensor | None) -> torch.Tensor:
        x = super().embed_input(x, text_feature)
        if self.channels_last:  # after the fusion, whose concatenation returns NCHW
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def build(size: str, **overrides: Any) -> MixDehazeNet:
    """MixDehazeNet of one size; `overrides` are MixDehazeNet arguments (fusion, depths, ...)."""
    return MixDehazeNet(**{"depths": DEPTHS[size], **overrides})
