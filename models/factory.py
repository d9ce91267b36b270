"""Named variants: `mixdehazenet-*` is the baseline, `mixcl-*` adds the paper's text fusion."""

from __future__ import annotations

from typing import Any

from models.mixdehazenet import MixDehazeNet

# Blocks per stage for each size; embed_dims are always (24, 48, 96, 48, 24).
DEPTHS: dict[str, tuple[int, ...]] = {
    "t": (1, 1, 2, 1, 1),
    "s": (2, 2, 4, 2, 2),
    "b": (4, 4, 8, 4, 4),
    "l": (8, 8, 16, 8, 8),
}
# Default fusion of each model family.
FAMILIES: dict[str, str] = {"mixdehazenet": "none", "mixcl": "concat"}
MODEL_NAMES: tuple[str, ...] = tuple(f"{family}-{size}" for family in FAMILIES for size in DEPTHS)


def build_model(name: str, **overrides: Any) -> MixDehazeNet:
    """Build a named variant; `overrides` are MixDehazeNet arguments (fusion, depths, ...)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    family, size = name.rsplit("-", 1)
    kwargs: dict[str, Any] = {"depths": DEPTHS[size], "fusion": FAMILIES[family]}
    kwargs.update(overrides)
    return MixDehazeNet(**kwargs)
