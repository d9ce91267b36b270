"""Parts that MixDehazeNet and DehazeFormer share: the five-stage U-Net with its text fusion at
the input and its output formula, patch (un)embedding, selective-kernel fusion and the padding
of the input. Names and operations follow the authors' code of both networks, which define
these parts identically.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.inference import conv as fused_conv
from models.inference import conv_weights
from models.registry import FUSION_MODES
from models.text_fusion import TextImageFusion

# Sides of the padded input are multiples of this (upstream's rule for both networks).
PATCH_MULTIPLE = 4


class PatchEmbed(nn.Module):
    """Strided conv that changes width and (for patch_size 2) halves the resolution."""

    def __init__(
        self, patch_size: int, in_chans: int, embed_dim: int, kernel_size: int | None = None
    ) -> None:
        super().__init__()
        kernel_size = kernel_size or patch_size
        self.proj = nn.Conv2d(
            in_chans,
            embed_dim,
            kernel_size,
            stride=patch_size,
            padding=(kernel_size - patch_size + 1) // 2,
            padding_mode="reflect",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PatchUnEmbed(nn.Module):
    """Conv then PixelShuffle: changes width and multiplies the resolution by patch_size."""

    def __init__(
        self, patch_size: int, out_chans: int, embed_dim: int, kernel_size: int | None = None
    ) -> None:
        super().__init__()
        kernel_size = kernel_size or 1
        self.proj = nn.Sequential(
            nn.Conv2d(
                embed_dim,
                out_chans * patch_size**2,
                kernel_size,
                padding=kernel_size // 2,
                padding_mode="reflect",
            ),
            nn.PixelShuffle(patch_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class SKFusion(nn.Module):
    """Selective-kernel fusion: softmax-weighted sum of `height` same-shaped feature maps."""

    def __init__(self, dim: int, height: int = 2, reduction: int = 8) -> None:
        super().__init__()
        self.height = height
        d = max(dim // reduction, 4)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, d, 1, bias=False), nn.ReLU(), nn.Conv2d(d, dim * height, 1, bias=False)
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sums written out over the list: stacking the maps would copy them all once more."""
        b, c = feats[0].shape[:2]
        total = feats[0]
        for feat in feats[1:]:
            total = total + feat
        attn = self.mlp(self.avg_pool(total))
        attn = torch.softmax(attn.reshape(b, self.height, c, 1, 1), dim=1)
        out = feats[0] * attn[:, 0]
        for i, feat in enumerate(feats[1:], start=1):
            out = out + feat * attn[:, i]
        return out

    def with_conv_skip(self, x: torch.Tensor, skip: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        """self([x, conv(skip)]) + x for a 1x1 `conv`, without autograd and without storing
        conv(skip): the pooled sum is x's mean plus conv of skip's mean (conv is affine), and
        the fusion's weight of conv(skip) scales conv's weights."""
        if x.shape[0] > 1 or self.height != 2:
            return self([x, conv(skip)]) + x
        pooled = self.avg_pool(x) + conv(self.avg_pool(skip))
        attn = torch.softmax(self.mlp(pooled).reshape(1, 2, x.shape[1], 1, 1), dim=1)
        weight, bias = conv_weights(conv)
        scale = attn[0, 1, :, 0, 0]
        scaled = (weight * scale[:, None, None, None], bias * scale)
        return fused_conv(skip, scaled, add=x * (attn[:, 0] + 1))


def _reflect_index(size: int, length: int, device: torch.device) -> torch.Tensor:
    """Indices of a side of `size` pixels reflected at its end, repeatedly, to `length`.

    Reflecting again at the end of a reflection continues the same zigzag of period
    2 * (size - 1), so the indices are that zigzag; a 1-px side repeats its pixel. Written with
    tensor operations on the sizes, so that an exported graph keeps them dynamic.
    """
    period = torch.full((), torch.sym_max(2 * (size - 1), 1), dtype=torch.long, device=device)
    i = torch.arange(length, device=device) % period
    return torch.where(i < size, i, period - i)


def pad_bottom_right(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Reflect-pad the bottom/right to `height` x `width`; sides too short for one reflection
    reflect repeatedly (a 1-px side is replicated). When one reflection suffices (every input
    upstream accepts) this is exactly upstream's single reflect pad, a copy of the same pixels.
    """
    h, w = x.shape[-2:]
    x = x.index_select(-2, _reflect_index(h, height, x.device))
    return x.index_select(-1, _reflect_index(w, width, x.device))


def padded_size(side: int, min_side: int) -> int:
    """Side after padding: the next multiple of 4 (upstream's rule), at least `min_side` (the
    smallest side every layer of the network can reflect-pad); symbolic sizes stay symbolic."""
    # (side + 3) // 4, not -(-side // 4): exported, integer division truncates towards zero.
    multiples = (side + PATCH_MULTIPLE - 1) // PATCH_MULTIPLE
    return torch.sym_max(multiples * PATCH_MULTIPLE, min_side)


class UNetDehazer(nn.Module):
    """The U-Net both backbones share: the (optionally text-fused) input embedded, two stages
    down, one at the bottom, two up with selective-kernel skip fusion, and a head of K (1
    channel) and B (3 channels) giving K * x - B + x at the input's size.

    Subclasses build the stages under the authors' names below (their blocks differ) and set
    `min_side`; this class builds the text fusion, whose output has `embed_chans` channels.
    """

    min_side: int  # inputs are padded to at least this side (see padded_size)
    fold_skips = False  # the inference path of the skip connections (SKFusion.with_conv_skip)
    patch_embed: nn.Module
    layer1: nn.Module
    patch_merge1: nn.Module
    skip1: nn.Module
    layer2: nn.Module
    patch_merge2: nn.Module
    skip2: nn.Module
    layer3: nn.Module
    patch_split1: nn.Module
    fusion1: nn.Module
    layer4: nn.Module
    patch_split2: nn.Module
    fusion2: nn.Module
    layer5: nn.Module
    patch_unembed: nn.Module

    def __init__(
        self, fusion: str, text_dim: int, attention: str, text_branch: bool, in_chans: int
    ) -> None:
        super().__init__()
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}")
        self.fusion = fusion
        self.needs_text = fusion != "none"
        self.embed_chans = in_chans
        if self.needs_text:
            self.text_emb = TextImageFusion(
                in_chans, text_dim, mode=fusion, attention=attention, text_branch=text_branch
            )
            self.embed_chans = self.text_emb.out_chans

    def embed_input(self, x: torch.Tensor, text_feature: torch.Tensor | None) -> torch.Tensor:
        """The padded image, fused with its text feature when the network has fusion."""
        return self.text_emb(x, text_feature) if self.needs_text else x

    def skip_fusion(
        self, fusion: nn.Module, x: torch.Tensor, skip: torch.Tensor, conv: nn.Module
    ) -> torch.Tensor:
        """fusion([x, conv(skip)]) + x: the skip connection of the up stages."""
        if self.fold_skips and not self.training and not torch.is_grad_enabled():
            return fusion.with_conv_skip(x, skip, conv)
        return fusion([x, conv(skip)]) + x

    def forward_features(self, x: torch.Tensor, text_feature: torch.Tensor | None) -> torch.Tensor:
        x = self.layer1(self.patch_embed(self.embed_input(x, text_feature)))
        skip1 = x
        x = self.layer2(self.patch_merge1(x))
        skip2 = x
        x = self.patch_split1(self.layer3(self.patch_merge2(x)))
        x = self.skip_fusion(self.fusion1, x, skip2, self.skip2)
        x = self.patch_split2(self.layer4(x))
        x = self.skip_fusion(self.fusion2, x, skip1, self.skip1)
        return self.patch_unembed(self.layer5(x))

    def forward(self, hazy: torch.Tensor, text_feature: torch.Tensor | None = None) -> torch.Tensor:
        """hazy: (B, 3, H, W) in [-1, 1]; text_feature: (B, 1, D) or (B, D), the image's CLIP
        text feature (ignored without fusion)."""
        h, w = hazy.shape[-2:]
        x = pad_bottom_right(hazy, padded_size(h, self.min_side), padded_size(w, self.min_side))
        k, b = torch.split(self.forward_features(x, text_feature), (1, 3), dim=1)
        return (k * x - b + x)[:, :, :h, :w].contiguous()
