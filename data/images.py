"""Image file I/O shared by the dataset builder, the mask CLI and the loaders: every read failure
becomes a UserError that names the file, and PNG writes are byte-reproducible."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from common import UserError

# What PIL raises for files that are not images, truncated or otherwise corrupt.
READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
# PIL modes of 16-bit grayscale PNGs (and 32-bit integer images), holding values up to 65535
_WIDE_GRAY = ("I", "I;16", "I;16B", "I;16L", "I;16N")


ORIENTATION = 0x0112  # the EXIF tag that says how a camera image is turned; 5-8 swap width and height


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file as shown (EXIF orientation applied), after checking its
    structure without decoding the pixels. Cheap enough to run over a whole folder up front, so bad
    files fail before training starts."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()  # reads every chunk: catches truncation and bad checksums (PNG)
        with Image.open(path) as im:  # verify() leaves the image unusable
            if im.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):  # shown turned by 90 degrees
                size = size[::-1]
    except READ_ERRORS as err:
        raise UserError(f"cannot read image {path}: {err}") from None
    return size


def to_8bit(im: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) grayscale scaled to 8-bit "L": PIL's convert() would clip every
    value above 255 to white."""
    if im.mode not in _WIDE_GRAY:
        return im
    values = np.asarray(im).astype(np.float64)
    return Image.fromarray(np.clip(np.round(values / 257), 0, 255).astype(np.uint8), "L")


FITS = ("resize", "crop")  # how an image of another size is brought to the model's square size


def has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as RGB: 16-bit gray scaled to 8 bits, transparency composited on white."""
    im = to_8bit(im)
    if has_alpha(im):
        im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
    return im.convert("RGB")


def fit_box(width: int, height: int, fit: str = "resize") -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) part of a width x height image that is brought to the model's
    square: all of it ("resize", squashing the aspect ratio) or its centred square ("crop")."""
    if fit not in FITS:
        raise UserError(f"unknown fit {fit!r}; valid: {', '.join(FITS)}")
    if fit == "resize":
        return 0, 0, width, height
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def fit_pil(im: Image.Image, size: tuple[int, int], fit: str = "resize", resample: int = Image.BICUBIC) -> Image.Image:
    """`im`'s fit_box resized to `size` (width, height); unchanged when it already is that size."""
    box = fit_box(*im.size, fit)
    if im.size == size and box == (0, 0, *size):
        return im
    return im.resize(size, resample, box=box)


def read_image(path: str | os.PathLike, mode: str = "RGB", size: int | tuple[int, int] | None = None,
               fit: str = "resize") -> np.ndarray:
    """Decode an image, turned as its EXIF orientation says, as a uint8 array: "RGB" -> HxWx3
    (transparency composited on white), "L" -> HxW;
    16-bit grayscale is scaled to 8 bits. With `size` (a side, or (width, height)), images of another
    size are brought to it (see fit_box; bicubic, or nearest for "L")."""
    size = (size, size) if isinstance(size, int) else size
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # a phone photo as it is shown, and its mask alike
            im = to_rgb(im) if mode == "RGB" else to_8bit(im).convert(mode)
            if size is not None:
                im = fit_pil(im, size, fit, Image.NEAREST if mode == "L" else Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8).copy()
    except READ_ERRORS as err:
        raise UserError(f"cannot read image {path}: {err}") from None


def restore_size(original: np.ndarray, hole: np.ndarray, output: np.ndarray, fit: str = "resize",
                 paste: bool = True) -> np.ndarray:
    """The model's square `output` (s, s, 3) brought back to the `original` (H, W, 3) uint8 image's
    size: upscaled (bicubic) into the fit_box it came from; with `paste` only the `hole` (H, W) bool
    pixels take it, so every known pixel of the original is kept exactly."""
    height, width = original.shape[:2]
    left, top, right, bottom = fit_box(width, height, fit)
    up = np.asarray(Image.fromarray(output).resize((right - left, bottom - top), Image.BICUBIC))
    result = original.copy()
    region = result[top:bottom, left:right]
    if paste:
        inside = hole[top:bottom, left:right]
        region[inside] = up[inside]
    else:
        region[:] = up
    return result


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 HxW or HxWx3 array as PNG with fixed settings (no metadata): same array, same bytes."""
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path, format="PNG", compress_level=6)


def check_sizes(files: list[Path], size: int, strict: bool, folder: str | os.PathLike, fit: str = "resize") -> None:
    """Check that every file is a readable size x size image. Other sizes: one warning naming a file
    and the count (they will be resized, or centre-cropped with `fit` "crop"), or a UserError in
    strict mode."""
    wrong = [(f, s) for f in files if (s := image_size(f)) != (size, size)]
    if not wrong:
        return
    first, (w, h) = wrong[0]
    message = f"{len(wrong)} of {len(files)} images in {folder} are not {size}x{size} (e.g. {first.name} is {w}x{h})"
    if strict:
        raise UserError(message + "; resize them or drop strict mode")
    how = "resizing" if fit == "resize" else "centre-cropping and resizing"
    warnings.warn(message + f"; {how} them to {size}x{size}", stacklevel=3)
