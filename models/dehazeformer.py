"""DehazeFormer (Song et al., "Vision Transformers for Single Image Dehazing", TIP 2023), optionally
guided by a CLIP text feature concatenated at the input, as MixCLDehazeNet guides MixDehazeNet.

Module and parameter names, the order of operations, the padding and the initialisation follow
the authors' code (IDKiro/DehazeFormer, models/dehazeformer.py), so their released checkpoints
load unchanged; `bench/dehazeformer_parity.py` compares the outputs with their module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.common import PatchEmbed, PatchUnEmbed, SKFusion, UNetDehazer

WINDOW_SIZE = 8
# Side of the padded input at which the 1/4-scale windows (8 px, shifted by 4) can be
# reflect-padded: every stage side at least one window. Larger inputs pad as upstream.
MIN_SIDE = 4 * WINDOW_SIZE


@dataclass(frozen=True)
class Arch:
    """The five stages of one DehazeFormer size (encoder, bottleneck, decoder)."""

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    conv_type: str  # 'DWConv' (depthwise 5x5) or 'Conv' (two 3x3 convs)
    attn_ratio: tuple[float, ...] = (1 / 4, 1 / 2, 3 / 4, 0, 0)  # blocks with attention, last
    mlp_ratios: tuple[float, ...] = (2.0, 4.0, 4.0, 2.0, 2.0)
    num_heads: tuple[int, ...] = (2, 4, 6, 1, 1)


NARROW, WIDE = (24, 48, 96, 48, 24), (48, 96, 192, 96, 48)
# The sizes of the paper (models/registry.py names them).
ARCHS: dict[str, Arch] = {
    "t": Arch(NARROW, (4, 4, 4, 2, 2), "DWConv", attn_ratio=(0, 1 / 2, 1, 0, 0)),
    "s": Arch(NARROW, (8, 8, 8, 4, 4), "DWConv"),
    "b": Arch(NARROW, (16, 16, 16, 8, 8), "DWConv"),
    "m": Arch(NARROW, (12, 12, 12, 6, 6), "Conv"),
    "l": Arch(WIDE, (16, 16, 16, 12, 12), "Conv"),
}


def _init_scaled(conv: nn.Conv2d, gain: float = 1.0) -> None:
    """Upstream's initialisation: truncated normal with Xavier's std times `gain`, zero bias."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(conv.weight)
    nn.init.trunc_normal_(conv.weight, std=gain * math.sqrt(2.0 / (fan_in + fan_out)))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _depth_gain(network_depth: int) -> float:
    """Down-scaling of the residual branches' initial weights with the number of blocks."""
    return (8 * network_depth) ** (-1 / 4)


