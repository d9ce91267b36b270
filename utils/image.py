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

An image is judged by its header before it is decoded (`read_header`): one that declares more
pixels than a limit, or whose decoding would not fit in the free memory, is refused without
allocating its pixels. With `max_side`, a JPEG is decoded at 1/2, 1/4 or 1/8 of its size where
that still leaves `max_side` pixels (libjpeg's reduced decoding), then shrunk to it.
"""

import os
import struct
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from utils.errors import DataError, TooManyPixelsError
from utils.files import write_atomic
from utils.memory import available_memory

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

# libjpeg's reduced decoding: factor -> the OpenCV flag (read_rgb applies the EXIF orientation).
_REDUCED = {
    (f, color): flag | cv2.IMREAD_IGNORE_ORIENTATION
    for f, color, flag in (
        (2, True, cv2.IMREAD_REDUCED_COLOR_2),
        (4, True, cv2.IMREAD_REDUCED_COLOR_4),
        (8, True, cv2.IMREAD_REDUCED_COLOR_8),
        (2, False, cv2.IMREAD_REDUCED_GRAYSCALE_2),
        (4, False, cv2.IMREAD_REDUCED_GRAYSCALE_4),
        (8, False, cv2.IMREAD_REDUCED_GRAYSCALE_8),
    )
}
# Rows of a 16-bit image converted to 8 bits at a time, so the conversion's temporaries stay
# small next to the image.
_CONVERT_ROWS = 256


def max_pixels() -> int:
    """The most pixels one image may declare: Pillow's own decompression-bomb limit, which its
    `Image.open` enforces (`PIL.Image.MAX_IMAGE_PIXELS`, twice)."""
    return 2 * (Image.MAX_IMAGE_PIXELS or 2**62)


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


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says of its image, before any pixel is decoded."""

    height: int  # as displayed (EXIF orientation applied)
    width: int
    channels: int  # as stored: 1 gray, 2 gray+alpha, 3 colour, 4 with alpha (a palette: 3)
    bits: int  # per sample: 8, or 16 for 16-bit PNG and TIFF
    format: str  # Pillow's name: PNG, JPEG, BMP, TIFF, ...
    orientation: int  # EXIF, 1 (as stored) to 8

    @property
    def pixels(self) -> int:
        return self.height * self.width


def _png_depth(path: Path) -> tuple[int, int]:
    """(bits per sample, channels) from a PNG's IHDR chunk, which Pillow's mode does not always
    show (a 16-bit RGB PNG opens as "RGB")."""
    with open(path, "rb") as f:
        head = f.read(26)
    bits, color_type = struct.unpack(">BB", head[24:26])
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(color_type, 3)
    return (8 if color_type == 3 else bits), channels


def _depth(im: Image.Image, path: Path) -> tuple[int, int]:
    """(bits per sample, channels) of an opened, not yet decoded image."""
    if im.format == "PNG":
        return _png_depth(path)
    bands = len(im.getbands())
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))
        return max(bits if isinstance(bits, tuple) else (bits,)), bands
    return (16 if im.mode.startswith("I;16") else 8), bands


def read_header(path: PathLike) -> ImageHeader:
    """The image's size, depth and orientation from the file header only: cheap enough to check
    thousands of files, and never the pixels' memory. DataError naming the file when the file
    is missing or its header cannot be read; TooManyPixelsError when it declares more than
    `max_pixels()` (Pillow's limit, which it enforces on opening)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # judged below
            with Image.open(path) as im:
                w, h = im.size
                orientation = _orientation(im)
                bits, channels = _depth(im, path)
                fmt = im.format or ""
    except Image.DecompressionBombError as e:
        raise TooManyPixelsError(
            f"{path}: refused before decoding, its header declares too many pixels ({e}); "
            "shrink it with another tool first"
        ) from None
    except Exception as e:
        raise DataError(f"cannot read image header of {path}: {e}") from e
    if orientation >= 5:  # a quarter turn
        w, h = h, w
    return ImageHeader(h, w, channels, bits, fmt, orientation)


def image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) as displayed (EXIF orientation applied) of an image that `read_rgb` can
    decode in full, from the file header only (what `check_decodable` refuses is raised)."""
    header = read_header(path)
    check_decodable(path, header)
    return header.height, header.width


