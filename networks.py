"""The network a config or a checkpoint describes, built and run the same way by every entry point.

train.py, test.py and predict.py all build through here, so a checkpoint rebuilt for testing is
built exactly as it was for training.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models import build_model, load_pretrained
from models.registry import speed_options, split_name
from utils.autotune import StepMaker, Tuning
from utils.checkpoint import is_project_checkpoint, read_file
from utils.clip_domains import check_arch, embedding_width, refuse_code_weights
from utils.config import (
    EVALUATION_KEYS,
    ClipConfig,
    Config,
    Precision,
    SpeedConfig,
    config_changes,
    config_from_checkpoint,
    config_to_dict,
    flatten,
    load_config,
    override_config,
    parse_overrides,
    refuse_changes,
)
from utils.devices import autocast
from utils.errors import CheckpointError, ConfigError
from utils.speed import Phase, Probe, SpeedSettings, speed_for, with_speed

# The folders the entry points write caches to, and what they use instead when a checkpoint
# names others: a checkpoint is data, so the folders it names are written only when the
# command line names them too.
CACHE_FOLDERS = {"clip.cache_dir": ClipConfig.cache_dir, "speed.cache_dir": SpeedConfig.cache_dir}


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
    if cfg.model.depths is not None:  # one number per stage (the config checks it)
        overrides["depths"] = cfg.model.depths
    if text_dim is not None:
        overrides["text_dim"] = text_dim
    return build_model(cfg.model.name, **overrides)


def load_weights(net: nn.Module, weights: Mapping, source: str | Path, model_name: str) -> None:
    """Load `weights`, read from the file `source`, into `net` (a `model_name`); weights that do
    not fit are a CheckpointError naming the file and the keys."""
    input_weight = split_name(model_name)[0].input_weight
    try:
        load_pretrained(net, weights, input_weight)
    except ValueError as e:
        raise CheckpointError(f"{source} does not fit {model_name}: {e}") from e


def model_from_checkpoint(
    ckpt_path: str | Path,
    model_name: str | None = None,
    config: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    phase: Phase = "test",
) -> tuple[nn.Module, Config, dict]:
    """Rebuild the network (in eval mode, with the speed settings of `phase` on the device
    `pick_device` chooses, measured where `auto`) and its config, those settings resolved, from
    a checkpoint.

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
        cfg = paths_as_data(cfg, overrides, str(ckpt_path))
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
    device = pick_device()
    table, _ = speed_for(cfg, device, phase)
    net = build_network(cfg, text_dim, table)
    load_weights(net, obj, ckpt_path, cfg.model.name)  # weights that do not fit: before measuring
    speed, _ = tune_speed(cfg, text_dim, device, phase, 1, cfg.data.patch_size)
    if speed.network_args() != table.network_args():
        weights = net.state_dict()  # the same keys with every speed option
        net = build_network(cfg, text_dim, speed)
        net.load_state_dict(weights)
    return net.eval(), with_speed(cfg, speed), changes


def paths_as_data(cfg: Config, overrides: Sequence[str], source: str) -> Config:
    """The config of the checkpoint `source` with its paths taken as data: cache folders that
    the command line (`overrides`) does not name are CACHE_FOLDERS (said when they differ),
    and CLIP weights it does not name must not run code when loaded (refuse_code_weights)."""
    given = flatten(parse_overrides(overrides))
    values = flatten(config_to_dict(cfg))
    moved = [k for k, d in CACHE_FOLDERS.items() if k not in given and values[k] != d]
    for key in moved:
        print(
            f"{source} names {key}={values[key]}: a checkpoint's folders are not written to; "
            f"using {CACHE_FOLDERS[key]} (pass {key}={values[key]} to use it)"
        )
    cfg = override_config(cfg, [f"{k}={json.dumps(CACHE_FOLDERS[k])}" for k in moved])
    if cfg.model.needs_text and "clip.pretrained" not in given:
        refuse_code_weights(cfg.clip.pretrained, source)
    return cfg


def inference_network(
    net: nn.Module, cfg: Config, device: torch.device, precision: Precision | None = None
) -> Callable:
    """`net` on `device` in eval mode, compiled if configured, run under autocast with
    `precision` (default: precision.eval); its outputs are fp32 whatever it computes in."""
    net = net.to(device).eval()
    model = torch.compile(net) if speed_for(cfg, device, "test")[0].compile else net
    amp = cfg.precision.eval if precision is None else precision

    def run(hazy: torch.Tensor, text_feature: torch.Tensor | None) -> torch.Tensor:
        with autocast(device, amp):
            return model(hazy, text_feature).float()

    return run


def speed_probe(
    cfg: Config, text_dim: int | None, device: torch.device, batch: int, side: int, phase: Phase
) -> StepMaker:
    """Steps of `phase` on random `batch`x3x`side`x`side` images, for a setting of some speed
    keys: a training step is forward, L1 loss and backward (the optimiser's step does not
    depend on them), an inference step a forward pass without autograd."""
    base, _ = speed_for(cfg, device, phase)
    gen = torch.Generator().manual_seed(0)
    hazy = (torch.rand(batch, 3, side, side, generator=gen) * 2 - 1).to(device)
    text = torch.randn(batch, 1, text_dim, generator=gen).to(device) if text_dim else None
    train = phase == "train"
    amp = cfg.precision.eval  # as test.py runs, and as train.py trains (fp32 on the CPU):
    if train:
        amp = cfg.precision.train if device.type == "cuda" else "none"

    def make_step(setting: dict) -> Callable[[], None]:
        speed = dataclasses.replace(base, **setting)
        net = build_network(cfg, text_dim, speed).to(device).train(train)
        precision = speed.predict_precision if phase == "predict" else amp

        def step() -> None:
            with torch.set_grad_enabled(train), autocast(device, precision):
                out = net(hazy, text)
            if train:
                net.zero_grad(set_to_none=True)
                F.l1_loss(out.float(), hazy).backward()

        return step

    return make_step


def tune_speed(
    cfg: Config,
    text_dim: int | None,
    device: torch.device,
    phase: Phase,
    batch: int,
    side: int,
) -> tuple[SpeedSettings, Tuning | None]:
    """The speed settings of `phase` on `device` for `batch` images of `side` pixels squared,
    measured where `auto` (utils.speed.speed_for); the measurement, if any. Inference is
    measured on one image of the patch size: its time grows linearly in pixels."""
    m = cfg.model
    workload = {
        "model": m.name,
        "depths": m.depths,
        "fusion": m.fusion,
        "text_dim": text_dim,
        "batch": batch,
        "side": side,
        "precision": cfg.precision.train if phase == "train" else cfg.precision.eval,
    }
    probe = speed_probe(cfg, text_dim, device, batch, side, phase)
    return speed_for(cfg, device, phase, Probe(speed_options(m.name), workload, probe))


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
