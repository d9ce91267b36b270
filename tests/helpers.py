"""Helpers shared by test modules: tiny networks and inputs, entry-point scripts, short runs."""

import importlib.util
import socket
import struct
import zlib
from pathlib import Path
from types import ModuleType

import torch

from models import build_model
from utils.speed import STRAIGHTFORWARD

REPO = Path(__file__).resolve().parents[1]
TINY = (1, 1, 1, 1, 1)  # model.depths of the tiny test networks
TEXT_DIM = 512
FP32_TOL = 1e-5  # fp32 results of two computations of the same network
# Where the tests' runs cache their measured speed settings: one folder per session (conftest),
# so that the tiny networks are measured once, not in every test.
SPEED_CACHE = Path("cache/speed")


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fresh random weights and BatchNorm affine/statistics away from defaults, in eval mode."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Conv1d):
            module.reset_parameters()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape) + 0.5)
            elif name.endswith(("running_mean", "norm1.bias", "norm2.bias")):
                tensor.copy_(torch.randn(tensor.shape) * 0.1)
            elif name.endswith(("norm1.weight", "norm2.weight")):
                tensor.copy_(1 + torch.randn(tensor.shape) * 0.1)
    return model.eval()


def image(h: int, w: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    """A random image batch in the networks' [-1, 1] range."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, h, w, generator=gen) * 2 - 1


def text(batch: int = 1, seed: int = 2) -> torch.Tensor:
    """Random per-image CLIP vectors, (batch, 1, TEXT_DIM)."""
    return torch.randn(batch, 1, TEXT_DIM, generator=torch.Generator().manual_seed(seed))


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
        f"speed.cache_dir={SPEED_CACHE}",
        "model.depths=[1,1,1,1,1]",
        "train.batch_size=4",
        "train.epochs=2",
        "train.extra_epoch=false",
        "train.eval_freq=1",
        *extra,
    ]


def reference_and(overrides: dict, name: str = "mixcl-t", depths=TINY):
    """The straightforward model with random weights and the same weights in `overrides`."""
    ref = randomize(build_model(name, depths=depths, **STRAIGHTFORWARD))
    model = build_model(name, depths=depths, **overrides).eval()
    keys = model.state_dict().keys()
    model.load_state_dict({k: v for k, v in ref.state_dict().items() if k in keys})
    return ref, model


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, width: int, height: int, rgb: bool = False) -> Path:
    """A valid PNG of `width` x `height` black pixels that is tiny on disk: 1-bit gray (or
    8-bit RGB), its rows compressed one by one so that writing it never holds the image."""
    bits, color_type = (8, 2) if rgb else (1, 0)
    row = bytes(1 + -(-width * bits * (3 if rgb else 1) // 8))
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bits, color_type, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server the test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