def fitted_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(height, width) after shrinking so the longer side is at most `max_side`."""
    if not max_side or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def downscale(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """`img` resized to `height` x `width` (area interpolation keeps detail honest)."""
    if img.shape[:2] == (height, width):
        return img
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def _reduction(header: ImageHeader, max_side: int | None) -> int:
    """The largest factor (1, 2, 4 or 8) by which the decoder can shrink the image and still
    leave at least the size `max_side` asks for: JPEG only."""
    if header.format != "JPEG" or not max_side:
        return 1
    height, width = fitted_size(header.height, header.width, max_side)
    fits = [
        f for f in (8, 4, 2) if -(-header.height // f) >= height and -(-header.width // f) >= width
    ]
    return fits[0] if fits else 1


def check_decodable(path: PathLike, header: ImageHeader, factor: int = 1) -> None:
    """Refuse, before decoding, an image of more than `max_pixels()` decoded pixels
    (TooManyPixelsError) or one whose decoding would not fit in the free memory (MemoryError)."""
    pixels = -(-header.height // factor) * -(-header.width // factor)
    if pixels > max_pixels():
        raise TooManyPixelsError(
            f"{path}: {header.width}x{header.height} pixels declared, more than the "
            f"{max_pixels() / 1e6:.0f} MP one image may have; shrink it with another tool first"
        )
    # The file's bytes, the decoded samples, and the 8-bit RGB result with one working copy.
    decoded = pixels * max(header.channels, 3) * (header.bits // 8)
    need = os.path.getsize(path) + decoded + 2 * pixels * 3
    if need > available_memory("cpu"):
        raise MemoryError(
            f"{path}: {header.width}x{header.height} pixels ({header.pixels / 1e6:.0f} MP): "
            f"decoding it needs about {need / 2**30:.1f} GiB, more than is free"
        )


def read_rgb(path: PathLike, max_side: int | None = None) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array (see the module docstring), shrunk so
    its longer side is at most `max_side` (decoded at reduced size where the format allows)."""
    path = Path(path)
    header = read_header(path)
    factor = _reduction(header, max_side)
    check_decodable(path, header, factor)
    # np.fromfile + imdecode also handles non-ASCII paths, which cv2.imread does not everywhere.
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise DataError(f"image file is empty: {path}")
    flags = cv2.IMREAD_UNCHANGED if factor == 1 else _REDUCED[factor, header.channels >= 3]
    img = cv2.imdecode(data, flags)
    del data
    if img is None:
        raise DataError(f"cannot decode image file (corrupt or unsupported format): {path}")

    if img.dtype == np.uint16:
        warnings.warn(f"{path}: 16-bit image converted to 8 bits", stacklevel=2)
        img = _to_8_bits(img)
    elif img.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {img.dtype} (expected 8 or 16 bit)")

    img = _to_rgb(img, path)
    if header.orientation != 1:
        img = np.ascontiguousarray(_UPRIGHT[header.orientation](img))
    return downscale(img, *fitted_size(header.height, header.width, max_side))


def _to_8_bits(img: np.ndarray) -> np.ndarray:
    """round(value / 257), which maps 65535 to 255 exactly, a band of rows at a time."""
    out = np.empty(img.shape, np.uint8)
    for r in range(0, img.shape[0], _CONVERT_ROWS):
        rows = img[r : r + _CONVERT_ROWS].astype(np.uint32)
        out[r : r + _CONVERT_ROWS] = (rows + 128) // 257  # never a tie: equals rounding
    return out


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
    """Write an RGB image, creating parent folders; the format follows the file extension. The
    file is complete at every instant, and a link at `path` is replaced, not written through
    (utils/files.py).

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
    write_atomic(path, lambda f: f.write(buf.data))
