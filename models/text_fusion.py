"""Text-image fusion (the network's `text_emb`): attention from pixels to CLIP text tokens.

Every one of the D entries of the image's CLIP text feature becomes a token with P features;
every pixel attends over those D tokens and the result is projected to a 3-channel map that is
concatenated to (or added to) the image. Parameter names match the authors' checkpoints.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import FUSION_MODES

ATTENTION_MODES = ("sdpa", "explicit")
# Parameters of the text branch that upstream defines but never uses (see `text_branch`).
TEXT_BRANCH_MODULES = ("q2", "k1", "v1", "postProj_t")
# Head-width multiple of the fused attention kernels off the CPU (see `fused_attention`).
FUSED_HEAD_MULTIPLE = 8
# The CPU's flash kernel takes any width, but ran 1.6x faster at width 16 than at the network's 5
# (forward and backward; torch 2.14, AVX-512), so the CPU pads too.
CPU_HEAD_MULTIPLE = 16


def pixel_text_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(P)) v written out; stores the (N x D) map, kept as the reference."""
    attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return attn @ v


def fused_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_multiple: int = 1
) -> torch.Tensor:
    """The same softmax(q k^T / sqrt(P)) v through scaled_dot_product_attention's fused kernels,
    which never store the (N x D) map.

    The fused CUDA kernels take only head widths that are multiples of 8 (flash attention; the
    memory-efficient kernel needs 4 in fp32 and 8 in fp16/bf16); for any other width SDPA falls
    back to the math path, which stores the map. The CPU's kernel takes any width and is
    fastest at 16. With `head_multiple` > 1, q, k and v get zero
    columns up to a multiple of it: they add nothing to q k^T, the scale stays 1/sqrt(P), and
    the output's extra columns (weighted sums of zeros) are cut off.
    """
    width = q.shape[-1]
    pad = -width % head_multiple
    if pad:
        q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    out = F.scaled_dot_product_attention(
        q[:, None], k[:, None], v[:, None], scale=1 / math.sqrt(width)
    )
    return out[:, 0, :, :width]


class TextImageFusion(nn.Module):
    """Fuse an image (B, C, H, W) with one text feature per image (B, 1, D) or (B, D).

    Args:
        in_chans: image channels C.
        text_dim: CLIP embedding width D.
        proj_dim: attention width P.
        out_chans: channels of the fused map.
        mode: 'concat' returns (B, C + out_chans, H, W); 'add' returns (B, C, H, W).
        attention: 'sdpa' (fused kernel, never stores the (H*W x D) map) or 'explicit'.
        text_branch: also build and run upstream's unused text branch (text tokens attending
            over pixels) and discard its result; only for measuring the straightforward model.
    """

    def __init__(
        self,
        in_chans: int = 3,
        text_dim: int = 512,
        proj_dim: int = 5,
        out_chans: int = 3,
        mode: str = "concat",
        attention: str = "sdpa",
        text_branch: bool = False,
    ) -> None:
        super().__init__()
        if mode == "none" or mode not in FUSION_MODES:
            raise ValueError(f"fusion mode must be 'concat' or 'add', got {mode!r}")
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        if mode == "add" and out_chans != in_chans:
            raise ValueError("'add' fusion needs out_chans == in_chans")
        self.mode = mode
        self.attention = attention
        self.text_dim = text_dim
        self.out_chans = in_chans + out_chans if mode == "concat" else in_chans

        self.q1 = nn.Conv2d(in_chans, proj_dim, 1)
        self.k2 = nn.Conv1d(1, proj_dim, 1)
        self.v2 = nn.Conv1d(1, proj_dim, 1)
        self.postProj_s = nn.Conv2d(proj_dim, out_chans, 1)
        self.text_branch = text_branch
        if text_branch:
            self.q2 = nn.Conv1d(1, proj_dim, 1)
            self.k1 = nn.Conv2d(in_chans, proj_dim, 1)
            self.v1 = nn.Conv2d(in_chans, proj_dim, 1)
            self.postProj_t = nn.Conv1d(proj_dim, 1, 1)

    def _check_text(self, image: torch.Tensor, text_feature: torch.Tensor | None) -> torch.Tensor:
        if text_feature is None:
            raise ValueError("this model fuses a CLIP text feature: call model(hazy, text_feature)")
        text = text_feature.unsqueeze(1) if text_feature.dim() == 2 else text_feature
        if text.dim() != 3 or text.shape[1] != 1 or text.shape[2] != self.text_dim:
            raise ValueError(
                f"text feature must be (B, 1, {self.text_dim}) or (B, {self.text_dim}), "
                f"got {tuple(text_feature.shape)}"
            )
        if text.shape[0] != image.shape[0]:
            raise ValueError(
                f"batch of text features ({text.shape[0]}) != batch of image ({image.shape[0]})"
            )
        return text.to(image.dtype)

    def _text_branch(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Text tokens attend over the pixels (softmax over H*W); the network never uses it."""
        q_t = self.q2(text).transpose(1, 2)  # (B, D, P)
        k_s = self.k1(image).flatten(2).transpose(1, 2)  # (B, HW, P)
        v_s = self.v1(image).flatten(2).transpose(1, 2)
        out = pixel_text_attention(q_t, k_s, v_s)  # (B, D, P)
        return self.postProj_t(out.transpose(1, 2))  # (B, 1, D)

    def forward(self, image: torch.Tensor, text_feature: torch.Tensor | None) -> torch.Tensor:
        text = self._check_text(image, text_feature)
        b, _, h, w = image.shape
        # Contiguous last dims let SDPA take its fused kernel instead of the map-storing fallback.
        q = self.q1(image).flatten(2).transpose(1, 2).contiguous()  # (B, HW, P)
        k = self.k2(text).transpose(1, 2).contiguous()  # (B, D, P)
        v = self.v2(text).transpose(1, 2).contiguous()
        if self.attention == "sdpa":
            multiple = CPU_HEAD_MULTIPLE if q.device.type == "cpu" else FUSED_HEAD_MULTIPLE
            out = fused_attention(q, k, v, multiple)
        else:
            out = pixel_text_attention(q, k, v)
        fused = self.postProj_s(out.transpose(1, 2).reshape(b, -1, h, w))
        if self.text_branch:
            self._text_branch(image, text)
        if self.mode == "concat":
            return torch.cat([image, fused], dim=1)
        return image + fused
