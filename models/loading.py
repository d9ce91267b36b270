"""Load weights into a network: this project's checkpoints, the authors' files, bare state_dicts.

Nothing is skipped silently: every key either loads, is dropped on purpose with a logged note
(upstream's unused text branch), or makes loading fail with the keys named.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from models.text_fusion import TEXT_BRANCH_MODULES
from utils.errors import name_list

logger = logging.getLogger(__name__)

FUSION_PREFIX = "text_emb."
DATA_PARALLEL_PREFIX = "module."
# At most this many keys are named per kind of problem in an error message.
MAX_KEYS_SHOWN = 5


def _state_dict_of(source: Mapping) -> dict[str, torch.Tensor]:
    """The tensors inside a checkpoint: {'model': sd}, {'state_dict': sd} or sd itself."""
    for key in ("model", "state_dict"):
        if isinstance(source.get(key), Mapping):
            source = source[key]
            break
    not_tensors = [k for k, v in source.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            "expected a state_dict (or a dict with 'model' or 'state_dict' holding one); "
            f"entries that are not tensors: {sorted(map(str, not_tensors))[:10]}"
        )
    state = dict(source)
    if state and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        state = {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in state.items()}
    return state


def _is_text_branch_key(key: str) -> bool:
    parts = key.split(".")
    return key.startswith(FUSION_PREFIX) and parts[1] in TEXT_BRANCH_MODULES


def load_pretrained(model: nn.Module, source: Mapping, input_weight: str | None = None) -> None:
    """Load weights in place; raise ValueError naming missing, unexpected or misshaped keys.

    `source` is a loaded checkpoint: a state_dict, or a dict holding one under 'model' or
    'state_dict'. A file of the plain network (e.g. MixDehazeNet) loaded into a model with text
    fusion is a warm start: the fusion keeps its initial weights and the extra input channels
    of `input_weight` (the backbone's registry entry names it) get zero weights, so the network
    initially computes what the plain network computes.
    """
    state = _state_dict_of(source)
    target = model.state_dict()

    dropped = sorted(k for k in state if _is_text_branch_key(k) and k not in target)
    if dropped:
        logger.info("dropping the unused text-branch weights of the file: %s", ", ".join(dropped))
        state = {k: v for k, v in state.items() if k not in dropped}

    fusion_keys = [k for k in target if k.startswith(FUSION_PREFIX)]
    if fusion_keys and not any(k.startswith(FUSION_PREFIX) for k in state):
        logger.info(
            "warm start from a model without text fusion: %s keep their initial values",
            ", ".join(fusion_keys),
        )
        state.update({k: target[k] for k in fusion_keys})
        src, dst = state.get(input_weight), target.get(input_weight)
        if (
            src is not None
            and dst is not None
            and src.shape[1] < dst.shape[1]
            and src.shape[:1] + src.shape[2:] == dst.shape[:1] + dst.shape[2:]
        ):
            widened = torch.zeros_like(dst)
            widened[:, : src.shape[1]] = src
            state[input_weight] = widened

    missing = sorted(target.keys() - state.keys())
    unexpected = sorted(state.keys() - target.keys())
    misshaped = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target.keys() & state.keys()
        if state[k].shape != target[k].shape
    )
    problems = [
        f"{label}: {name_list(keys, MAX_KEYS_SHOWN)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch", misshaped),
        )
        if keys
    ]
    if problems:
        raise ValueError("cannot load weights into the model; " + "; ".join(problems))
    model.load_state_dict(state)
