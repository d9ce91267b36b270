"""Which weights a config key names: the keys whose role in utils/config.KEY_ROLES names weights
(WEIGHTS_KEYS: a tag, a file or null).

A path changes between machines and a file may be renamed; what changes the numbers is which
weights it holds. So the protocol report, test.py's results folders and compare.py's repeats
compare these identities, never the paths: a tag, "random", torchvision's weights, or a file's
sha256 digest. A file whose digest is that of a tag's download (OpenAI's CLIP files, whose
addresses hold their digests; torchvision's ResNet-152) is that tag.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path

from utils.files import file_sha256

RANDOM = "random"  # clip.pretrained null: the randomly initialised CLIP (tests only)
# The weights the CR loss loads without loss.resnet_weights: torchvision's ResNet152_Weights
# member (utils/losses.py).
RESNET152_WEIGHTS = "IMAGENET1K_V1"
TORCHVISION_RESNET152 = f"torchvision:{RESNET152_WEIGHTS}"
SHOWN_DIGEST = 16  # hex digits of a file's sha256 in an identity: enough to tell files apart
# File names of weights (open_clip reads these as files, whatever else the value says).
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")


def names_a_file(value: str) -> bool:
    """Whether a clip.pretrained value is a path rather than an open_clip tag: an existing
    path, one with a folder, or a weights file name."""
    path = Path(value).expanduser()
    return path.exists() or "/" in value or os.sep in value or path.suffix in WEIGHT_SUFFIXES


def sha256(path: Path) -> str:
    """The file's sha256 hex digest, computed once per path, size and modification time."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def _file_id(value: str, known: Callable[[], dict[str, str]]) -> str:
    """A file's identity: the tag whose download has its digest (`known`: {digest prefix:
    tag}), else the digest; a path with no file behind it is named as such."""
    path = Path(value).expanduser()
    if not path.is_file():
        return f"no file at {value}"
    digest = sha256(path)
    tag = next((t for prefix, t in known().items() if digest.startswith(prefix)), None)
    return tag or f"sha256:{digest[:SHOWN_DIGEST]}"


@functools.cache
def _openai_clip_files() -> dict[str, str]:
    """The digests of OpenAI's CLIP files, which open_clip's download addresses hold."""
    import open_clip

    pairs = open_clip.list_pretrained()
    urls = (open_clip.get_pretrained_cfg(arch, tag).get("url", "") for arch, tag in pairs)
    return {u.split("/")[-2]: "openai" for u in urls if "openaipublic" in u}


@functools.cache
def _torchvision_resnet152() -> dict[str, str]:
    """The digest prefix in the name of torchvision's ResNet-152 file, as torch.hub checks it."""
    import torch.hub
    import torchvision

    url = torchvision.models.ResNet152_Weights[RESNET152_WEIGHTS].url
    match = re.search(torch.hub.HASH_REGEX, Path(url).name)
    return {match.group(1): TORCHVISION_RESNET152} if match else {}


def clip_weights(value: str | None) -> str:
    """clip.pretrained: an open_clip tag, "random" (null), or a file's identity."""
    if not value:
        return RANDOM
    return _file_id(value, _openai_clip_files) if names_a_file(value) else value


def resnet_weights(value: str | None) -> str:
    """loss.resnet_weights: torchvision's ImageNet weights (null), or a file's identity."""
    return TORCHVISION_RESNET152 if value is None else _file_id(value, _torchvision_resnet152)


# Each key of WEIGHTS_KEYS (utils/config.py) and how its value is identified.
IDENTIFY: dict[str, Callable[[str | None], str]] = {
    "clip.pretrained": clip_weights,
    "loss.resnet_weights": resnet_weights,
}


def weights_id(key: str, value: str | None) -> str:
    """Which weights the value of `key` (one of WEIGHTS_KEYS) names."""
    return IDENTIFY[key](value)
