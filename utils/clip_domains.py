"""CLIP zero-shot domains (indoor / outdoor) and the per-image text features derived from them.

A frozen open_clip model classifies every hazy image against one text embedding per domain id
(cosine similarity * 100, softmax): its prompt's (by default upstream's "a photo of a <id>"),
or the mean of its prompts' (clip.prompts). The paper feeds the network, as the image's text
feature, the embedding of the top-1 domain ("hard"); "soft" mixes the domains' embeddings by
probability. Classification is run once per dataset split and cached on disk
(`prepare_domains`); the cache stores probabilities and prompt embeddings, so switching
hard/soft never needs CLIP again.
"""

import contextlib
import difflib
import functools
import hashlib
import os
import re
import socket
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import get_args

import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from PIL import Image
from tqdm import tqdm

from utils.checkpoint import save_atomic
from utils.config import (
    DEFAULT_DOMAINS,
    DEFAULT_TEMPLATE,
    TEXT_FEATURE_MODES,
    ClipConfig,
    ClipPrecision,
)
from utils.domain_labels import labels_file, read_domain_labels
from utils.errors import ConfigError, WeightsError
from utils.image import PathLike, read_rgb
from utils.weights import names_a_file, sha256

# Fixed softmax temperature of the protocol (equal to OpenAI CLIP's learned logit scale).
LOGIT_SCALE = 100.0
# Seed of randomly initialised CLIP models, so that every process builds the same one.
RANDOM_INIT_SEED = 0
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "clip"
# 2: images read upright (EXIF orientation), activation and precision recorded; 3: "prompt_emb"
CACHE_FORMAT = 3

# Seconds to wait for a connection to the Hugging Face Hub before weights missing from its cache
# are called impossible to download (open_clip's download would retry for about a minute).
HUB_TIMEOUT_S = 5.0


@functools.cache
def _open_clip() -> ModuleType:
    """open_clip, imported when a CLIP is first needed (its import takes seconds: torchvision,
    transformers), with the repository's model configs (configs/clip/*.json, e.g. tiny-clip)
    known to it; networks without CLIP guidance never import it."""
    import open_clip

    names = {p.stem for p in CONFIG_DIR.glob("*.json")}
    if not names <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)
    return open_clip


def check_arch(arch: str) -> None:
    """Refuse a CLIP architecture open_clip does not know, naming the closest known ones."""
    known = {name.lower(): name for name in _open_clip().list_models()}
    if arch in known.values():
        return
    close = [known[n] for n in difflib.get_close_matches(arch.lower(), known, n=4, cutoff=0.6)]
    hint = f"did you mean {', '.join(close)}?" if close else "see open_clip.list_models()"
    raise ConfigError(f"clip.arch: unknown CLIP architecture {arch!r}; {hint}")


def embedding_width(arch: str) -> int:
    """D, the width of the prompt embeddings (and text features) of `arch`, from its config."""
    check_arch(arch)
    return int(_open_clip().get_model_config(arch)["embed_dim"])


