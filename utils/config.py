"""Typed experiment configuration: YAML files that inherit from a base, plus `key=value` overrides.

A YAML file may name a `base:` file (relative to itself) and then holds only what differs from
it. Values are checked against the dataclasses below, so a typo or a wrong type fails at load
time with the key's dotted name instead of deep inside a training run.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from models.registry import FUSION_MODES, MODEL_NAMES, default_fusion, split_name
from utils.errors import ConfigError

# The domain ids (labels files, caches, reports) and the paper's prompt wording for a domain
# without prompts of its own: "a photo of a indoor" / "a photo of a outdoor", grammar as upstream.
DEFAULT_DOMAINS = ("indoor", "outdoor")
DEFAULT_TEMPLATE = "a photo of a {}"
# The text feature of an image from its domain probabilities: the most probable domain's prompt
# embedding (the paper), or the probability-weighted mix (utils/clip_domains.text_features).
TEXT_FEATURE_MODES = ("hard", "soft")
Precision = Literal["none", "fp16", "bf16"]
ClipPrecision = Literal["auto", "fp16", "fp32"]  # auto: fp16 on CUDA, fp32 on the CPU
Auto = Literal["auto"]  # a speed setting measured on the machine in use (SpeedConfig)
CRBatchNorm = Literal["batch", "frozen"]  # the CR ResNet's BatchNorm: training or eval mode

# Keys that moved: an old key in a YAML file or an override is an error naming its new place.
RENAMED_KEYS = {
    "train.cr_weight": "loss.cr_weight",
    "train.cr_weights": "loss.resnet_weights",
    "train.cr_imagenet_norm": "loss.resnet_imagenet_norm",
    "train.amp": "precision.train",
    "speed.amp": "precision.eval",
}
# Keys added since: what a checkpoint written before a key existed was trained with.
ADDED_KEYS = {
    "clip.precision": "fp32",
    "loss.resnet_batchnorm": "frozen",
    "train.extra_epoch": False,
    "train.sync_batchnorm": False,
}

# Keys whose null, before `auto` existed, meant the device's default: now `auto`.
NULL_MEANS_AUTO = (
    "speed.channels_last",
    "speed.strips",
    "speed.fused_dwconv",
    "speed.compile",
    "speed.predict_precision",
)
# Former names still read, from YAML files, overrides and checkpoints: {old key: its name now}.
ALIASES = {"precision.predict": "speed.predict_precision"}


@dataclass(frozen=True)
class Role:
    """What a config key is for, and so where it may take another value (KEY_ROLES)."""

    name: str
    changes_results: bool  # compared with the published setting (utils/protocol.py)
    resume: bool  # may differ from the checkpoint's config with train.py --resume
    evaluation: bool  # may differ from the checkpoint's config in test.py and predict.py
    location: bool  # where files are or how they are read: kept out of results folder names
    repeat: bool  # runs that differ only in such keys repeat one configuration (compare.py)
    # names weights (a tag, a file or null): compared, named in results folders and grouped by
    # which weights they are, never by the path (utils/weights.py)
    weights: bool = False


# The method and how it is trained: a different value is another experiment.
PROTOCOL = Role("protocol", True, False, False, False, False)
# How long and how often to validate: the cosine schedule is re-planned on --resume.
SCHEDULE = Role("schedule", True, True, False, False, False)
# How the text features are computed: test.py may try soft features on a hard-trained network.
TEXT_FEATURES = Role("text-features", True, False, True, False, False)
# How validation and test.py evaluate.
EVALUATION = Role("evaluation", True, True, True, False, False)
# The weights the first step starts from: changes the numbers, says nothing once trained.
WARM_START = Role("warm-start", True, True, True, True, False)
# Pretrained weights a run reads (CLIP, the CR ResNet): other weights are another run, while a
# copy of the same weights elsewhere is the same (the path may change, with --resume too).
WEIGHTS = Role("weights", True, True, True, True, False, weights=True)
# What a non-finite loss does: skipped steps change the numbers (the published setting trains
# every step); switching to skip on --resume is the way on after a stop.
NONFINITE = Role("nonfinite", True, True, False, False, False)
# How many loader workers make the training batches: each draws the crops and flips of its
# batches from its own random stream (datasets/resumable.py), as the authors' loader does, so
# another count draws other augmentations, as another seed does; in test.py it only reads.
LOADER_WORKERS = Role("loader-workers", True, True, True, True, True)
# One draw of the same protocol.
SEED = Role("seed", False, False, False, False, True)
# Logging, checkpointing and what to do on a signal.
RUN = Role("run", False, True, False, False, False)
# The run's name and folder.
NAME = Role("name", False, True, True, True, True)
# Which files are read, and how absent data is made.
INPUT = Role("input", False, True, True, True, False)
# How files are read and cached (never changes a result).
READING = Role("reading", False, True, True, True, True)
# How fast the network runs (changes results within float tolerance, docs/PERFORMANCE.md).
SPEED = Role("speed", False, True, True, False, True)

# Every config key's role, by dotted key or whole section; tests/test_config.py fails for a key
# without one. The key lists below are derived from it.
KEY_ROLES: dict[str, Role] = {
    "exp_name": NAME,
    "output_dir": NAME,
    "model.name": PROTOCOL,
    "model.fusion": PROTOCOL,
    "model.depths": PROTOCOL,
    "model.init_from": WARM_START,
    "data.root": INPUT,
    "data.train_split": PROTOCOL,
    "data.test_split": PROTOCOL,
    "data.patch_size": PROTOCOL,
    "data.edge_decay": PROTOCOL,
    "data.only_h_flip": PROTOCOL,
    "data.valid_mode": PROTOCOL,
    "data.num_workers": LOADER_WORKERS,
    "data.verify_images": READING,
    "data.synthetic": INPUT,
    "clip.arch": PROTOCOL,
    "clip.pretrained": WEIGHTS,
    "clip.domains": PROTOCOL,
    "clip.template": PROTOCOL,
    "clip.prompts": PROTOCOL,
    "clip.mode": TEXT_FEATURES,
    "clip.domain_source": PROTOCOL,
    "clip.precision": TEXT_FEATURES,
    "clip.quick_gelu": PROTOCOL,
    "clip.batch_size": READING,
    "clip.cache_dir": READING,
    "train.batch_size": PROTOCOL,
    "train.epochs": SCHEDULE,
    "train.extra_epoch": PROTOCOL,
    "train.lr": PROTOCOL,
    "train.lr_min_ratio": PROTOCOL,
    "train.weight_decay": PROTOCOL,
    "train.eval_freq": SCHEDULE,
    "train.nonfinite": NONFINITE,
    "train.seed": SEED,
    "train.log_images": RUN,
    "train.sync_batchnorm": PROTOCOL,
    "train.resume": RUN,
    "train.checkpoint_every_steps": RUN,
    "train.checkpoint_every_minutes": RUN,
    "train.keep_checkpoints": RUN,
    "train.requeue": RUN,
    "loss.l1_weight": PROTOCOL,
    "loss.cr_weight": PROTOCOL,
    "loss.resnet_weights": WEIGHTS,
    "loss.resnet_imagenet_norm": PROTOCOL,
    "loss.resnet_batchnorm": PROTOCOL,
    "precision.train": PROTOCOL,
    "precision.eval": EVALUATION,
    "speed.cache_dir": READING,  # before its section: role_of takes the first entry that fits
    "speed": SPEED,
}


def keys_where(has: Callable[[Role], bool]) -> tuple[str, ...]:
    """The KEY_ROLES entries (dotted keys or sections) whose role has the property `has`."""
    return tuple(key for key, role in KEY_ROLES.items() if has(role))


def role_of(key: str) -> Role | None:
    """The role of a dotted key (its own entry, or its section's), or None if it has none."""
    return next((role for k, role in KEY_ROLES.items() if covers((k,), key)), None)


# Settings a checkpoint's config may take new values for in a later call: file locations ...
LOCATION_KEYS = keys_where(lambda role: role.location)
# ... in test.py and predict.py ...
EVALUATION_KEYS = keys_where(lambda role: role.evaluation)
# ... with train.py --resume; every other key is refused with a different value.
RESUME_KEYS = keys_where(lambda role: role.resume)
# The keys that change the numbers, compared with the published setting (utils/protocol.py).
RESULT_KEYS = keys_where(lambda role: role.changes_results)
# Keys in which runs may differ and still repeat one configuration (utils/comparison.py).
REPEAT_IGNORES = keys_where(lambda role: role.repeat)
# Keys that name weights, compared by which weights they name (utils/weights.py).
WEIGHTS_KEYS = keys_where(lambda role: role.weights)


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build (models/registry.py lists the variants)."""

    name: Literal[MODEL_NAMES] = "mixcl-s"
    fusion: Literal[FUSION_MODES] | None = None  # None: the variant's own fusion
    depths: tuple[int, ...] | None = None  # None: the variant's own depths
    init_from: str | None = None  # warm start, e.g. a released MixDehazeNet .pth

    @property
    def needs_text(self) -> bool:
        """Whether the network takes a CLIP text feature (its fusion, or its variant's)."""
        return (self.fusion or default_fusion(self.name)) != "none"


@dataclass(frozen=True)
class SyntheticConfig:
    """The procedural hazy dataset of `python -m datasets.synthetic` (these are its defaults).

    `enabled` generates it when data.root is that command's default folder and absent; any
    other data.root is the user's data and is never generated.
    """

    enabled: bool = False
    train: int = 64
    test: int = 16
    min_side: int = 72  # each image side is drawn from [min_side, max_side]
    max_side: int = 120
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    """Where the DehazeFormer-format dataset lives and how samples are cut."""

    root: str = "data/RESIDE-6K"
    train_split: str = "train"
    test_split: str = "test"
    patch_size: int = 256
    edge_decay: float = 0.0
    only_h_flip: bool = True
    valid_mode: Literal["valid", "test"] = "valid"  # validation on centre crops or whole images
    num_workers: int = 16  # the authors' train.py's; each worker seeds its own augmentations
    verify_images: bool = True  # decode every image before training, to fail early on bad files
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class DomainPrompts:
    """The wording of one domain's prompts: the domain's text embedding is their CLIP embeddings'
    mean, re-normalised (one prompt: its embedding, as upstream)."""

    domain: str  # one of clip.domains
    texts: tuple[str, ...]


@dataclass(frozen=True)
class ClipConfig:
    """The frozen CLIP that classifies every hazy image into a domain, zero-shot."""

    arch: str = "ViT-B-32"
    pretrained: str | None = "openai"  # open_clip tag, a local weights file, or null (random)
    domains: tuple[str, ...] = DEFAULT_DOMAINS  # ids, as in domains.csv, caches and reports
    template: str = DEFAULT_TEMPLATE  # the prompt of a domain without an entry in `prompts`
    prompts: tuple[DomainPrompts, ...] = ()  # per domain id, its own prompts
    mode: Literal[TEXT_FEATURE_MODES] = "hard"
    # "labels": each image's domain from <split folder>/domains.csv instead of CLIP's guess
    # (oracle domains; the text feature is that domain's prompt embedding, `mode` does not apply).
    domain_source: Literal["clip", "labels"] = "clip"
    precision: ClipPrecision = "auto"  # auto: fp16 on CUDA, as OpenAI's CLIP runs there
    # auto: QuickGELU for OpenAI-trained weights (see utils/clip_domains.quick_gelu_for)
    quick_gelu: Literal["auto"] | bool = "auto"
    batch_size: int = 64
    cache_dir: str = "cache/clip_domains"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule (the authors', docs/PROTOCOL.md)."""

    batch_size: int = 16
    epochs: int = 1000  # length of the cosine schedule
    extra_epoch: bool = True  # then one more epoch at the final lr, as the authors' loop runs
    lr: float = 1e-4
    lr_min_ratio: float = 1e-2
    weight_decay: float = 0.01
    eval_freq: int = 1
    nonfinite: Literal["stop", "skip"] = "stop"
    seed: int = 0
    log_images: int = 4
    sync_batchnorm: bool = True  # multi-GPU: BatchNorm statistics over the whole batch
    # Continue from the newest valid checkpoint of the run folder: auto (if there is one, else
    # start), true (there must be one) or false (the folder must hold none); --resume overrides.
    resume: Literal["auto"] | bool = False
    # last.pth is also written within epochs: every N optimiser steps and/or M minutes (0: off).
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 10.0
    keep_checkpoints: int = 2  # last.pth and the previous ones as last.1.pth, ...
    requeue: bool = False  # on SIGTERM/SIGUSR1 under SLURM, `scontrol requeue` the job


@dataclass(frozen=True)
class SpeedConfig:
    """Options that change speed, never the numbers beyond float tolerance (docs/PERFORMANCE.md).

    auto (the default): measured on the machine in use at first use and cached (utils/autotune.py),
    or with autotune=false the device's defaults (DEVICE_SPEED); a set value is never measured.
    utils/speed.py decides them.
    """

    channels_last: Auto | bool = "auto"  # NHWC activations
    strips: Auto | bool = "auto"  # inference: wide intermediates a few rows at a time (less memory)
    fused_dwconv: Auto | bool = "auto"  # the three depthwise convs as one grouped conv
    compile: Auto | bool = "auto"  # torch.compile the network (auto: DEVICE_SPEED, never measured)
    predict_precision: Auto | Precision = "auto"  # predict.py's autocast (was precision.predict)
    autotune: bool = True  # false: every auto key takes the device's default (DEVICE_SPEED)
    cache_dir: str = "cache/speed"  # the measured choices, one small JSON file per workload


@dataclass(frozen=True)
class LossConfig:
    """The training loss: each term's weight (utils/losses.LOSS_TERMS; a term of weight 0 is never
    built), L1 + 0.1 x contrastive regularisation over frozen ResNet-152 features by default."""

    l1_weight: float = 1.0
    cr_weight: float = 0.1  # 0: L1 only, the ResNet is never built
    resnet_weights: str | None = None  # local ImageNet ResNet-152 file; None: torchvision's
    resnet_imagenet_norm: bool = False  # upstream feeds [-1, 1] images to ResNet unnormalised
    # batch: the authors' ResNet BatchNorm in training mode (each call's own batch statistics);
    # frozen: eval mode, ImageNet running statistics
    resnet_batchnorm: CRBatchNorm = "batch"


@dataclass(frozen=True)
class PrecisionConfig:
    """Autocast precision of training and evaluation; 'none' is fp32. fp16 exists on CUDA only.
    predict.py's is a speed setting, speed.predict_precision."""

    train: Precision = "fp16"  # training forward and loss (CUDA; CPU always trains in fp32)
    eval: Precision = "none"  # validation and test.py (the protocol evaluates in fp32)


@dataclass(frozen=True)
class Config:
    """One experiment: everything `train.py` needs, saved into every run folder and checkpoint."""

    exp_name: str = "mixcl-s"
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    @property
    def run_dir(self) -> Path:
        """<output_dir>/<exp_name>, plus `-seed<N>` for a seed other than the default, so that
        repeating a run with `train.seed=N` never writes into (or resumes) the default run."""
        if self.train.seed == TrainConfig.seed:
            return Path(self.output_dir) / self.exp_name
        return Path(self.output_dir) / f"{self.exp_name}-seed{self.train.seed}"


class ConfigKeyError(ConfigError):
    """A bad value (or name) of the dotted key `key` (empty: the whole config); the message
    starts with the key. load_config names where it came from: an override or the file."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


# What a value of each plain type must be, as an error message says it (bool is not an int).
_PLAIN_TYPES = {bool: "true or false", int: "an integer", str: "a string"}


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; convert lists to tuples and ints to floats."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, tp, key)
    if origin is Literal:
        if value not in args:
            raise ConfigKeyError(key, f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigKeyError(key, f"{key}: expected a list, got {value!r}")
        return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is float:
        return _number(value, key)
    if tp not in _PLAIN_TYPES:
        raise TypeError(f"unsupported config type {tp} for {key}")
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigKeyError(key, f"{key}: expected {_PLAIN_TYPES[tp]}, got {value!r}")
    return value


def _convert_union(value: Any, tp: Any, key: str) -> Any:
    """The first member of the union `tp` that `value` fits (None fits an optional key)."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors: list[ConfigKeyError] = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _convert(value, arg, key)
        except ConfigKeyError as e:
            errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    raise ConfigKeyError(key, f"{key}: {value!r} fits none of {tp}")


def _number(value: Any, key: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigKeyError(key, f"{key}: expected a number, got {value!r}")
    return float(value)


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigKeyError(prefix, f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in set(data) - set(names))  # YAML allows `1:` as a key
    where = f"{prefix}." if prefix else ""
    for key in unknown:
        if where + key in RENAMED_KEYS:
            old = where + key
            raise ConfigKeyError(old, f"{old} was renamed: use {RENAMED_KEYS[old]}")
    if unknown:
        raise ConfigKeyError(
            where + unknown[0],
            f"unknown config key {', '.join(where + k for k in unknown)} "
            f"(known keys{' of ' + prefix if prefix else ''}: {', '.join(names)})",
        )
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: `base:` files form a cycle")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data = unalias(data, str(path))
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a file name, got {base!r}")
    return _merge(_read_yaml(path.parent / base, (*seen, path)), data)


def parse_overrides(overrides: Sequence[str]) -> dict:
    """Turn `["train.lr=2e-4", "model.name=mixcl-t"]` into a nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not all(key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return unalias(out, "overrides")


def unalias(data: dict, source: str) -> dict:
    """`data` (one file, the overrides or a checkpoint's config) with each key of ALIASES under
    its name now; both names at once are an error naming `source`."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old, new in ALIASES.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        if not isinstance(data.get(old_section), dict) or old_key not in data[old_section]:
            continue
        if new_key in data.get(new_section, {}):
            raise ConfigError(f"{source}: {old} and {new} are one setting: keep only {new}")
        value = data[old_section].pop(old_key)
        data.setdefault(new_section, {})[new_key] = value
    return data


def config_from_dict(data: dict) -> Config:
    """Build a checked `Config` from plain data (a parsed YAML file or a checkpoint's copy)."""
    cfg = _build(Config, _null_to_auto(data))
    depths, stages = cfg.model.depths, split_name(cfg.model.name)[0].stages
    if depths is not None and len(depths) != stages:
        raise ConfigKeyError(
            "model.depths",
            f"model.depths: one number of blocks per stage, {stages} in all for "
            f"{cfg.model.name}, got {list(depths)}",
        )
    return cfg


def _null_to_auto(data: Any) -> Any:
    """`data` with the NULL_MEANS_AUTO keys that are null set to `auto`."""
    if not isinstance(data, dict):
        return data
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key in NULL_MEANS_AUTO:
        section, name = key.split(".")
        if isinstance(data.get(section), dict) and data[section].get(name, "") is None:
            data[section][name] = "auto"
    return data


def config_from_checkpoint(data: dict) -> Config:
    """The config stored in a checkpoint, with keys renamed since it was written moved and keys
    added since given the values it was trained with."""
    data = unalias(data, "the checkpoint's config")
    for old, new in RENAMED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        if old_key in data.get(old_section, {}):
            data.setdefault(new_section, {})[new_key] = data[old_section].pop(old_key)
    for key, value in ADDED_KEYS.items():
        section, name = key.split(".")
        data.setdefault(section, {}).setdefault(name, value)
    return config_from_dict(data)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (and its bases), apply overrides, and check every key and type; an
    error names where the bad value came from, the command line or the file."""
    data = _read_yaml(Path(path)) if path is not None else {}
    return _with_overrides(data, overrides, "" if path is None else str(path))


def override_config(cfg: Config, overrides: Sequence[str]) -> Config:
    """A copy of `cfg` with `section.key=value` overrides applied and checked."""
    if not overrides:
        return cfg
    return _with_overrides(config_to_dict(cfg), overrides, "")


def _with_overrides(data: dict, overrides: Sequence[str], source: str) -> Config:
    """The config of `data` (read from `source`, a file or nothing) and `overrides`."""
    given = parse_overrides(overrides)
    try:
        return config_from_dict(_merge(data, given))
    except ConfigKeyError as e:
        overridden = flatten(given)
        if any(e.key == k or e.key.startswith((f"{k}.", f"{k}[")) for k in overridden):
            source = "command line"
        raise ConfigError(f"{source}: {e}" if source else str(e)) from None


def config_to_dict(cfg: Config) -> dict:
    """Plain, YAML-friendly data (tuples as lists) that `config_from_dict` reads back."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """Nested plain data as {dotted key: value}, e.g. {"train.lr": 1e-4}."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, f"{key}.") if isinstance(v, dict) else {key: v})
    return out


def covers(keys: Sequence[str], key: str) -> bool:
    """Whether the dotted `key` is one of `keys` or lies in a section among them."""
    return any(key == k or key.startswith(f"{k}.") for k in keys)


def config_changes(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs, with its (old, new) values."""
    a, b = flatten(config_to_dict(old)), flatten(config_to_dict(new))
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def refuse_changes(
    old: Config, new: Config, allowed: Sequence[str], source: str, hint: str = ""
) -> dict:
    """The changes from `old` to `new`; a ConfigError naming those outside `allowed`.

    `allowed` holds dotted keys or whole sections; `source` says what `old` comes from.
    """
    changes = config_changes(old, new)
    refused = [k for k in changes if not covers(allowed, k)]
    if refused:
        was = ", ".join(f"{k}={changes[k][0]!r}" for k in refused)
        now = ", ".join(f"{k}={changes[k][1]!r}" for k in refused)
        raise ConfigError(
            f"{source} was trained with {was} but the config says {now}; only these may "
            f"differ: {', '.join(allowed)}{hint}"
        )
    return changes