class RLN(nn.Module):
    """Rescale-and-recentre LayerNorm: normalises over (C, H, W) and returns, besides the
    normalised map, the affine maps of its std and mean that restore them after the attention."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.meta1 = nn.Conv2d(1, dim, 1)
        self.meta2 = nn.Conv2d(1, dim, 1)
        nn.init.trunc_normal_(self.meta1.weight, std=0.02)
        nn.init.constant_(self.meta1.bias, 1)
        nn.init.trunc_normal_(self.meta2.weight, std=0.02)
        nn.init.constant_(self.meta2.bias, 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = torch.sqrt((x - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True) + self.eps)
        normalized = (x - mean) / std
        return normalized * self.weight + self.bias, self.meta1(std), self.meta2(mean)


class Mlp(nn.Module):
    """1x1 conv, ReLU, 1x1 conv."""

    def __init__(self, network_depth: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1), nn.ReLU(True), nn.Conv2d(hidden, dim, 1)
        )
        for conv in (self.mlp[0], self.mlp[2]):
            _init_scaled(conv, _depth_gain(network_depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def relative_positions(window_size: int) -> torch.Tensor:
    """(N, N, 2) log-spaced offsets between the N = window_size**2 pixels of a window."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)
    offsets = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    return torch.sign(offsets) * torch.log(1.0 + offsets.abs())


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a bias computed from relative positions
    by a small MLP (`meta`)."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.register_buffer("relative_positions", relative_positions(window_size))
        self.meta = nn.Sequential(nn.Linear(2, 256), nn.ReLU(True), nn.Linear(256, num_heads))

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv: (windows, N, 3 * dim) -> (windows, N, dim)."""
        n_win, n = qkv.shape[:2]
        qkv = qkv.reshape(n_win, n, 3, self.num_heads, self.dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.meta(self.relative_positions).permute(2, 0, 1).unsqueeze(0)
        out = torch.softmax(attn, dim=-1) @ v
        return out.transpose(1, 2).reshape(n_win, n, self.dim)


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window_size**2, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size**2, c)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """(B * windows, window_size**2, C) -> (B, H, W, C)."""
    x = windows.view(
        -1, h // window_size, w // window_size, window_size, window_size, windows.shape[-1]
    )
    return x.permute(0, 1, 3, 2, 4, 5).reshape(x.shape[0], h, w, -1)


class Attention(nn.Module):
    """The token mixer of a block: a convolution of V ('DWConv': depthwise 5x5; 'Conv': two
    3x3 convs, of the input itself in blocks without attention, which have no V and no
    projection) and, in the blocks that use it, shifted-window attention added to it before the
    projection."""

    def __init__(
        self,
        network_depth: int,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        use_attn: bool,
        conv_type: str,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.use_attn = use_attn
        self.conv_type = conv_type
        if conv_type == "Conv":
            self.conv = nn.Sequential(
                nn.Conv2d(dim, dim, 3, padding=1, padding_mode="reflect"),
                nn.ReLU(True),
                nn.Conv2d(dim, dim, 3, padding=1, padding_mode="reflect"),
            )
        elif conv_type == "DWConv":
            self.conv = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, padding_mode="reflect")
        else:
            raise ValueError(f"conv_type must be 'Conv' or 'DWConv', got {conv_type!r}")
        if conv_type == "DWConv" or use_attn:
            self.V = nn.Conv2d(dim, dim, 1)
            self.proj = nn.Conv2d(dim, dim, 1)
        if use_attn:
            self.QK = nn.Conv2d(dim, dim * 2, 1)
            self.attn = WindowAttention(dim, window_size, num_heads)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                qk = module.weight.shape[0] == 2 * dim
                _init_scaled(module, 1.0 if qk else _depth_gain(network_depth))

    def _pad_to_windows(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad to whole windows; a shifted block pads `shift_size` on the top and left
        first, which moves the window grid (upstream's shift, in place of a cyclic roll)."""
        h, w = x.shape[-2:]
        size, shift = self.window_size, self.shift_size
        if shift:
            bottom, right = (size - shift - h % size) % size, (size - shift - w % size) % size
            return F.pad(x, (shift, right, shift, bottom), mode="reflect")
        return F.pad(x, (0, -w % size, 0, -h % size), mode="reflect")

    def _window_attention(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        qkv = self._pad_to_windows(torch.cat([self.QK(x), v], dim=1))
        ht, wt = qkv.shape[-2:]
        windows = window_partition(qkv.permute(0, 2, 3, 1), self.window_size)
        out = window_reverse(self.attn(windows), self.window_size, ht, wt)
        out = out[:, self.shift_size : self.shift_size + h, self.shift_size : self.shift_size + w]
        return out.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_attn:
            return self.conv(x) if self.conv_type == "Conv" else self.proj(self.conv(self.V(x)))
        v = self.V(x)
        return self.proj(self.conv(v) + self._window_attention(x, v))


class TransformerBlock(nn.Module):
    """Token mixer then MLP, both residual; blocks with attention normalise with RLN around it."""

    def __init__(
        self,
        network_depth: int,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        shift_size: int,
        use_attn: bool,
        conv_type: str,
    ) -> None:
        super().__init__()
        self.use_attn = use_attn
        if use_attn:
            self.norm1 = RLN(dim)
        self.attn = Attention(
            network_depth, dim, num_heads, window_size, shift_size, use_attn, conv_type
        )
        self.mlp = Mlp(network_depth, dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_attn:
            normed, rescale, rebias = self.norm1(x)
            x = x + (self.attn(normed) * rescale + rebias)
        else:
            x = x + self.attn(x)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """`depth` blocks; the last `attn_ratio` of them use window attention, every second one
    with shifted windows."""

    def __init__(
        self,
        network_depth: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        attn_ratio: float,
        conv_type: str,
        window_size: int = WINDOW_SIZE,
    ) -> None:
        super().__init__()
        first_attn = depth - attn_ratio * depth
        self.blocks = nn.ModuleList(
            TransformerBlock(
                network_depth,
                dim,
                num_heads,
                mlp_ratio,
                window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                use_attn=i >= first_attn,
                conv_type=conv_type,
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class DehazeFormer(UNetDehazer):
    """The dehazing network; with fusion 'concat' or 'add' it is guided by a CLIP text feature.

    Args:
        arch: the stages (ARCHS holds the paper's sizes).
        fusion: 'none' (DehazeFormer), 'concat' or 'add' (models.text_fusion).
        text_dim: CLIP embedding width D.
        attention, text_branch: the fusion's options (see TextImageFusion).
        in_chans, out_chans: image channels and head channels (K and B: 1 + 3).
    """

    min_side = MIN_SIDE

    def __init__(
        self,
        arch: Arch = ARCHS["t"],
        fusion: str = "none",
        text_dim: int = 512,
        attention: str = "sdpa",
        text_branch: bool = False,
        in_chans: int = 3,
        out_chans: int = 4,
    ) -> None:
        super().__init__(fusion, text_dim, attention, text_branch, in_chans)
        if len(arch.depths) != len(arch.embed_dims):
            raise ValueError(
                f"depths needs {len(arch.embed_dims)} entries, got {list(arch.depths)}"
            )
        dims = arch.embed_dims

        def layer(i: int) -> BasicLayer:
            return BasicLayer(
                sum(arch.depths),
                dims[i],
                arch.depths[i],
                arch.num_heads[i],
                arch.mlp_ratios[i],
                arch.attn_ratio[i],
                arch.conv_type,
            )

        self.patch_embed = PatchEmbed(1, self.embed_chans, dims[0], kernel_size=3)
        self.layer1 = layer(0)
        self.patch_merge1 = PatchEmbed(2, dims[0], dims[1])
        self.skip1 = nn.Conv2d(dims[0], dims[0], 1)
        self.layer2 = layer(1)
        self.patch_merge2 = PatchEmbed(2, dims[1], dims[2])
        self.skip2 = nn.Conv2d(dims[1], dims[1], 1)
        self.layer3 = layer(2)
        self.patch_split1 = PatchUnEmbed(2, dims[3], dims[2])
        self.fusion1 = SKFusion(dims[3])
        self.layer4 = layer(3)
        self.patch_split2 = PatchUnEmbed(2, dims[4], dims[3])
        self.fusion2 = SKFusion(dims[4])
        self.layer5 = layer(4)
        self.patch_unembed = PatchUnEmbed(1, out_chans, dims[4], kernel_size=3)


def build(size: str, depths: Sequence[int] | None = None, **overrides: Any) -> DehazeFormer:
    """DehazeFormer of one size; `depths` replaces its blocks per stage, `overrides` are
    DehazeFormer arguments (fusion, text_dim, ...)."""
    arch = ARCHS[size]
    if depths is not None:
        arch = replace(arch, depths=tuple(depths))
    return DehazeFormer(arch, **overrides)
