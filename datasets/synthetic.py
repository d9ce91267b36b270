"""A tiny synthetic hazy dataset in the DehazeFormer layout, for tests and smoke runs.

Clean scenes are drawn procedurally (indoor rooms and outdoor landscapes, each with a depth
map consistent with its geometry) and hazed with the atmospheric scattering model used to
build RESIDE: I = J * t + A * (1 - t), t = exp(-beta * d). Each image has its own random
generator seeded by (seed, split, index), so a file depends only on those three values and
repeated runs write byte-identical PNGs.

    python -m datasets.synthetic --out data/synthetic   # what configs/quickstart.yaml trains on
"""

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.cli import positive_int, run
from utils.config import DataConfig, SyntheticConfig
from utils.domain_labels import labels_file, write_domain_labels
from utils.errors import OutputExistsError
from utils.image import PathLike, write_rgb

# The command's output folder, and the only place a config's data.synthetic.enabled writes to.
DEFAULT_ROOT = "data/synthetic"

SPLITS = {"train": 0, "test": 1}

Size = tuple[int | tuple[int, int], int | tuple[int, int]]


def _draw_side(rng: np.random.Generator, side: int | tuple[int, int]) -> int:
    if isinstance(side, int):
        return side
    lo, hi = side
    return int(rng.integers(lo, hi + 1))


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised row (0 top .. 1 bottom) and column coordinates, shape (h, w)."""
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None].repeat(w, axis=1)
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :].repeat(h, axis=0)
    return y, x


def _outdoor(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Sky gradient, a hilly horizon, grass and a few trees; depth grows towards the horizon."""
    y, x = _grid(h, w)
    horizon = rng.uniform(0.3, 0.55)
    zenith, near_sky = rng.uniform([0.15, 0.35, 0.65], [0.3, 0.5, 0.9]), np.array([0.8, 0.87, 0.95])
    t_sky = np.clip(y / horizon, 0, 1)[..., None]
    img = zenith * (1 - t_sky) + near_sky * t_sky
    depth = np.full((h, w), 3.0, np.float32)

    phase, freq = rng.uniform(0, 2 * np.pi, 3), rng.uniform([2, 5, 11], [4, 9, 17])
    ridge = horizon - 0.1 * np.abs(
        sum(
            np.sin(f * np.pi * x[0] + p) / (i + 1)
            for i, (f, p) in enumerate(zip(freq, phase, strict=True))
        )
    )
    hill = y > ridge[None, :]
    img[hill] = rng.uniform([0.25, 0.35, 0.3], [0.35, 0.45, 0.4])
    depth[hill] = 2.2

    ground = y > horizon
    grass = rng.uniform([0.2, 0.4, 0.1], [0.35, 0.6, 0.2])
    shade = (0.75 + 0.25 * y)[..., None]
    img[ground] = (grass * shade)[ground]
    # Perspective: ground depth falls from the horizon's towards the camera at the bottom.
    depth[ground] = np.clip(0.25 * (1 - horizon) / np.maximum(y - horizon, 1e-3), 0.2, 2.2)[ground]

    for _ in range(int(rng.integers(2, 6))):
        base = rng.uniform(horizon + 0.05, 1.0)
        cx = rng.uniform(0, 1)
        scale = 0.15 * (base - horizon) / (1 - horizon) + 0.03
        crown = (x - cx) ** 2 * (h / w) ** -2 + (y - (base - 1.2 * scale)) ** 2 < scale**2
        trunk = (np.abs(x - cx) < 0.12 * scale * h / w) & (y < base) & (y > base - scale)
        tree_depth = float(np.clip(0.25 * (1 - horizon) / (base - horizon), 0.2, 2.2))
        img[trunk] = (0.3, 0.2, 0.1)
        img[crown] = rng.uniform([0.05, 0.2, 0.05], [0.15, 0.35, 0.12])
        depth[trunk | crown] = tree_depth
    return img, depth


