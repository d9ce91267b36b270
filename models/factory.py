"""Build a named variant (models/registry.py lists them)."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from models.registry import split_name


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build a named variant; `overrides` are arguments of its network (fusion, depths, ...)."""
    backbone, size, fusion = split_name(name)
    build = importlib.import_module(backbone.module).build
    return build(size, **{"fusion": fusion, **overrides})
