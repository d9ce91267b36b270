"""Hazy/clear image pairs in the DehazeFormer layout, `<root>/<split>/{GT,hazy}`.

Pairs are matched by identical file names (stem and extension), as upstream does: `a.png` and
`a.jpg` do not pair, and the error message points such near-misses out.

Randomness: `train` mode draws crops, flips and rotations from Python's `random` module, which
torch's DataLoader seeds differently in every worker (base seed + worker id, the base seed
drawn from the main process's torch RNG each epoch). Seed `random` and torch in the main
process for reproducible runs; `valid` and `test` modes are deterministic.
"""

import random
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from utils.errors import DataError, name_list
from utils.image import (
    IMAGE_EXTENSIONS,
    PathLike,
    image_size,
    is_image_file,
    list_images,
    read_rgb,
    to_model_range,
    uint8_to_tensor,
)

MODES = ("train", "valid", "test")


def _to_model_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    return to_model_range(uint8_to_tensor(img))


def _pad_to(imgs: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Reflect-pad (centred) so that both sides are at least `size`."""
    h, w = imgs[0].shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return imgs
    pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
    return [np.pad(im, pad, mode="reflect") for im in imgs]


def random_crop_flip_rotate(
    imgs: list[np.ndarray], size: int, edge_decay: float = 0.0, only_h_flip: bool = False
) -> list[np.ndarray]:
    """The protocol's training augmentation, applied identically to every image in `imgs`.

    One size x size crop; on each axis, with probability size/side * edge_decay the crop snaps
    to a random border. Then a horizontal flip with probability 0.5 and, unless only_h_flip,
    a rotation by a random multiple of 90 degrees.
    """
    h, w = imgs[0].shape[:2]
    if random.random() < size / h * edge_decay:
        top = 0 if random.randint(0, 1) == 0 else h - size
    else:
        top = random.randint(0, h - size)
    if random.random() < size / w * edge_decay:
        left = 0 if random.randint(0, 1) == 0 else w - size
    else:
        left = random.randint(0, w - size)
    imgs = [im[top : top + size, left : left + size] for im in imgs]
    if random.randint(0, 1) == 1:
        imgs = [np.flip(im, axis=1) for im in imgs]
    if not only_h_flip:
        k = random.randint(0, 3)
        imgs = [np.rot90(im, k, axes=(0, 1)) for im in imgs]
    return imgs


def center_crop(imgs: list[np.ndarray], size: int) -> list[np.ndarray]:
    """The central size x size crop of every image in `imgs`."""
    h, w = imgs[0].shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return [im[top : top + size, left : left + size] for im in imgs]


def _unmatched(have: set[str], other: set[str], lacking: str) -> list[str]:
    """The problem of the names in `have` without a counterpart in `other`, if there are any."""
    unmatched = sorted(have - other)
    if not unmatched:
        return []
    other_stems = {Path(n).stem for n in other - have}
    near = any(Path(n).stem in other_stems for n in unmatched)
    hint = " (names must match including the extension)" if near else ""
    return [
        f"{len(unmatched)} image(s) without a {lacking} counterpart{hint}: {name_list(unmatched)}"
    ]


class PairedDataset(Dataset):
    """Hazy/GT pairs of one split; samples are dicts of (3, H, W) float32 tensors in [-1, 1].

    Args:
        root: dataset folder containing `<split>/GT` and `<split>/hazy`.
        split: sub-folder name, e.g. "train" or "test".
        mode: "train" (random aligned crop + flips/rotations), "valid" (centre crop) or
            "test" (whole image).
        patch_size: crop size for train/valid; smaller images are reflect-padded first.
        edge_decay: train only, bias towards crops touching the image border.
        only_h_flip: train only, disable the 90-degree rotations.
        ground_truth: False for a split of hazy images only (real haze, no `GT` folder):
            samples then have no `gt`.

    Sample keys: hazy, gt, name (file name) and, after `set_text_features`, text (1, D).
    Every problem with the split (missing folders, unmatched or unreadable files, size
    mismatches, images too large to decode) is reported together in one DataError. Only file
    headers are read here, so opening a large split is cheap; a file whose pixels are corrupt
    is reported by name when it is loaded.
    """

    def __init__(
        self,
        root: PathLike,
        split: str,
        mode: str,
        patch_size: int = 256,
        edge_decay: float = 0.0,
        only_h_flip: bool = False,
        ground_truth: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if patch_size < 1:
            raise DataError(f"patch_size must be positive, got {patch_size}")
        self.mode = mode
        self.patch_size = patch_size
        self.edge_decay = edge_decay
        self.only_h_flip = only_h_flip
        self.split_dir = Path(root) / split
        self.folders = ("GT", "hazy") if ground_truth else ("hazy",)

        names, self.sizes, problems = self._scan()
        self._refuse(problems)
        self.text: dict[str, torch.Tensor] | None = None
        self.names = names
        self.hazy_paths = [self.split_dir / "hazy" / n for n in names]
        self.gt_paths = [self.split_dir / "GT" / n for n in names] if ground_truth else None

    def _refuse(self, problems: list[str]) -> None:
        """One DataError naming the split and every problem found in it, if any."""
        if problems:
            details = "\n".join(f"  - {p}" for p in problems)
            raise DataError(f"invalid dataset split {self.split_dir}:\n{details}")

    def set_text_features(self, text_features: Mapping[str, torch.Tensor]) -> None:
        """Give every sample its image's CLIP text feature ((1, D) or (D,), by file name)."""
        missing = [n for n in self.names if n not in text_features]
        if missing:
            self._refuse([f"no text feature for {len(missing)} image(s): {name_list(missing)}"])
        self.text = {
            n: torch.as_tensor(text_features[n]).detach().float().reshape(1, -1) for n in self.names
        }

    def _scan(self) -> tuple[list[str], dict[str, tuple[int, int]], list[str]]:
        """Matched file names, their (height, width), and a list of every problem found."""
        problems = []
        if not self.split_dir.is_dir():
            return [], {}, [f"split folder not found: {self.split_dir}"]
        folders = {sub: self.split_dir / sub for sub in self.folders}
        for sub, folder in folders.items():
            if not folder.is_dir():
                problems.append(f"{sub} folder not found: {folder}")
        if problems:
            return [], {}, problems

        found = {sub: {p.name for p in list_images(f)} for sub, f in folders.items()}
        if not any(found.values()):
            return [], {}, [f"no images in {' or '.join(map(str, folders.values()))}"]
        hazy, gt = found["hazy"], found.get("GT", found["hazy"])
        problems += _unmatched(hazy, gt, "GT") + _unmatched(gt, hazy, "hazy")
        names = sorted(gt & hazy)
        pair_size: dict[str, tuple[int, int]] = {}
        unreadable, mismatched = [], []
        for name in names:
            try:
                sizes = [
                    image_size(folders[sub] / name) for sub in ("hazy", "GT") if sub in folders
                ]
            except (ValueError, MemoryError) as e:
                unreadable.append(str(e))
                continue
            if sizes[0] != sizes[-1]:
                mismatched.append(
                    f"{name} (hazy {sizes[0][1]}x{sizes[0][0]}, GT {sizes[1][1]}x{sizes[1][0]})"
                )
            pair_size[name] = sizes[0]
        if unreadable:
            problems.append(f"{len(unreadable)} unreadable file(s): {name_list(unreadable)}")
        if mismatched:
            problems.append(
                f"{len(mismatched)} pair(s) with different GT/hazy sizes: {name_list(mismatched)}"
            )
        return names, pair_size, problems

    def verify_pixels(self, workers: int = 4) -> None:
        """Decode every image once, so a corrupt file fails now rather than mid-training.

        The constructor reads headers only; a truncated file with an intact header is caught
        here. Every undecodable file is named in one DataError.
        """
        paths = [*self.hazy_paths, *(self.gt_paths or [])]

        def problem(path: Path) -> str | None:
            try:
                read_rgb(path)
            except (ValueError, MemoryError) as e:
                return str(e)
            return None

        with ThreadPoolExecutor(max(1, workers)) as pool:  # cv2 decodes without the GIL
            bar = tqdm(pool.map(problem, paths), "checking images", len(paths), disable=None)
            results = list(bar)
        bad = [r for r in results if r is not None]
        if bad:
            self._refuse([f"{len(bad)} undecodable image(s): {name_list(bad)}"])

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, idx: int) -> dict:
        name = self.names[idx]
        imgs = [read_rgb(self.hazy_paths[idx])]
        if self.gt_paths is not None:
            imgs.append(read_rgb(self.gt_paths[idx]))
            if imgs[0].shape != imgs[1].shape:
                raise DataError(f"{name}: hazy {imgs[0].shape} and GT {imgs[1].shape} sizes differ")
        if self.mode != "test":
            imgs = _pad_to(imgs, self.patch_size)
        if self.mode == "train":
            imgs = random_crop_flip_rotate(imgs, self.patch_size, self.edge_decay, self.only_h_flip)
        elif self.mode == "valid":
            imgs = center_crop(imgs, self.patch_size)
        sample = {"hazy": _to_model_tensor(imgs[0]), "name": name}
        if len(imgs) == 2:
            sample["gt"] = _to_model_tensor(imgs[1])
        if self.text is not None:
            sample["text"] = self.text[name]
        return sample


