"""Turn a `Config` into the objects the entry points share: CLIP domain features and the network.

train.py, test.py and predict.py all go through here, so a checkpoint rebuilt for testing is
built exactly as it was for training.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from models import build_model, load_pretrained
from models.factory import FAMILIES, MODEL_NAMES
from utils.checkpoint import is_project_checkpoint, read_file
from utils.clip_domains import (
    DomainCache,
    check_arch,
    embedding_width,
    load_clip,
    prepare_domains,
)
from utils.config import (
    EVALUATION_KEYS,
    ClipConfig,
    Config,
    ConfigError,
    Precision,
    SpeedSettings,
    config_changes,
    config_from_checkpoint,
    load_config,
    override_config,
    refuse_changes,
)
from utils.devices import autocast, speed_on
from utils.domain_labels import labels_file, read_domain_labels
from utils.image import list_images


def needs_text(cfg: Config) -> bool:
    """Whether the configured network takes a CLIP text feature (decided without building it)."""
    if cfg.model.fusion is not None:
        return cfg.model.fusion != "none"
    if cfg.model.name not in MODEL_NAMES:
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}; known: {MODEL_NAMES}")
    return FAMILIES[cfg.model.name.rsplit("-", 1)[0]] != "none"


def check_names(cfg: Config) -> None:
    """Refuse an unknown model or CLIP architecture as soon as the config is read."""
    if needs_text(cfg):
        check_arch(cfg.clip.arch)


def domain_cache_file(clip: ClipConfig, hazy_dir: Path) -> Path:
    """One cache file per (image folder, CLIP setup); its contents are checked again on load."""
    what = f"{hazy_dir.resolve()}|{clip.arch}|{clip.pretrained}|{clip.template}|{clip.domains}"
    digest = hashlib.sha1(what.encode()).hexdigest()[:10]
    readable = re.sub(
        r"[^A-Za-z0-9_.-]+", "_", f"{hazy_dir.parent.parent.name}-{hazy_dir.parent.name}"
    )
    return Path(clip.cache_dir) / f"{readable}-{clip.arch}-{digest}.pt"


def domain_cache_for(clip: ClipConfig, hazy_dir: Path, device: str = "cpu") -> DomainCache:
    """Classify (or reuse the cached classification of) every image in `hazy_dir`."""
    return prepare_domains(
        image_paths=list_images(hazy_dir),
        cache_file=domain_cache_file(clip, hazy_dir),
        arch=clip.arch,
        pretrained=clip.pretrained,
        domains=clip.domains,
        template=clip.template,
        batch_size=clip.batch_size,
        device=device,
        precision=clip.precision,
        quick_gelu=clip.quick_gelu,
    )


def domain_text_features(
    cfg: Config, split_dir: Path, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], DomainCache]:
    """Per-image text features of a split and CLIP's domain results for it.

    The features are those of CLIP's zero-shot domains, or with `clip.domain_source: labels`
    exactly the prompt embedding of each image's domain in `<split>/domains.csv` (read first,
    so a bad labels file fails before CLIP runs).
    """
    hazy_dir = split_dir / "hazy"
    labels = None
    if cfg.clip.domain_source == "labels":
        names = [p.name for p in list_images(hazy_dir)]
        labels = read_domain_labels(labels_file(split_dir), cfg.clip.domains, names)
    cache = domain_cache_for(cfg.clip, hazy_dir, device=device)
    if labels is None:
        return cache.features(cfg.clip.mode), cache
    return cache.labelled_features(labels), cache


def load_clip_for(clip: ClipConfig, device: str = "cpu"):
    """The frozen CLIP of the config, for classifying images on the fly (predict.py)."""
    return load_clip(clip.arch, clip.pretrained, device, clip.precision, clip.quick_gelu)


def build_network(cfg: Config, text_dim: int | None, speed: SpeedSettings) -> nn.Module:
    """The configured network with `speed`'s options; `text_dim` is the CLIP embedding width
    (None without fusion)."""
    overrides: dict = speed.network_args()
    if cfg.model.fusion is not None:
        overrides["fusion"] = cfg.model.fusion
    if cfg.model.depths is not None:
        overrides["depths"] = cfg.model.depths
    if text_dim is not None:
        overrides["text_dim"] = text_dim
    return build_model(cfg.model.name, **overrides)


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
        text_dim = embedding_width(cfg.clip.arch) if needs_text(cfg) else None
    net = build_network(cfg, text_dim, speed_on(cfg, pick_device()))
    try:
        load_pretrained(net, obj)
    except ValueError as e:
        raise ValueError(f"{ckpt_path} does not fit {cfg.model.name}: {e}") from e
    return net.eval(), cfg, changes


def inference_network(
    net: nn.Module, cfg: Config, device: torch.device, precision: Precision | None = None
) -> Callable:
    """`net` on `device` in eval mode, compiled if configured, run under autocast with
    `precision` (default: precision.eval); its outputs are fp32 whatever it computes in."""
    net = net.to(device).eval()
    model = torch.compile(net) if speed_on(cfg, device).compile else net
    amp = cfg.precision.eval if precision is None else precision

    def run(hazy: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        with autocast(device, amp):
            return model(hazy, text).float()

    return run


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
