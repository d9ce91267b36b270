"""Build a named variant (utils/variants.py lists them)."""

from __future__ import annotations

from typing import Any

from models.mixdehazenet import MixDehazeNet
from utils.variants import DEPTHS, MODEL_NAMES, default_fusion


def build_model(name: str, **overrides: Any) -> MixDehazeNet:
    """Build a named variant; `overrides` are MixDehazeNet arguments (fusion, depths, ...)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    size = name.rsplit("-", 1)[1]
    return MixDehazeNet(**{"depths": DEPTHS[size], "fusion": default_fusion(name), **overrides})
