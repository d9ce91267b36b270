"""Networks: MixDehazeNet, DehazeFormer and their CLIP-guided variants.

The names (models.registry) import without torch, so that reading a config stays light; the
networks and their loader are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from models.registry import MODEL_NAMES

# Public name -> the module that defines it.
_LAZY = {
    "build_model": "models.factory",
    "load_pretrained": "models.loading",
    "DehazeFormer": "models.dehazeformer",
    "MixDehazeNet": "models.mixdehazenet",
    "TextImageFusion": "models.text_fusion",
}

__all__ = ["MODEL_NAMES", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
