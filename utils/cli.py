"""What the entry points share: how they read their arguments (the same `section.key=value`
overrides everywhere), how they show their notes, and how they end: a user's mistake in one line,
a bug with its traceback."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
OVERRIDES_HELP = (
    "config settings as section.key=value, e.g. data.root=/data/RESIDE-6K:\n"
    "any number, anywhere among the arguments, alike in train.py, test.py,\n"
    "predict.py, demo.py and export.py (an existing file or folder of that\n"
    "name is not one)"
)
QUIET_HELP = "show warnings and errors only, not the notes the run logs"


Resume = Literal["auto"] | bool  # train.py --resume and train.resume
RESUME_MODES: dict[str, Resume] = {"auto": "auto", "true": True, "false": False}


def resume_mode(text: str) -> Resume:
    """argparse type of --resume: auto, true or false."""
    if text not in RESUME_MODES:
        raise argparse.ArgumentTypeError(f"expected auto, true or false, got {text!r}")
    return RESUME_MODES[text]


def spell_resume(argv: list[str]) -> list[str]:
    """`--resume MODE` as `--resume=MODE`, a bare `--resume` as `--resume=true`: a value that
    may be left out would otherwise swallow a following `key=value` override."""
    spelled: list[str] = []
    bare = False  # the previous argument was `--resume`
    for arg in argv:
        if bare and arg in RESUME_MODES:
            spelled[-1] = f"--resume={arg}"
        else:
            spelled.append("--resume=true" if arg == "--resume" else arg)
        bare = arg == "--resume"
    return spelled


def parse_before_imports(module: str, parse_args: Callable[[list[str] | None], object]) -> None:
    """Read a script's command line before its heavy imports (torch, and what imports it, take
    seconds): `--help` and a mistake in the arguments answer at once. An entry point calls it
    with its `__name__` between its `parse_args` and those imports; imported (by a test, or a
    spawned worker), it does nothing."""
    if module == "__main__":
        parse_args(None)


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
    p.add_argument(
        "--ckpt",
        required=True,
        help="checkpoint from train.py (overrides may change only the keys\n"
        "docs/TEST_AND_PREDICT.md lists), or released weights",
    )
    p.add_argument("--model", help="model name for released weights (e.g. mixcl-s)")
    p.add_argument("--config", help=config_help)


def entry_parser(doc: str | None) -> argparse.ArgumentParser:
    """An entry point's argument parser: its docstring as the description, and -q/--quiet."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    return p


def add_overrides(p: argparse.ArgumentParser) -> None:
    """The positional section.key=value overrides, after any other positional argument."""
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help=OVERRIDES_HELP)


def is_override(arg: str) -> bool:
    """`section.key=value`, unless a file or folder of that name exists."""
    return re.match(r"\w+(\.\w+)*=", arg) is not None and not Path(arg).exists()


def parse_with_overrides(
    p: argparse.ArgumentParser, argv: list[str] | None, inputs: str | None = None
) -> argparse.Namespace:
    """Parse `argv`, options and positional arguments in any order. The positional arguments of
    the form section.key=value are the overrides (`args.overrides`); the others go, as a list,
    to the positional argument `inputs` declared before the overrides (predict.py's images,
    train.py's config file), or without one stop with argparse's usage message."""
    args = p.parse_intermixed_args(argv)
    held = getattr(args, inputs) if inputs else None
    given = [*([held] if isinstance(held, str) else held or []), *args.overrides]
    args.overrides = [a for a in given if is_override(a)]
    others = [a for a in given if not is_override(a)]
    if inputs:
        setattr(args, inputs, others)
    elif others:
        p.error(f"not a section.key=value override: {others[0]}")
    return args


def setup_logging(quiet: bool = False) -> None:
    """Show the project's notes (INFO, e.g. models.loading's dropped or kept weights) on stderr,
    other libraries' from WARNING; `quiet` (and a torchrun process other than rank 0) shows
    warnings only. Called by every entry point's main; calling it again only updates it."""
    root = logging.getLogger()
    if not any(isinstance(h, _Stderr) for h in root.handlers):
        console = _Stderr()
        console.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(console)
    quiet = quiet or os.environ.get("RANK", "0") != "0"
    for name in project_modules():
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)


class _Stderr(logging.StreamHandler):
    """A handler writing to sys.stderr as it is at each note (a test may have replaced it)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def project_modules() -> list[str]:
    """The logger names of the project's own code: its top-level packages and modules, and an
    entry point run as a script."""
    packages = [d.name for d in REPO.iterdir() if (d / "__init__.py").is_file()]
    return ["__main__", *packages, *(f.stem for f in REPO.glob("*.py"))]