def _files_of(inputs: Sequence[PathLike]) -> tuple[list[Path], list[str]]:
    """The files each input names (a file, or the files in a folder), and the non-image ones."""
    paths, skipped = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted((p for p in item.iterdir() if p.is_file()), key=lambda p: p.name)
        elif item.is_file():
            files = [item]
        else:
            raise DataError(f"input not found: {item}")
        paths += [p for p in files if is_image_file(p)]
        skipped += [str(p) for p in files if not is_image_file(p) and not p.name.startswith(".")]
    return paths, skipped


def input_images(inputs: PathLike | Sequence[PathLike]) -> list[Path]:
    """The image files to dehaze among `inputs`: files and/or folders (not searched recursively).

    Non-image files are skipped with a warning; a missing path is an error, and so are two
    different files with the same name (their outputs would collide).
    """
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    paths, skipped = _files_of(inputs)
    if skipped:
        warnings.warn(
            f"skipping {len(skipped)} non-image file(s): {name_list(skipped)}", stacklevel=2
        )
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    by_name: dict[str, list[Path]] = {}
    for p in unique:
        by_name.setdefault(p.name, []).append(p)
    clashes = [f"{n}: {', '.join(map(str, ps))}" for n, ps in by_name.items() if len(ps) > 1]
    if clashes:
        raise DataError("different input files share a name: " + "; ".join(clashes))
    if not unique:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {inputs}")
    return unique