def _indoor(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A room seen from its open side: back wall, side walls, floor, furniture, warm light."""
    y, x = _grid(h, w)
    left, right = rng.uniform(0.15, 0.3), rng.uniform(0.7, 0.85)
    top, floor = rng.uniform(0.1, 0.25), rng.uniform(0.6, 0.75)
    wall = rng.uniform([0.6, 0.55, 0.45], [0.9, 0.85, 0.75])
    img = np.empty((h, w, 3), np.float32)
    img[:] = wall
    depth = np.full((h, w), 1.0, np.float32)

    # Side walls, floor and ceiling come closer (shallower) with distance from the back wall.
    side = np.maximum(np.maximum(left - x, x - right) / np.maximum(left, 1 - right), 0)
    vert = np.maximum(np.maximum((top - y) / top, (y - floor) / (1 - floor)), 0)
    closeness = np.maximum(side, vert)
    depth = depth - 0.8 * closeness
    img = img * (1 - 0.25 * (side > 0)[..., None])
    on_floor = (y > floor) & (vert >= side)
    img[on_floor] = rng.uniform([0.35, 0.22, 0.12], [0.55, 0.38, 0.25])
    img[on_floor] *= (0.8 + 0.2 * y[on_floor])[:, None]

    for _ in range(int(rng.integers(2, 5))):
        base = rng.uniform(floor, 0.98)
        fh, fw = rng.uniform(0.12, 0.35), rng.uniform(0.12, 0.35)
        cx = rng.uniform(0.1, 0.9)
        box = (np.abs(x - cx) < fw / 2) & (y < base) & (y > base - fh)
        img[box] = rng.uniform(0.1, 0.7, 3)
        depth[box] = 1.0 - 0.8 * (base - floor) / (1 - floor)

    lx, ly = rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.3)
    light = 0.65 + 0.5 * np.exp(-((x - lx) ** 2 + (y - ly) ** 2) / 0.15)
    img = img * light[..., None] * np.array([1.05, 0.97, 0.85], np.float32)
    return img, np.clip(depth, 0.15, 1.0) * rng.uniform(0.8, 1.5)


SCENES = {"indoor": _indoor, "outdoor": _outdoor}


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def synthetic_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray, str]:
    """One (clear, hazy) pair of uint8 (h, w, 3) RGB images and its scene's domain."""
    domain = "indoor" if rng.random() < 0.5 else "outdoor"
    clear, depth = SCENES[domain](rng, h, w)
    clear = np.clip(clear + rng.normal(0, 0.02, clear.shape), 0, 1)
    beta = rng.uniform(0.5, 1.5)
    airlight = rng.uniform(0.75, 1.0) * rng.uniform(0.95, 1.0, 3)
    t = np.exp(-beta * depth)[..., None]
    hazy = clear * t + airlight * (1 - t)
    return _to_uint8(clear), _to_uint8(hazy), domain


def make_synthetic_dataset(
    root: PathLike,
    n_train: int,
    n_test: int,
    size: Size = ((40, 72), (40, 72)),
    seed: int = 0,
) -> Path:
    """Write `<root>/{train,test}/{GT,hazy}/NNNN.png` and each split's true domains
    (`domains.csv`, see utils.domain_labels), and return `root` as a Path.

    `size` is (height, width); each side is a fixed int or an inclusive (lo, hi) range drawn
    per image, so the default gives varied sizes, odd ones included.
    """
    root = Path(root)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = {}
        for i in range(n):
            rng = np.random.default_rng([seed, SPLITS[split], i])
            h, w = _draw_side(rng, size[0]), _draw_side(rng, size[1])
            clear, hazy, domain = synthetic_pair(rng, h, w)
            name = f"{i:04d}.png"
            write_rgb(root / split / "GT" / name, clear)
            write_rgb(root / split / "hazy" / name, hazy)
            labels[name] = domain
        if labels:
            write_domain_labels(labels_file(root / split), labels)
    return root


def write_new_dataset(root: PathLike, syn: SyntheticConfig) -> Path:
    """Generate into `root`, which must be absent or empty; its files appear all at once.

    Writing into a temporary sibling and renaming it means an interrupted run leaves no
    half-written dataset that a later run would mistake for a complete one.
    """
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise OutputExistsError(
            f"{root} already exists and is not empty: remove it, or write somewhere else"
        )
    partial = root.with_name(f".{root.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    sides = (syn.min_side, syn.max_side)
    make_synthetic_dataset(partial, syn.train, syn.test, (sides, sides), syn.seed)
    if root.exists():
        root.rmdir()
    partial.rename(root)
    return root


def generate_if_configured(data: DataConfig) -> None:
    """Write the synthetic dataset a config asks for (data.synthetic.enabled), only at
    DEFAULT_ROOT and only when it is absent: any other data.root is never made up."""
    syn = data.synthetic
    at_default = Path(data.root).absolute() == Path(DEFAULT_ROOT).absolute()
    if syn.enabled and at_default and not Path(DEFAULT_ROOT).exists():
        print(f"generating a synthetic dataset in {DEFAULT_ROOT} ({syn.train}+{syn.test} pairs)")
        write_new_dataset(DEFAULT_ROOT, syn)


def main(argv: Sequence[str] | None = None) -> int:
    default = SyntheticConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_ROOT, help="new dataset folder to write")
    parser.add_argument(
        "--train", type=positive_int, default=default.train, help="number of training pairs"
    )
    parser.add_argument("--test", type=positive_int, default=default.test, help="test pairs")
    parser.add_argument("--min-side", type=positive_int, default=default.min_side)
    parser.add_argument("--max-side", type=positive_int, default=default.max_side)
    parser.add_argument("--seed", type=int, default=default.seed)
    args = parser.parse_args(argv)
    if args.min_side > args.max_side:
        parser.error("need --min-side <= --max-side")
    sizes = {k: v for k, v in vars(args).items() if k != "out"}  # named as SyntheticConfig's
    root = write_new_dataset(args.out, SyntheticConfig(**sizes))
    print(f"wrote {args.train} train and {args.test} test pairs to {root}")
    return 0


if __name__ == "__main__":
    run(main)
