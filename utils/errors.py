"""The project's user errors: wrong input that the user fixes, reported as one line.

Anything else (a shape error in a network being edited, a CUDA error) is a code bug and keeps
its traceback. Each class also derives from the built-in error it refines, so callers that
catch ValueError or FileNotFoundError keep working.
"""

from __future__ import annotations

from collections.abc import Sequence


def name_list(names: Sequence[str], limit: int = 20) -> str:
    """The first `limit` names for an error message, and how many more there are."""
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" ... and {more} more" if more > 0 else "")


class UserError(Exception):
    """Wrong input: the message names the file, key or argument and says what to do."""


class ConfigError(UserError, ValueError):
    """A configuration file or override is wrong; the message names the key."""


class DataError(UserError, ValueError):
    """A dataset or input image is missing, unreadable or of the wrong shape."""


class TooManyPixelsError(DataError):
    """An image's header declares more pixels than may be decoded (a decompression bomb)."""


class CheckpointError(UserError, ValueError):
    """A file is missing, unreadable or not a checkpoint of this project."""


class WeightsError(UserError, FileNotFoundError):
    """Pretrained weights (CLIP, ResNet-152, MixDehazeNet) are missing or unusable."""


class MissingPackageError(UserError, ImportError):
    """An optional library (a metric's, the demo's) is not installed; the message says how."""


class OutputError(UserError, OSError):
    """An output cannot be written where asked (a folder that is not writable, a full disk)."""


class OutputExistsError(OutputError, FileExistsError):
    """Earlier outputs (checkpoints, results, images, a dataset) are where new ones would go."""
