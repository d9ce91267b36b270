"""Helpers for the end-to-end tests: import entry-point scripts, build short train.py runs."""

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_entry(name: str) -> ModuleType:
    """Import an entry-point script by path (`test.py` would clash with the stdlib package)."""
    spec = importlib.util.spec_from_file_location(f"entry_{name}", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_args(data_root: Path, out: Path, *extra: str, exp: str = "run") -> list[str]:
    """train.py arguments for a run of seconds: tiny network, 32 px patches, tiny CLIP."""
    return [
        str(REPO / "configs" / "quickstart.yaml"),
        f"exp_name={exp}",
        f"output_dir={out}",
        f"data.root={data_root}",
        "data.patch_size=32",
        "data.num_workers=0",
        f"clip.cache_dir={out / 'cache'}",
        "model.depths=[1,1,1,1,1]",
        "train.batch_size=4",
        "train.epochs=2",
        "train.extra_epoch=false",
        "train.eval_freq=1",
        *extra,
    ]
