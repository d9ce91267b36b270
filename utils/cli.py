"""How the entry points read numbers and end: a user's mistake in one line, a bug with its trace."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from utils.errors import UserError


def run(main: Callable[[], object]) -> None:
    """Call an entry point's `main`; a UserError (bad config, data, checkpoint or weights) ends
    the process as one line naming the key or file, anything else raises with its traceback."""
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")


def positive_int(text: str) -> int:
    """argparse type for counts and sizes: an integer of at least 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type for counts that may be 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def add_checkpoint_args(
    p: argparse.ArgumentParser,
    config_help: str = "YAML config for released weights (CLIP settings)",
) -> None:
    """--ckpt, --model and --config: what networks.model_from_checkpoint takes, alike in every entry
    point that runs a trained network."""
    p.add_argument("--ckpt", required=True, help="checkpoint from train.py, or released weights")
    p.add_argument("--model", help="model name for released weights (e.g. mixcl-s)")
    p.add_argument("--config", help=config_help)


def is_override(arg: str) -> bool:
    """`section.key=value`, unless a file or folder of that name exists."""
    return re.match(r"\w+(\.\w+)*=", arg) is not None and not Path(arg).exists()


def check_overrides(p: argparse.ArgumentParser, overrides: list[str]) -> None:
    """Stop with argparse's usage message at the first argument that is no override."""
    bad = [o for o in overrides if not is_override(o)]
    if bad:
        p.error(f"not a section.key=value override: {bad[0]}")
