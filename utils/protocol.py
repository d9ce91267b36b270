"""The published training settings, and the keys in which a run's config leaves them.

A number is comparable with a published one only when the run follows that setting; train.py
prints the keys that differ at the start of every run and saves them in the run folder.
docs/PROTOCOL.md explains each setting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.config import DEFAULT_DOMAINS, DEFAULT_TEMPLATE, Config, config_to_dict, flatten


@dataclass(frozen=True)
class PublishedSetting:
    """What the authors ran on one dataset: `values` maps dotted config keys to their values."""

    source: str
    values: dict[str, Any]


# Every key that changes the numbers, as the authors' train.py sets it on every dataset. Keys
# that only change speed, logging or file locations are not compared, nor clip.pretrained (a
# local file of OpenAI's weights is as good as the tag).
_AUTHORS_TRAIN_PY: dict[str, Any] = {
    "model.name": "mixcl-s",
    "model.fusion": None,
    "model.depths": None,
    "data.train_split": "train",
    "data.test_split": "test",
    "data.patch_size": 256,
    "data.edge_decay": 0.0,
    "clip.arch": "ViT-B-32",
    "clip.domains": list(DEFAULT_DOMAINS),
    "clip.template": DEFAULT_TEMPLATE,
    "clip.mode": "hard",
    "clip.precision": "auto",
    "clip.quick_gelu": "auto",
    "train.extra_epoch": True,
    "train.lr_min_ratio": 0.01,
    "train.weight_decay": 0.01,
    "train.eval_freq": 1,
    "train.sync_batchnorm": True,
    "loss.cr_weight": 0.1,
    "loss.resnet_imagenet_norm": False,
    "loss.resnet_batchnorm": "batch",
    "precision.train": "fp16",
    "precision.eval": "none",
}


def _setting(source: str, **values: Any) -> PublishedSetting:
    return PublishedSetting(source, {**_AUTHORS_TRAIN_PY, **values})


# Dataset (the folder name of data.root) -> the authors' setting for MixCLDehazeNet-S on it.
PUBLISHED_SETTINGS: dict[str, PublishedSetting] = {
    "RESIDE-6K": _setting(
        "the paper's 31.16 dB run: the authors' train.py with configs/reside6k/MixDehazeNet-s.json",
        **{
            "train.batch_size": 16,
            "train.lr": 1e-4,
            "train.epochs": 1000,
            "data.only_h_flip": True,
            "data.valid_mode": "valid",
        },
    ),
    "RESIDE-IN": _setting(
        "the authors' train.py with configs/indoor/MixDehazeNet-s.json",
        **{
            "train.batch_size": 36,
            "train.lr": 2e-4,
            "train.epochs": 500,
            "data.only_h_flip": False,
            "data.valid_mode": "test",
        },
    ),
    "RESIDE-OUT": _setting(
        "the authors' train.py with configs/outdoor/MixDehazeNet-s.json",
        **{
            "train.batch_size": 49,
            "train.lr": 2e-4,
            "train.epochs": 50,
            "data.only_h_flip": True,
            "data.valid_mode": "valid",
        },
    ),
}


def _normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def published_setting(data_root: str) -> tuple[str, PublishedSetting] | None:
    """The dataset name and published setting that `data.root` names, if any (RESIDE-6K,
    reside6k and RESIDE_6K all name RESIDE-6K)."""
    folder = _normalised(Path(data_root).name)
    for name, setting in PUBLISHED_SETTINGS.items():
        if _normalised(name) == folder:
            return name, setting
    return None


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(map(_show, value)) + "]"
    return str(value)


def differences(cfg: Config, setting: PublishedSetting) -> list[str]:
    """`key=value (paper: value)` for every compared key whose value differs."""
    resolved = flatten(config_to_dict(cfg))
    return [
        f"{key}={_show(resolved[key])} (paper: {_show(want)})"
        for key, want in setting.values.items()
        if resolved[key] != want
    ]


def protocol_report(cfg: Config) -> str:
    """What train.py prints and saves: the published setting compared with, and the keys that
    leave it (or that no published setting exists for this dataset)."""
    found = published_setting(cfg.data.root)
    if found is None:
        known = ", ".join(PUBLISHED_SETTINGS)
        return (
            f"protocol: no published setting for data.root={cfg.data.root} (known, by folder "
            f"name: {known}); this run's numbers compare with no paper's\n"
        )
    name, setting = found
    lines = differences(cfg, setting)
    head = f"protocol: compared with the published {name} setting ({setting.source})"
    if not lines:
        return f"{head}: no differences\n"
    body = "".join(f"  {line}\n" for line in lines)
    return f"{head}; this run differs in these keys, so its numbers are not the paper's:\n{body}"
