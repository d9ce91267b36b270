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

from models.registry import split_name
from utils.config import (
    DEFAULT_DOMAINS,
    DEFAULT_TEMPLATE,
    RESULT_KEYS,
    WEIGHTS_KEYS,
    Config,
    config_to_dict,
    covers,
    flatten,
)
from utils.weights import weights_id


@dataclass(frozen=True)
class PublishedSetting:
    """What the authors ran on one dataset: `values` maps every dotted config key that changes
    the numbers (RESULT_KEYS) to its value, except the keys that do not apply to that run."""

    source: str
    values: dict[str, Any]
    not_applicable: tuple[str, ...] = ()


# Every key that changes the numbers (RESULT_KEYS, by the roles in utils/config.py), as the
# authors' train.py sets it on every dataset, but those the datasets' settings below differ in.
AUTHORS_TRAIN_PY: dict[str, Any] = {
    "model.name": "mixcl-s",
    "model.fusion": None,
    "model.depths": None,
    "model.init_from": None,
    "data.train_split": "train",
    "data.test_split": "test",
    "data.patch_size": 256,
    "data.edge_decay": 0.0,
    "data.num_workers": 16,
    "clip.arch": "ViT-B-32",
    "clip.pretrained": "openai",
    "clip.domains": list(DEFAULT_DOMAINS),
    "clip.template": DEFAULT_TEMPLATE,
    "clip.prompts": [],
    "clip.mode": "hard",
    "clip.domain_source": "clip",
    "clip.precision": "auto",
    "clip.quick_gelu": "auto",
    "train.extra_epoch": True,
    "train.lr_min_ratio": 0.01,
    "train.weight_decay": 0.01,
    "train.eval_freq": 1,
    "train.sync_batchnorm": True,
    # Under fp16 the authors' scaler skips a step whose gradients overflow, as here in both
    # modes; a non-finite loss stops a run here, so a finished run skipped no other step.
    "train.nonfinite": "stop",
    "loss.l1_weight": 1.0,
    "loss.cr_weight": 0.1,
    "loss.resnet_weights": None,  # torchvision's ImageNet weights
    "loss.resnet_imagenet_norm": False,
    "loss.resnet_batchnorm": "batch",
    "precision.train": "fp16",
    "precision.eval": "none",
}


def _setting(source: str, **values: Any) -> PublishedSetting:
    return PublishedSetting(source, {**AUTHORS_TRAIN_PY, **values})


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


def _dehazeformer_setting(size: str, batch_size: int, lr: float) -> PublishedSetting:
    """DehazeFormer's RESIDE-6K run: the same loop as the authors' train.py above (which is
    DehazeFormer's), L1 only, validation every 10 epochs."""
    # no CR, so no ResNet: nothing to set
    loss_keys = ("loss.resnet_weights", "loss.resnet_imagenet_norm", "loss.resnet_batchnorm")
    values = {k: v for k, v in AUTHORS_TRAIN_PY.items() if k not in loss_keys}
    values.update(
        {
            "model.name": f"dehazeformer-{size}",
            "train.batch_size": batch_size,
            "train.lr": lr,
            "train.epochs": 1000,
            "train.eval_freq": 10,
            "loss.cr_weight": 0.0,
            "data.only_h_flip": True,
            "data.valid_mode": "valid",
        }
    )
    source = f"IDKiro/DehazeFormer's train.py with configs/reside6k/dehazeformer-{size}.json"
    return PublishedSetting(source, values, not_applicable=loss_keys)


# Dataset -> DehazeFormer size -> its authors' setting (RESIDE-6K only: the comparison of
# interest; their RESIDE-IN/OUT settings are not reproduced here).
DEHAZEFORMER_SETTINGS: dict[str, dict[str | None, PublishedSetting]] = {
    "RESIDE-6K": {
        "t": _dehazeformer_setting("t", 32, 2e-4),
        "s": _dehazeformer_setting("s", 16, 1e-4),
        "b": _dehazeformer_setting("b", 16, 1e-4),
        "m": _dehazeformer_setting("m", 16, 1e-4),
    }
}


def _normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _dataset(data_root: str) -> str | None:
    """The dataset that `data.root` names by its folder (RESIDE-6K, reside6k and RESIDE_6K all
    name RESIDE-6K), if it is one with a published setting."""
    folder = _normalised(Path(data_root).name)
    return next((name for name in PUBLISHED_SETTINGS if _normalised(name) == folder), None)


# Backbone.published (models/registry.py) -> dataset -> model size -> the setting a run compares
# with; the size None stands for every size of the backbone (MixCLDehazeNet-S's setting is the
# reference of every MixDehazeNet variant).
PUBLISHED: dict[str, dict[str, dict[str | None, PublishedSetting]]] = {
    "mixcldehazenet": {dataset: {None: s} for dataset, s in PUBLISHED_SETTINGS.items()},
    "dehazeformer": DEHAZEFORMER_SETTINGS,
}


def published_setting(
    data_root: str, model_name: str = "mixcl-s"
) -> tuple[str, PublishedSetting] | None:
    """The dataset name and the published setting that a run on `data.root` with `model_name`
    compares with, if any: the one its backbone's registry entry names (with or without CLIP
    guidance), of its size or of every size."""
    dataset = _dataset(data_root)
    backbone, size, _ = split_name(model_name)
    if dataset is None or backbone.published is None:
        return None
    sizes = PUBLISHED[backbone.published].get(dataset, {})
    setting = sizes.get(size, sizes.get(None))
    return None if setting is None else (dataset, setting)


def show_value(value: Any) -> str:
    """A value as the report shows it (as YAML writes it)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(map(show_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def compared_keys(setting: PublishedSetting) -> list[str]:
    """The dotted keys that change the numbers and apply to `setting`, in config order."""
    return [
        key
        for key in flatten(config_to_dict(Config()))
        if covers(RESULT_KEYS, key) and not covers(setting.not_applicable, key)
    ]


def differences(cfg: Config, setting: PublishedSetting) -> list[str]:
    """`key=value (paper: value)` for every key that changes the numbers and differs; a key
    that names weights differs when the weights do (`key=value (weights; paper: weights)`)."""
    resolved = flatten(config_to_dict(cfg))
    lines = []
    for key in compared_keys(setting):
        value, paper = resolved[key], setting.values[key]
        if covers(WEIGHTS_KEYS, key):
            mine, theirs = weights_id(key, value), weights_id(key, paper)
            if mine != theirs:
                which = "" if mine == value else f"{mine}; "
                lines.append(f"{key}={show_value(value)} ({which}paper: {theirs})")
        elif value != paper:
            lines.append(f"{key}={show_value(value)} (paper: {show_value(paper)})")
    return lines


def protocol_report(cfg: Config) -> str:
    """What train.py prints and saves: the published setting compared with, and the keys that
    leave it (or that no published setting exists for this dataset)."""
    found = published_setting(cfg.data.root, cfg.model.name)
    if found is None:
        known = ", ".join(PUBLISHED_SETTINGS)
        return (
            f"protocol: no published setting for data.root={cfg.data.root} with "
            f"{cfg.model.name} (known datasets, by folder name: {known}); this run's numbers "
            "compare with no paper's\n"
        )
    name, setting = found
    lines = differences(cfg, setting)
    head = f"protocol: compared with the published {name} setting ({setting.source})"
    if not lines:
        return f"{head}: no differences\n"
    body = "".join(f"  {line}\n" for line in lines)
    return f"{head}; this run differs in these keys, so its numbers are not the paper's:\n{body}"
