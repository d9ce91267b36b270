"""How the entry points read numbers and end: a user's mistake in one line, a bug with its trace."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

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
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
