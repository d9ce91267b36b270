"""Turn a `Config` into the objects the entry points share: CLIP domain features and the network.

train.py, test.py and predict.py all go through here, so a checkpoint rebuilt for testing is
built exactly as it was for training.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import nn

from models import build_model, load_pretrained
from models.factory import FAMILIES, MODEL_NAMES
from utils.checkpoint import is_project_checkpoint, read_file
from utils.clip_domains import DomainCache, embedding_width, load_clip, prepare_domains
from utils.config import (
    ClipConfig,
    Config,
    ConfigError,
    config_from_checkpoint,
    load_config,
    override_config,
)
from utils.image import list_images


def needs_text(cfg: Config) -> bool:
    """Whether the configured network takes a CLIP text feature (decided without building it)."""
    if cfg.model.fusion is not None:
        return cfg.model.fusion != "none"
    if cfg.model.name not in MODEL_NAMES:
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}; known: {MODEL_NAMES}")
    return FAMILIES[cfg.model.name.rsplit("-", 1)[0]] != "none"


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


def load_clip_for(clip: ClipConfig, device: str = "cpu"):
    """The frozen CLIP of the config, for classifying images on the fly (predict.py)."""
    return load_clip(clip.arch, clip.pretrained, device, clip.precision, clip.quick_gelu)


def build_network(cfg: Config, text_dim: int | None) -> nn.Module:
    """The configured network; `text_dim` is the CLIP embedding width (None without fusion)."""
    overrides: dict = {
        "fused_dwconv": cfg.speed.fused_dwconv,
        "channels_last": cfg.speed.channels_last,
        "strips": cfg.speed.strips,
    }
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
) -> tuple[nn.Module, Config]:
    """Rebuild the network (in eval mode) and its config from a checkpoint.

    A checkpoint written by train.py carries its config; the authors' released .pth files do
    not, so they need `model_name` (and optionally a config for the CLIP and data settings).
    """
    obj = read_file(ckpt_path)
    if is_project_checkpoint(obj):
        if model_name is not None and model_name != obj["model_name"]:
            raise ConfigError(
                f"--model {model_name} does not match {ckpt_path}, which holds {obj['model_name']}"
            )
        cfg = override_config(config_from_checkpoint(obj["config"]), overrides)
        text_dim = obj["text_dim"]
    else:
        if model_name is None:
            raise ConfigError(
                f"{ckpt_path} was not written by train.py (no config inside): pass --model NAME "
                "(e.g. --model mixcl-s) to evaluate released weights"
            )
        cfg = load_config(config, [*overrides, f"model.name={model_name}"])
        text_dim = embedding_width(cfg.clip.arch) if needs_text(cfg) else None
    net = build_network(cfg, text_dim)
    load_pretrained(net, obj)
    return net.eval(), cfg


def autocast(device: torch.device, amp: str) -> AbstractContextManager:
    """Mixed precision for `amp` ('none', 'fp16', 'bf16'); fp16 only exists on CUDA."""
    if amp == "none" or (amp == "fp16" and device.type != "cuda"):
        return nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def inference_network(net: nn.Module, cfg: Config, device: torch.device) -> Callable:
    """`net` on `device` in eval mode, compiled if configured, run under the configured autocast;
    its outputs are fp32 whatever precision it computes in."""
    net = net.to(device).eval()
    model = torch.compile(net) if cfg.speed.compile else net

    def run(hazy: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        with autocast(device, cfg.precision.eval):
            return model(hazy, text).float()

    return run


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
