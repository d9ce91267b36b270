"""Image I/O and the [-1, 1] value convention, defined once for the whole codebase.

Networks see images in [-1, 1]; files and metrics use [0, 1] (or uint8). Every conversion
between the two goes through `to_model_range` / `from_model_range`.

Reading policy (`read_rgb`): pixels are returned as stored, in RGB order, 8 bits per channel.
Images that are not 8-bit 3-channel are converted with a warning naming the file, so an odd
file in a dataset is visible rather than silently different:
- grayscale -> the gray value replicated into R, G and B;
- RGBA / gray+alpha -> alpha dropped (not composited);
- 16-bit -> round(value / 257), which maps 65535 to 255 exactly.
The EXIF orientation is applied, as cv2.imread (the authors' reader) does, so a portrait phone
photo is upright; `image_size` reports the size after it. A PNG's EXIF counts only when it
precedes the pixel data, so that a header check never decodes the pixels.
"""

import io
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from utils.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
EXIF_ORIENTATION = 0x0112

# EXIF orientation -> what makes the stored (H, W, ...) array upright.
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}

PathLike = str | os.PathLike


def to_model_range(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Map values in [0, 1] to the network's [-1, 1]."""
    return x * 2 - 1


def from_model_range(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Clamp a network output to [-1, 1] and map it back to [0, 1]."""
    if isinstance(x, torch.Tensor):
        return x.clamp(-1, 1) * 0.5 + 0.5
    return np.clip(x, -1, 1) * 0.5 + 0.5


def uint8_to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float() / 255.0


def is_image_file(path: PathLike) -> bool:
    """True for a visible file whose extension is one of IMAGE_EXTENSIONS."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def list_images(folder: PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by file name.

    Hidden files (e.g. macOS `._name.png` resource forks) are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and is_image_file(p)), key=lambda p: p.name
    )


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 to 8, 1 = as stored) of an opened, not yet decoded image."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # Pillow would decode the pixels to look for EXIF after them
    orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    return orientation if orientation in _UPRIGHT else 1


def png_names(names: Sequence[str]) -> dict[str, str]:
    """Output file name per input name: `a.jpg` -> `a.png`, or `a.jpg.png` when another input
    has the stem `a` too, so that no two outputs share a file."""
    stems = Counter(Path(n).stem for n in names)
    return {n: f"{Path(n).stem if stems[Path(n).stem] == 1 else n}.png" for n in names}


def image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) as displayed (EXIF orientation applied), from the file header only.

    Cheap enough to check thousands of files when a dataset is opened. Raises DataError
    naming the file when the header cannot be read.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            if _orientation(im) >= 5:  # a quarter turn
                w, h = h, w
    except Exception as e:
        raise DataError(f"cannot read image header of {path}: {e}") from e
    return h, w


def _upright(img: np.ndarray, data: np.ndarray) -> np.ndarray:
    """`img` decoded from the file bytes `data`, turned as its EXIF orientation says."""
    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            orientation = _orientation(im)
    except Exception:  # a format Pillow cannot parse carries no orientation it could read
        return img
    if orientation == 1:
        return img
    return np.ascontiguousarray(_UPRIGHT[orientation](img))


def read_rgb(path: PathLike) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    # np.fromfile + imdecode also handles non-ASCII paths, which cv2.imread does not everywhere.
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise DataError(f"image file is empty: {path}")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"cannot decode image file (corrupt or unsupported format): {path}")

    if img.dtype == np.uint16:
        warnings.warn(f"{path}: 16-bit image converted to 8 bits", stacklevel=2)
        img = np.round(img.astype(np.float32) / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {img.dtype} (expected 8 or 16 bit)")

    return _upright(_to_rgb(img, path), data)


def _to_rgb(img: np.ndarray, path: Path) -> np.ndarray:
    """A decoded 8-bit image (gray, gray+alpha, BGR or BGRA) as RGB, warning when converted."""
    if img.ndim == 2 or img.shape[2] == 1:
        warnings.warn(f"{path}: grayscale image converted to RGB", stacklevel=3)
        return cv2.cvtColor(img.reshape(img.shape[0], img.shape[1]), cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 2:
        warnings.warn(f"{path}: gray+alpha image converted to RGB, alpha dropped", stacklevel=3)
        return cv2.cvtColor(np.ascontiguousarray(img[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        warnings.warn(f"{path}: RGBA image converted to RGB, alpha dropped", stacklevel=3)
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _to_uint8_hwc(img: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        t = img.detach()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3 or t.shape[0] != 3 or not t.is_floating_point():
            raise ValueError(
                f"expected a float tensor of shape (3, H, W) or (1, 3, H, W) in [0, 1], "
                f"got {t.dtype} {tuple(t.shape)}"
            )
        t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return t.permute(1, 2, 0).cpu().numpy()
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f"expected a uint8 array of shape (H, W, 3), got {img.dtype} {img.shape}"
            )
        return img
    raise ValueError(f"expected a numpy array or a torch tensor, got {type(img).__name__}")


def write_rgb(path: PathLike, img: np.ndarray | torch.Tensor) -> None:
    """Write an RGB image, creating parent folders; the format follows the file extension.

    Accepts a uint8 (H, W, 3) array or a float tensor (3, H, W) / (1, 3, H, W) in [0, 1]
    (clamped, then rounded to the nearest 8-bit value).
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"{path}: unsupported image extension (use one of {IMAGE_EXTENSIONS})")
    rgb = _to_uint8_hwc(img)
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode image for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    buf.tofile(str(path))
