"""What FID reads: a folder of images, a lab CSV or a uint8 array, checked and brought to one size."""
from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from common import UserError
from data.ground_truth import list_images, read_gt_csv
from data.images import image_size, read_image


class ImageFiles(Dataset):
    """Image files as uint8 (3, H, W) tensors, read as `read_image` does (RGB, transparency on white,
    16-bit gray scaled to 8 bits) and resized (bicubic) to `size` (width, height) if needed."""

    def __init__(self, files: list[Path], size: tuple[int, int]) -> None:
        self.files = files
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(read_image(self.files[i], "RGB", self.size)).permute(2, 0, 1)


Images = ImageFiles | np.ndarray


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def open_images(source: str | os.PathLike | np.ndarray) -> Images:
    """A folder of images, a lab CSV or a uint8 (N, H, W, 3) array, checked: at least 2 images; a
    folder's images of another size than the most common one are resized to it (with a note)."""
    if isinstance(source, np.ndarray):
        images = source
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise UserError(f"images must be a uint8 (N, H, W, 3) array, got {images.dtype} {images.shape}")
        where = "the image array"
    else:
        path = Path(source)
        where = str(path)
        if path.suffix.lower() == ".csv":
            images = read_gt_csv(path)
        elif path.is_dir():
            images = open_folder(path)
        else:
            raise UserError(f"{path}: not a folder of images, a .csv or an .npz of statistics")
    if len(images) < 2:
        raise UserError(f"{where} has {len(images)} image; FID needs at least 2 (a covariance of 1 is undefined)")
    return images


def open_folder(path: Path) -> ImageFiles:
    files = list_images(path)
    sizes = [image_size(file) for file in files]  # a damaged file fails here, named, not in a loader worker
    size = Counter(sizes).most_common(1)[0][0]
    odd = sum(s != size for s in sizes)
    if odd:
        note(f"{odd} of {len(files)} images in {path} are not {size[0]}x{size[1]}; resizing them to that size")
    return ImageFiles(files, size)
