"""How the entry points read numbers and end on a user's mistake: one clear line, no traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable


def run(main: Callable[[], object]) -> None:
    """Call an entry point's `main`; report bad input, missing files and failed runs as one line.

    Config, checkpoint and dataset errors are ValueErrors, file problems OSErrors and failed
    runs RuntimeErrors, each with a message naming the key or file. Set MIXCL_TRACEBACK=1 to see
    the full traceback instead.
    """
    try:
        main()
    except (ValueError, OSError, RuntimeError) as e:
        if os.environ.get("MIXCL_TRACEBACK"):
            raise
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
