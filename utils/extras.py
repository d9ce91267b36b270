"""The optional libraries of the demo, the ONNX export and the browser tests, imported on use."""

from __future__ import annotations

import importlib
from types import ModuleType

from utils.errors import MissingPackageError

DEPLOY_REQUIREMENTS = "requirements-deploy.txt"


def require(module: str, purpose: str) -> ModuleType:
    """Import `module`, or say in one line what to install for `purpose`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingPackageError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed: "
            f"pip install -r {DEPLOY_REQUIREMENTS}"
        ) from e