def _is_torchscript_archive(path: Path) -> bool:
    """OpenAI's original CLIP files (e.g. ~/.cache/clip/ViT-B-32.pt) are TorchScript."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in z.namelist())


def refuse_code_weights(pretrained: str | None, source: str) -> None:
    """Refuse CLIP weights named by `source` (a checkpoint: data, not instructions) that would
    run code when loaded: a TorchScript file (OpenAI's original format), which torch.jit.load
    runs in TorchScript's interpreter. Tags and other weight files are loaded weights-only."""
    if not pretrained or not names_a_file(pretrained):
        return
    path = Path(pretrained).expanduser()
    if path.is_file() and _is_torchscript_archive(path):
        raise WeightsError(
            f"{source} names clip.pretrained={pretrained}, a TorchScript file, which runs code "
            "when loaded: not loaded on a checkpoint's word; pass "
            f"clip.pretrained={pretrained} on the command line to load it"
        )


def _weights_help(arch: str) -> str:
    return (
        "Without internet access, download the weights on another machine (for OpenAI "
        "ViT-B/32: https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702"
        "a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt, or the Hugging Face repository "
        "timm/vit_base_patch32_clip_224.openai), copy the file here and point the config at "
        f"it: `clip.pretrained: /path/to/{arch}.pt`. Use `clip.pretrained: null` for a "
        "randomly initialised model (tests only)."
    )


def clip_precision(setting: str, device: str | torch.device) -> str:
    """CLIP's precision: 'auto' is fp16 on CUDA (where OpenAI's CLIP runs in fp16), else fp32."""
    if setting == "auto":
        return "fp16" if torch.device(device).type == "cuda" else "fp32"
    if setting not in get_args(ClipPrecision):
        raise ConfigError(f"clip.precision must be auto, fp16 or fp32, got {setting!r}")
    return setting


def _has_openai_weights(arch: str) -> bool:
    return "openai" in _open_clip().list_pretrained_tags_by_model(arch)


def quick_gelu_for(arch: str, pretrained: str | None, setting: bool | str = "auto") -> bool:
    """Whether CLIP runs with QuickGELU, the activation OpenAI's CLIP was trained with.

    'auto': a weights tag says so itself (open_clip's pretrained config); OpenAI's own files are
    TorchScript; a state-dict file cannot tell, so it is taken for OpenAI's weights when open_clip
    knows OpenAI weights for `arch` (the "openai" tag). Random weights, and `False`, keep the
    architecture's own activation (GELU, unless its name ends in -quickgelu).
    """
    own = bool((_open_clip().get_model_config(arch) or {}).get("quick_gelu", False))
    if setting != "auto":
        return bool(setting) or own
    if not pretrained:
        return own
    if names_a_file(pretrained):
        path = Path(pretrained).expanduser()
        return own or _is_torchscript_archive(path) or _has_openai_weights(arch)
    return own or bool(_open_clip().get_pretrained_cfg(arch, pretrained).get("quick_gelu", False))


def load_clip(
    arch: str,
    pretrained: str | None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    quick_gelu: bool | str = "auto",
) -> tuple[torch.nn.Module, Callable, Callable]:
    """A frozen open_clip model in eval mode, its image preprocessing and its tokenizer.

    Args:
        arch: open_clip model name, e.g. "ViT-B-32" or the repository's "tiny-clip".
        pretrained: an open_clip weights tag ("openai"), a local weights file (an open_clip
            or OpenAI TorchScript checkpoint, or a state dict), or None / "" for random
            weights, identical in every process (fixed seed; the caller's RNG state is kept).
        precision: "fp32", or "fp16" as OpenAI's CLIP on a GPU: linear and convolution
            weights in fp16, LayerNorm computed in fp32 (open_clip's precision="fp16").
        quick_gelu: "auto", True or False (see `quick_gelu_for`).
    Raises WeightsError, saying what was tried, when the weights cannot be loaded.
    """
    check_arch(arch)
    precision = clip_precision(precision, device)
    quick = quick_gelu_for(arch, pretrained, quick_gelu)
    options = {"precision": precision, "force_quick_gelu": quick}
    if not pretrained:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model, _, preprocess = _open_clip().create_model_and_transforms(
                arch, device=device, **options
            )
    elif names_a_file(pretrained):
        path = Path(pretrained).expanduser()
        model, preprocess = _load_from_file(arch, path, device, options)
        if quick_gelu == "auto" and not _is_torchscript_archive(path):
            print(_activation_note(arch, path, quick))
    else:
        model, preprocess = _load_from_tag(arch, pretrained, device, options)
    model.eval().requires_grad_(False)
    return model, preprocess, _open_clip().get_tokenizer(arch)


def _activation_note(arch: str, path: Path, quick: bool) -> str:
    """Which activation a state-dict file runs with, and how to choose the other one."""
    if quick and _has_openai_weights(arch):
        why = f"{arch} has OpenAI weights in open_clip, which use it"
    else:
        why = f"the activation of {arch}"
    if quick:
        other = "clip.quick_gelu=false for weights trained with GELU"
    else:
        other = "clip.quick_gelu=true for OpenAI-trained weights"
    return (
        f"CLIP: {path.name} holds no activation; using {'QuickGELU' if quick else 'GELU'} "
        f"({why}). Set {other}"
    )


def _load_from_file(arch: str, path: Path, device: str | torch.device, options: dict) -> tuple:
    if not path.is_file():
        raise WeightsError(f"CLIP weights file not found: {path}. {_weights_help(arch)}")
    try:
        if _is_torchscript_archive(path):
            # OpenAI's files: TorchScript, not loadable with weights_only.
            model, _, preprocess = _open_clip().create_model_and_transforms(arch, **options)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
            # TorchScript also saves metadata and non-persistent buffers (e.g. attn_mask).
            non_persistent = {n for n, _ in model.named_buffers()} - set(model.state_dict())
            for key in ("input_resolution", "context_length", "vocab_size", *non_persistent):
                state.pop(key, None)
            model.load_state_dict(state)
            model.to(device)
        else:
            model, _, preprocess = _open_clip().create_model_and_transforms(
                arch, pretrained=str(path), device=device, **options
            )
    except Exception as e:
        raise WeightsError(
            f"cannot load CLIP weights for {arch} from {path}: {e}. Check that the file is "
            f"a complete {arch} checkpoint (the architecture must match)."
        ) from e
    return model, preprocess


def _hub_files(arch: str, tag: str) -> tuple[str, list[str]]:
    """The Hugging Face repository of the weights `tag` of `arch` and the files open_clip tries
    in it, in its order (a safetensors file first, as open_clip.pretrained does)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo, name = os.path.split(_open_clip().get_pretrained_cfg(arch, tag).get("hf_hub", ""))
    name = name or HF_WEIGHTS_NAME
    if name == HF_WEIGHTS_NAME:
        return repo, [HF_SAFE_WEIGHTS_NAME, name]
    if name.endswith((".bin", ".pth")):
        return repo, [f"{name[:-4]}.safetensors", name]
    return repo, [name]


def _hub_cached(repo: str, files: list[str]) -> bool:
    """Whether one of `files` of `repo` is in the Hugging Face cache (no network used)."""
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


def _hub_unreachable() -> str | None:
    """Why no connection to the Hugging Face Hub (or the https proxy) opens within
    HUB_TIMEOUT_S; None when one does."""
    if hf_constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urllib.parse.urlsplit(urllib.request.getproxies().get("https") or hf_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_TIMEOUT_S).close()
    except OSError as e:
        return f"no connection to {url.hostname}:{port}: {e}"
    return None


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Hugging Face downloads in offline mode while the block runs, if `offline`: a cached file
    is then used without asking the Hub for a newer one (which waits for its timeouts when
    the network drops packets)."""
    saved = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = saved


def _load_from_tag(arch: str, tag: str, device: str | torch.device, options: dict) -> tuple:
    """open_clip's weights `tag`: from the Hugging Face cache without the network, else
    downloaded; when the Hub cannot be reached, a WeightsError at once."""
    tags = _open_clip().list_pretrained_tags_by_model(arch)
    if tag not in tags:
        raise WeightsError(
            f"{tag!r} is neither an existing weights file nor an open_clip weights tag for "
            f"{arch} (known tags: {', '.join(tags) or 'none'}). {_weights_help(arch)}"
        )
    repo, files = _hub_files(arch, tag)  # (no repo: open_clip downloads from its URL)
    cached = bool(repo) and _hub_cached(repo, files)
    why = _hub_unreachable() if repo and not cached else None
    if why is not None:
        raise WeightsError(
            f"CLIP weights {arch}/{tag} are not in the Hugging Face cache "
            f"({hf_constants.HF_HUB_CACHE}) and cannot be downloaded ({why}). {_weights_help(arch)}"
        )
    try:
        with _hub_offline(cached):
            model, _, preprocess = _open_clip().create_model_and_transforms(
                arch, pretrained=tag, device=device, **options
            )
    except Exception as e:
        raise WeightsError(
            f"cannot download CLIP weights {arch}/{tag} ({type(e).__name__}: {e}). "
            f"{_weights_help(arch)}"
        ) from e
    return model, preprocess


def domain_prompts(
    domains: Sequence[str] = DEFAULT_DOMAINS, template: str = DEFAULT_TEMPLATE
) -> list[str]:
    """One prompt per domain; the default reproduces upstream's "a photo of a indoor"."""
    if "{}" not in template:
        raise ConfigError(f"clip.template must contain '{{}}', got {template!r}")
    return [template.format(d) for d in domains]


def prompts_per_domain(clip: ClipConfig) -> list[list[str]]:
    """Each domain's prompts, in clip.domains' order: its clip.prompts entry, else the template
    filled with its id."""
    given: dict[str, list[str]] = {}
    for entry in clip.prompts:
        if entry.domain not in clip.domains:
            raise ConfigError(
                f"clip.prompts: {entry.domain!r} is not one of clip.domains {list(clip.domains)}"
            )
        if entry.domain in given or not entry.texts:
            why = "given twice" if entry.domain in given else "has no texts"
            raise ConfigError(f"clip.prompts: domain {entry.domain!r} {why}")
        given[entry.domain] = list(entry.texts)
    templated = domain_prompts(clip.domains, clip.template)
    return [given.get(d, [t]) for d, t in zip(clip.domains, templated, strict=True)]


def domain_embeddings(
    model: torch.nn.Module, tokenizer: Callable, prompts: Sequence[Sequence[str]]
) -> torch.Tensor:
    """(K, D) unit-norm text embedding of each domain from its prompts: the prompt's embedding
    (upstream), or with several the mean of theirs, re-normalised (CLIP's prompt ensembling)."""
    emb = prompt_embeddings(model, tokenizer, [text for group in prompts for text in group])
    groups = emb.split([len(group) for group in prompts])
    return torch.stack([g[0] if len(g) == 1 else F.normalize(g.mean(0), dim=-1) for g in groups])


@torch.no_grad()
def prompt_embeddings(model: torch.nn.Module, tokenizer: Callable, prompts: Sequence[str]):
    """L2-normalised CLIP embeddings of `prompts`, float32 on the CPU, shape (K, D).

    Normalised in the model's precision, so an fp16 CLIP gives fp16-rounded unit vectors, as
    OpenAI's code saves them.
    """
    device = next(model.parameters()).device
    emb = model.encode_text(tokenizer(list(prompts)).to(device))
    return F.normalize(emb, dim=-1).float().cpu()


@torch.no_grad()
def classify(
    model: torch.nn.Module,
    preprocess: Callable,
    images: Sequence,
    prompt_emb: torch.Tensor,
) -> torch.Tensor:
    """Zero-shot domain probabilities (N, K): softmax over 100 * cosine similarity.

    `images` are PIL images, uint8 (H, W, 3) RGB arrays, or an already preprocessed
    (N, 3, h, w) tensor. Computed in the model's precision (fp16 as OpenAI's code on a GPU:
    similarities and softmax included), returned as float32.
    """
    if not isinstance(images, torch.Tensor):
        pil = [im if isinstance(im, Image.Image) else Image.fromarray(im) for im in images]
        images = torch.stack([preprocess(im) for im in pil])
    # The dtype the image tower computes in: its first linear or convolution weight's.
    layers = (torch.nn.Conv2d, torch.nn.Linear)
    dtype = next(m.weight.dtype for m in model.visual.modules() if isinstance(m, layers))
    device = next(model.parameters()).device
    img_emb = F.normalize(model.encode_image(images.to(device, dtype)), dim=-1)
    logits = LOGIT_SCALE * img_emb @ prompt_emb.to(device, dtype).T
    return logits.softmax(dim=-1).float().cpu()


def text_features(probs: torch.Tensor, prompt_emb: torch.Tensor, mode: str) -> torch.Tensor:
    """Text features (N, D) of unit norm from domain probabilities (N, K).

    "hard": the prompt embedding of the most probable domain (the paper); "soft": the
    probability-weighted mix of the prompt embeddings, re-normalised.
    """
    if mode == "hard":
        return prompt_emb[probs.argmax(dim=-1)]
    if mode == "soft":
        return F.normalize(probs.float() @ prompt_emb, dim=-1)
    raise ValueError(f"text feature mode must be one of {TEXT_FEATURE_MODES}, got {mode!r}")


@dataclass(frozen=True)
class DomainCache:
    """Zero-shot domain results for one list of images, as stored on disk.

    Attributes:
        names: image file names, in the order given to `prepare_domains`.
        domain_names: the K domains.
        probs: (N, K) probabilities; prompt_emb: (K, D) unit-norm prompt embeddings.
        record: what produced the results (arch, weights, prompts, image fingerprints).
    """

    names: list[str]
    domain_names: list[str]
    probs: torch.Tensor
    prompt_emb: torch.Tensor
    record: dict

    @property
    def domains(self) -> dict[str, str]:
        """Predicted (top-1) domain of every image."""
        top = self.probs.argmax(dim=-1).tolist()
        return {n: self.domain_names[k] for n, k in zip(self.names, top, strict=True)}

    def counts(self) -> dict[str, int]:
        """Number of images per predicted domain (every domain listed, zeros included)."""
        counts = dict.fromkeys(self.domain_names, 0)
        for d in self.domains.values():
            counts[d] += 1
        return counts

    def text_features(
        self, mode: str, labels: dict[str, str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Image file name -> (1, D) text feature, for PairedDataset.set_text_features.

        With `labels` (every image name -> one of `domain_names`: oracle domains), the prompt
        embedding of each image's labelled domain replaces CLIP's guess and `mode` does not apply.
        """
        if labels is None:
            feats = text_features(self.probs, self.prompt_emb, mode)
        else:
            index = {d: k for k, d in enumerate(self.domain_names)}
            feats = self.prompt_emb[[index[labels[n]] for n in self.names]]
        return {n: feats[i : i + 1] for i, n in enumerate(self.names)}


def _record_weights(pretrained: str | None) -> str:
    """What identifies CLIP weights in a cache record: the tag, or the file's sha256."""
    if not pretrained:
        return f"random-init(seed={RANDOM_INIT_SEED})"
    path = Path(pretrained).expanduser()
    if names_a_file(pretrained) and path.is_file():
        return f"sha256:{sha256(path)}"
    return f"open_clip:{pretrained}"


def _stat(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes(), usedforsecurity=False).hexdigest()


def _images_unchanged(paths: list[Path], stored: list[dict]) -> str | None:
    """None when every image matches its stored fingerprint, else the first changed name.

    A file whose size and mtime match is trusted without reading it; otherwise its sha1
    decides, so copying or touching a dataset does not force a rebuild but an edit does.
    """
    for path, fp in zip(paths, stored, strict=True):
        st = _stat(path)
        if st == {"size": fp["size"], "mtime_ns": fp["mtime_ns"]}:
            continue
        if st["size"] != fp["size"] or _sha1(path) != fp["sha1"]:
            return path.name
    return None


def _load_cache(cache_file: Path) -> tuple[dict | None, str]:
    """The cache file's contents, or None and the reason it cannot be used."""
    if not cache_file.is_file():
        return None, "no cache file yet"
    try:
        data = torch.load(cache_file, map_location="cpu", weights_only=True)
        if data["format"] != CACHE_FORMAT:
            return None, f"cache format {data['format']} was written by an earlier version"
        n, k = len(data["names"]), len(data["record"]["prompts"])
        ok = (
            data["probs"].shape == (n, k)
            and data["prompt_emb"].shape[0] == k
            and len(data["record"]["images"]) == n
        )
    except Exception as e:
        return None, f"cache file is unreadable or truncated ({type(e).__name__})"
    if not ok:
        return None, "cache file has an unexpected layout"
    return data, ""


def _stale_reason(data: dict, record: dict, names: list[str], paths: list[Path]) -> str | None:
    old = dict(data["record"])
    # Caches written before a domain could have several prompts hold one string per domain.
    old["prompts"] = [[p] if isinstance(p, str) else p for p in old["prompts"]]
    for key, what in (
        ("arch", "CLIP architecture"),
        ("weights", "CLIP weights"),
        ("activation", "CLIP activation"),
        ("precision", "CLIP precision"),
        ("domains", "domains"),
        ("prompts", "prompts"),
    ):
        if old[key] != record[key]:
            return f"{what} changed ({old[key]} -> {record[key]})"
    if data["names"] != names:
        return "image list changed"
    changed = _images_unchanged(paths, old["images"])
    if changed is not None:
        return f"image content changed ({changed})"
    return None


def _record(clip: ClipConfig, device: str | torch.device) -> dict:
    """What a cache's results depend on besides the images."""
    quick = quick_gelu_for(clip.arch, clip.pretrained, clip.quick_gelu)
    return {
        "arch": clip.arch,
        "weights": _record_weights(clip.pretrained),
        "activation": "QuickGELU" if quick else "GELU",
        "precision": clip_precision(clip.precision, device),
        "domains": list(clip.domains),
        "prompts": prompts_per_domain(clip),
    }


def load_classifier(
    clip: ClipConfig, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Callable, torch.Tensor]:
    """The frozen CLIP of the config (see `load_clip`), its image preprocessing and the prompt
    embeddings of its domains: what `classify` takes."""
    model, preprocess, tokenizer = load_clip(
        clip.arch, clip.pretrained, device, clip.precision, clip.quick_gelu
    )
    return model, preprocess, domain_embeddings(model, tokenizer, prompts_per_domain(clip))


def prepare_domains(
    hazy_dir: PathLike,
    names: Sequence[str],
    cache_file: PathLike,
    clip: ClipConfig,
    device: str | torch.device = "cpu",
    num_workers: int = 4,
) -> DomainCache:
    """Zero-shot domains of the images `names` in `hazy_dir` with the CLIP of `clip`, from
    `cache_file` when valid (one folder's file names are unique: text features are looked up
    by them).

    'auto' precision is fp16 when `device` is a GPU. The cache is reused when the architecture,
    weights (tag or file sha256), activation, precision, domains, prompts, image names and
    image contents are unchanged; otherwise CLIP classifies every image again (the reason is
    printed) and the file is replaced atomically.
    """
    names = list(names)
    paths = [Path(hazy_dir) / n for n in names]
    cache_file = Path(cache_file)
    record = _record(clip, device)
    data, reason = _load_cache(cache_file)
    if data is not None:
        reason = _stale_reason(data, record, names, paths)
        if reason is None:
            print(f"CLIP domains: reusing {cache_file}")
            return _to_cache(data)
    print(
        f"CLIP domains: classifying {len(paths)} images with {clip.arch} in "
        f"{record['precision']} on {torch.device(device).type} ({reason})"
    )

    model, preprocess, prompt_emb = load_classifier(clip, device)
    images = [{**_stat(p), "sha1": _sha1(p)} for p in paths]
    probs = []
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        starts = range(0, len(paths), clip.batch_size)
        for start in tqdm(starts, "CLIP domains", unit="batch", disable=None):
            chunk = paths[start : start + clip.batch_size]
            batch = pool.map(lambda p: preprocess(Image.fromarray(read_rgb(p))), chunk)
            probs.append(classify(model, preprocess, torch.stack(list(batch)), prompt_emb))
    data = {
        "format": CACHE_FORMAT,
        "names": names,
        "probs": torch.cat(probs),
        "prompt_emb": prompt_emb,
        "record": {**record, "images": images},
    }
    save_atomic(data, cache_file)
    cache = _to_cache(data)
    print("CLIP domains: " + ", ".join(f"{d} {c}" for d, c in cache.counts().items()))
    return cache


def _to_cache(data: dict) -> DomainCache:
    rec = data["record"]
    return DomainCache(
        names=list(data["names"]),
        domain_names=list(rec["domains"]),
        probs=data["probs"],
        prompt_emb=data["prompt_emb"],
        record=rec,
    )


def cache_file_for(clip: ClipConfig, hazy_dir: Path) -> Path:
    """One cache file per (image folder, CLIP setup); its contents are checked again on load."""
    what = f"{hazy_dir.resolve()}|{clip.arch}|{clip.pretrained}|{clip.template}|{clip.domains}"
    if clip.prompts:  # (the files of configs without their own prompts keep their names)
        what += f"|{clip.prompts}"
    digest = hashlib.sha1(what.encode()).hexdigest()[:10]
    readable = re.sub(
        r"[^A-Za-z0-9_.-]+", "_", f"{hazy_dir.parent.parent.name}-{hazy_dir.parent.name}"
    )
    return Path(clip.cache_dir) / f"{readable}-{clip.arch}-{digest}.pt"


def split_text_features(
    clip: ClipConfig, split_dir: Path, names: Sequence[str], device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], DomainCache]:
    """The text feature of each hazy image `names` of a split, and CLIP's domains of them.

    The text features are those of CLIP's zero-shot domains, or with `clip.domain_source: labels`
    exactly the prompt embedding of each image's domain in `<split>/domains.csv` (read first,
    so a bad labels file fails before CLIP runs).
    """
    labels = None
    if clip.domain_source == "labels":
        labels = read_domain_labels(labels_file(split_dir), clip.domains, names)
    hazy_dir = split_dir / "hazy"
    cache = prepare_domains(hazy_dir, names, cache_file_for(clip, hazy_dir), clip, device)
    return cache.text_features(clip.mode, labels), cache
