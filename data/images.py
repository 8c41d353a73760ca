"""Image file I/O shared by the dataset builder, the mask CLI and the loaders: every read failure
becomes a UserError that names the file, and PNG writes are byte-reproducible."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from common import UserError

# What PIL raises for files that are not images, truncated or otherwise corrupt.
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
# PIL modes of 16-bit grayscale PNGs (and 32-bit integer images), holding values up to 65535
_WIDE_GRAY = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file, after checking its structure without decoding the pixels.
    Cheap enough to run over a whole folder up front, so bad files fail before training starts."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()  # reads every chunk: catches truncation and bad checksums (PNG)
    except _READ_ERRORS as err:
        raise UserError(f"cannot read image {path}: {err}") from None
    return size


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) grayscale scaled to 8-bit "L": PIL's convert() would clip every
    value above 255 to white."""
    if im.mode not in _WIDE_GRAY:
        return im
    values = np.asarray(im).astype(np.float64)
    return Image.fromarray(np.clip(np.round(values / 257), 0, 255).astype(np.uint8), "L")


def read_image(path: str | os.PathLike, mode: str = "RGB", size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image as a uint8 array: "RGB" -> HxWx3 (transparency composited on white), "L" -> HxW;
    16-bit grayscale is scaled to 8 bits. With `size` (a side, or (width, height)), images of another
    size are resized to it (bicubic, or nearest for masks)."""
    size = (size, size) if isinstance(size, int) else size
    try:
        with Image.open(path) as im:
            im = _to_8bit(im)
            if mode == "RGB" and (im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info):
                im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
            im = im.convert(mode)
            if size is not None and im.size != size:
                im = im.resize(size, Image.NEAREST if mode == "L" else Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8).copy()
    except _READ_ERRORS as err:
        raise UserError(f"cannot read image {path}: {err}") from None


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 HxW or HxWx3 array as PNG with fixed settings (no metadata): same array, same bytes."""
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path, format="PNG", compress_level=6)


def check_sizes(files: list[Path], size: int, strict: bool, folder: str | os.PathLike) -> None:
    """Check that every file is a readable size x size image. Other sizes: one warning naming a file
    and the count (they will be resized), or a UserError in strict mode."""
    wrong = [(f, s) for f in files if (s := image_size(f)) != (size, size)]
    if not wrong:
        return
    first, (w, h) = wrong[0]
    message = f"{len(wrong)} of {len(files)} images in {folder} are not {size}x{size} (e.g. {first.name} is {w}x{h})"
    if strict:
        raise UserError(message + "; resize them or drop strict mode")
    warnings.warn(message + f"; resizing them to {size}x{size}", stacklevel=3)
