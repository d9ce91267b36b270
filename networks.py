"""The network a config or a checkpoint describes, built and run the same way by every entry point.

train.py, test.py and predict.py all build through here, so a checkpoint rebuilt for testing is
built exactly as it was for training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from models import build_model, load_pretrained
from models.mixdehazenet import EMBED_DIMS
from models.registry import speed_options
from utils.checkpoint import is_project_checkpoint, read_file
from utils.clip_domains import check_arch, embedding_width
from utils.config import (
    EVALUATION_KEYS,
    Config,
    Precision,
    SpeedSettings,
    config_changes,
    config_from_checkpoint,
    load_config,
    override_config,
    refuse_changes,
)
from utils.devices import autocast, speed_on
from utils.errors import CheckpointError, ConfigError


def check_names(cfg: Config) -> None:
    """Refuse an unknown CLIP architecture as soon as the config is read (the config itself
    refuses unknown model names)."""
    if cfg.model.needs_text:
        check_arch(cfg.clip.arch)


def build_network(cfg: Config, text_dim: int | None, speed: SpeedSettings) -> nn.Module:
    """The configured network with those of `speed`'s options that it takes (its registry
    entry says which); `text_dim` is the width D of the CLIP text feature (None without fusion)."""
    takes = speed_options(cfg.model.name)
    overrides: dict = {k: v for k, v in speed.network_args().items() if k in takes}
    if cfg.model.fusion is not None:
        overrides["fusion"] = cfg.model.fusion
    if cfg.model.depths is not None:
        if len(cfg.model.depths) != len(EMBED_DIMS):
            raise ConfigError(
                f"model.depths: one number of blocks per stage, {len(EMBED_DIMS)} in all, "
                f"got {list(cfg.model.depths)}"
            )
        overrides["depths"] = cfg.model.depths
    if text_dim is not None:
        overrides["text_dim"] = text_dim
    return build_model(cfg.model.name, **overrides)


def load_weights(net: nn.Module, weights: Mapping, source: str | Path, model_name: str) -> None:
    """Load `weights`, read from the file `source`, into `net` (a `model_name`); weights that do
    not fit are a CheckpointError naming the file and the keys."""
    try:
        load_pretrained(net, weights)
    except ValueError as e:
        raise CheckpointError(f"{source} does not fit {model_name}: {e}") from e


def model_from_checkpoint(
    ckpt_path: str | Path,
    model_name: str | None = None,
    config: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> tuple[nn.Module, Config, dict]:
    """Rebuild the network (in eval mode, with the speed settings of the device `pick_device`
    chooses) and its config from a checkpoint.

    A checkpoint written by train.py carries its config, of which `overrides` may change only
    EVALUATION_KEYS; the authors' released .pth files do not, so they need `model_name` (and
    optionally a config file for the CLIP and data settings). Also returns the settings that
    the overrides changed, {key: (old, new)}.
    """
    obj = read_file(ckpt_path)
    if is_project_checkpoint(obj):
        if model_name is not None and model_name != obj["model_name"]:
            raise ConfigError(
                f"--model {model_name} does not match {ckpt_path}, which holds {obj['model_name']}"
            )
        if config is not None:
            raise ConfigError(
                f"--config {config}: {ckpt_path} was written by train.py and carries its own "
                "config; change single settings as section.key=value instead"
            )
        saved = config_from_checkpoint(obj["config"])
        cfg = override_config(saved, overrides)
        changes = refuse_changes(saved, cfg, EVALUATION_KEYS, str(ckpt_path))
        text_dim = obj["text_dim"]
    else:
        if model_name is None:
            raise ConfigError(
                f"{ckpt_path} was not written by train.py (no config inside): pass --model NAME "
                "(e.g. --model mixcl-s) to evaluate released weights"
            )
        named = f"model.name={model_name}"
        cfg = load_config(config, [*overrides, named])
        changes = config_changes(load_config(config, [named]), cfg)
        check_names(cfg)
        text_dim = embedding_width(cfg.clip.arch) if cfg.model.needs_text else None
    net = build_network(cfg, text_dim, speed_on(cfg, pick_device()))
    load_weights(net, obj, ckpt_path, cfg.model.name)
    return net.eval(), cfg, changes


def inference_network(
    net: nn.Module, cfg: Config, device: torch.device, precision: Precision | None = None
) -> Callable:
    """`net` on `device` in eval mode, compiled if configured, run under autocast with
    `precision` (default: precision.eval); its outputs are fp32 whatever it computes in."""
    net = net.to(device).eval()
    model = torch.compile(net) if speed_on(cfg, device).compile else net
    amp = cfg.precision.eval if precision is None else precision

    def run(hazy: torch.Tensor, text_feature: torch.Tensor | None) -> torch.Tensor:
        with autocast(device, amp):
            return model(hazy, text_feature).float()

    return run


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
