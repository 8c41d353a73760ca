"""Inputs brought to the model: the lab's folders as a dataset, one user image of any size with its
hole, and the ground truth to score against."""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Subset

from common import UserError, resolve_path
from data import (
    FITS,
    MASK_KINDS,
    InpaintingDataset,
    apply_mask,
    generate_mask,
    load_ground_truth,
    read_hole,
    read_image,
)
from data.images import fit_pil, to_rgb
from data.masks import MaskSource, check_hole_kept, fit_hole, seeded_rng, unfit_hole, warn_if_inverted

ImageSource = str | os.PathLike | Image.Image | np.ndarray


def open_dataset(masked_dir: str | os.PathLike, mask_dir: str | os.PathLike, cfg: dict, partial: float = 1.0,
                 fit: str = "resize", hole_white: bool = False) -> Dataset:
    """The lab's masked_image/ + mask64/ folders as (image, hole, index) items; with `partial` < 1
    only the first ceil(partial * N) pairs. Images of another size are brought to the model's by `fit`."""
    if not 0 < partial <= 1:
        raise UserError(f"--partial must be in (0, 1], got {partial}")
    vq = cfg["vqgan"]
    dataset = InpaintingDataset(resolve_path(masked_dir), resolve_path(mask_dir), vq["mean"], vq["std"],
                                size=vq["img_resolution"], fit=fit, hole_white=hole_white)
    count = math.ceil(partial * len(dataset))
    return dataset if count == len(dataset) else Subset(dataset, range(count))


def read_rgb(image: ImageSource) -> np.ndarray:
    """An image file, PIL image or uint8 array (H, W), (H, W, 3) or (H, W, 4) -> uint8 (H, W, 3)
    (transparency composited on white)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise UserError(f"an image array must be uint8 (H, W), (H, W, 3) or (H, W, 4); got {image.dtype} "
                            f"{image.shape}")
        return np.asarray(to_rgb(Image.fromarray(image)))
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(ImageOps.exif_transpose(image)))
    if not isinstance(image, (str, os.PathLike)):
        raise UserError(f"the image must be a file name, a PIL image or a uint8 array, not {type(image).__name__}")
    path = Path(image)
    if not path.is_file():
        raise UserError(f"image not found: {image}")
    return read_image(path, "RGB")


@dataclass
class Prepared:
    """One user image ready for the model, and what is needed to give the result back at its size."""
    original: np.ndarray  # (H, W, 3) uint8, the input at its own size
    hole: np.ndarray      # (H, W) bool, True = hole
    pixels: np.ndarray    # (s, s, 3) uint8: what the model sees, hole painted gray
    model_hole: np.ndarray  # (s, s) bool
    clean: np.ndarray | None  # (s, s, 3) uint8 ground truth when the hole was generated (mask_kind)


def prepare_image(image: ImageSource, mask: MaskSource | None, size: int, *, fit: str = "resize",
                  hole_white: bool = False, mask_kind: str | None = None, seed: int = 0,
                  name: str = "the image") -> Prepared:
    """Bring one image of any size and its hole to the model's size: the mask by data.masks.read_hole's
    rules (or, with `mask_kind`, a generated one, seeded like `python -m data.masks`), the image
    resized or centre-cropped (`fit`) with a one-line notice. Bad input is one UserError."""
    if fit not in FITS:
        raise UserError(f"unknown fit {fit!r}; valid: {', '.join(FITS)}")
    original = read_rgb(image)
    height, width = original.shape[:2]
    if min(height, width) == 0:
        raise UserError(f"{name} is {width}x{height} pixels: nothing to inpaint")
    pixels = np.asarray(fit_pil(Image.fromarray(original), (size, size), fit))
    clean = None
    if mask is None:
        if mask_kind not in MASK_KINDS:
            raise UserError(f"unknown --mask-kind {mask_kind!r}; valid: {', '.join(MASK_KINDS)}")
        model_hole = generate_mask(mask_kind, size, seeded_rng(seed, Path(name).stem)) < 128
        hole, clean = unfit_hole(model_hole, (width, height), fit), pixels
    else:
        hole = read_hole(mask, hole_white=hole_white)
        if hole.shape != (height, width):
            warnings.warn(f"the mask is {hole.shape[1]}x{hole.shape[0]} but {name} is {width}x{height}; "
                          "resizing the mask to the image", stacklevel=2)
            hole = np.asarray(Image.fromarray(hole).resize((width, height), Image.NEAREST))
        model_hole = fit_hole(hole, (size, size), fit)
    if model_hole.all():
        raise UserError("the mask is entirely hole: there is nothing known to inpaint from")
    if mask is not None:
        warn_if_inverted(hole[None], ["the mask"], hole_white)
    check_hole_kept(hole, fit, name)
    if not hole.any():
        warnings.warn("the mask has no hole (all known): the image comes back unchanged", stacklevel=2)
    if (width, height) != (size, size):
        how = "resized" if fit == "resize" else "centre-cropped and resized"
        warnings.warn(f"{name} is {width}x{height}: {how} to {size}x{size} for the model; the result is also "
                      f"given at {width}x{height}", stacklevel=2)
    return Prepared(original, hole, apply_mask(pixels, np.where(model_hole, 0, 255)), model_hole, clean)


def input_files(dataset: Dataset) -> list[Path]:
    """The masked-image files of every item of an open_dataset, a Subset of it included."""
    return (dataset.dataset if isinstance(dataset, Subset) else dataset).images.files


def open_ground_truth(path: str | os.PathLike, count: int, size: int, inputs: list[Path] | None = None
                      ) -> np.ndarray:
    """Ground truth for `count` inputs: a lab CSV (rows in the inputs' order), a folder (its files
    paired with the `inputs` files by name or number) or (one input) an image file -> (N, H, W, 3)
    uint8. Ground truth of another size than the model's is an error (CSV) or resized with a warning."""
    path = resolve_path(path)
    if path.is_file() and path.suffix.lower() != ".csv":
        gt = read_image(path, "RGB")[None]
        if gt.shape[1:3] != (size, size):
            warnings.warn(f"the ground truth {path.name} is {gt.shape[2]}x{gt.shape[1]}; resizing it to "
                          f"{size}x{size}", stacklevel=2)
            gt = read_image(path, "RGB", size)[None]
    else:
        gt = load_ground_truth(path, size, inputs)
    if len(gt) != count:
        raise UserError(f"{path} holds {len(gt)} ground-truth images but there are {count} inputs")
    if gt.shape[1:3] != (size, size):
        raise UserError(f"{path}: ground-truth images are {gt.shape[2]}x{gt.shape[1]}, not {size}x{size}")
    return gt


def painted(pixels: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """uint8 images (..., H, W, 3) with their `holes` (..., H, W) bool painted gray, as shown to people."""
    return apply_mask(pixels, np.where(holes, 0, 255))
