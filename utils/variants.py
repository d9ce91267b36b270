"""Which networks exist: the named variants and the fusion modes, as plain data.

models/ builds them and the config checks names against them; kept apart from both so that
reading a config never imports torch.
"""

from __future__ import annotations

# How the CLIP text feature enters the network: not at all, concatenated, or added.
FUSION_MODES = ("none", "concat", "add")
# Blocks per stage for each size; embed_dims are always (24, 48, 96, 48, 24).
DEPTHS: dict[str, tuple[int, ...]] = {
    "t": (1, 1, 2, 1, 1),
    "s": (2, 2, 4, 2, 2),
    "b": (4, 4, 8, 4, 4),
    "l": (8, 8, 16, 8, 8),
}
# Default fusion of each model family: `mixdehazenet-*` is the baseline, `mixcl-*` the paper's.
FAMILIES: dict[str, str] = {"mixdehazenet": "none", "mixcl": "concat"}
MODEL_NAMES: tuple[str, ...] = tuple(f"{family}-{size}" for family in FAMILIES for size in DEPTHS)


def default_fusion(name: str) -> str:
    """The fusion mode of the variant `name` (one of MODEL_NAMES)."""
    return FAMILIES[name.rsplit("-", 1)[0]]
