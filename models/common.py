"""Parts that MixDehazeNet and DehazeFormer share: patch (un)embedding, selective-kernel fusion
and the padding of the input. Names and operations follow the authors' code of both networks,
which define these parts identically.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

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


def pad_bottom_right(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """Reflect-pad the bottom/right; sides too short for one reflection reflect repeatedly.

    A 1-px side has nothing to reflect and is first replicated once. When one reflection
    suffices (every input upstream accepts) this is exactly upstream's single reflect pad.
    """
    while pad_h > 0 or pad_w > 0:
        h, w = x.shape[-2:]
        if (h == 1 and pad_h > 0) or (w == 1 and pad_w > 0):
            step_h, step_w = int(h == 1 and pad_h > 0), int(w == 1 and pad_w > 0)
            mode = "replicate"
        else:
            step_h, step_w = min(pad_h, h - 1), min(pad_w, w - 1)
            mode = "reflect"
        x = F.pad(x, (0, step_w, 0, step_h), mode=mode)
        pad_h, pad_w = pad_h - step_h, pad_w - step_w
    return x


def padded_size(side: int, min_side: int) -> int:
    """Side after padding: the next multiple of 4 (upstream's rule), at least `min_side` (the
    smallest side every layer of the network can reflect-pad)."""
    return max(-(-side // PATCH_MULTIPLE) * PATCH_MULTIPLE, min_side)
