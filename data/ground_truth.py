"""Ground-truth test images: the lab's `test_gt.csv` (one row of H*W*3 uint8 values in HWC order
per image, after a header row) or a folder of images. Both load to a uint8 array (N, H, W, 3)."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from common import UserError, atomic_write
from data.images import check_sizes, read_image
from data.names import natural_order, pair_files

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_gt_csv(path: str | os.PathLike) -> np.ndarray:
    """Read a lab-style CSV of square RGB images into (N, S, S, 3) uint8."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ground-truth CSV not found: {path}")
    rows = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader, None)  # header row
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            side = math.isqrt(len(row) // 3)
            if len(row) % 3 or side * side * 3 != len(row):
                raise UserError(f"{path}, line {line_no}: {len(row)} values is not a square RGB image (S*S*3)")
            if rows and len(row) != rows[0].size:
                raise UserError(f"{path}, line {line_no}: {len(row)} values, earlier rows have {rows[0].size}")
            try:
                values = np.asarray(row, dtype=np.int64)
            except ValueError:
                raise UserError(f"{path}, line {line_no}: values are not integers") from None
            if values.min() < 0 or values.max() > 255:
                raise UserError(f"{path}, line {line_no}: values outside 0..255")
            rows.append(values.astype(np.uint8))
    if not rows:
        raise UserError(f"{path}: no image rows after the header")
    side = math.isqrt(rows[0].size // 3)
    return np.stack(rows).reshape(len(rows), side, side, 3)


def write_gt_csv(images: np.ndarray, path: str | os.PathLike) -> None:
    """Write (N, S, S, 3) uint8 images as a lab-style CSV (header row, one HWC row per image)."""
    images = np.asarray(images, dtype=np.uint8)
    flat = images.reshape(len(images), -1)
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([f"pixel_{i}" for i in range(flat.shape[1])])
        writer.writerows(flat.tolist())


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files of a folder in data.names.natural_order; a clear error if the folder is missing or
    has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"folder not found: {folder}")
    files = natural_order([p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()])
    if not files:
        raise UserError(f"no images (png, jpg, webp, bmp) in {folder}")
    return files


def load_ground_truth(path: str | os.PathLike, size: int | None = None,
                      inputs: list[Path] | None = None) -> np.ndarray:
    """Load ground truth from a CSV file or an image folder as (N, H, W, 3) uint8.
    Folder images are read as `read_image` does and, when `size` is given, brought to size x size
    (with one warning naming how many were not). With `inputs` (the image files they are the ground
    truth of), a folder's files are paired with them as masks are (data.names.pair_files)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return read_gt_csv(path)
    files = list_images(path)
    if inputs is not None:
        if len(files) != len(inputs):
            raise UserError(f"{path} holds {len(files)} ground-truth images but there are {len(inputs)} inputs")
        files = pair_files(inputs, files, "ground-truth image", path)
    if size is not None:
        check_sizes(files, size, False, path)
    images = [read_image(file, "RGB", size) for file in files]
    if len({im.shape for im in images}) > 1:
        raise UserError(f"images in {path} have different sizes; pass a size to resize them")
    return np.stack(images)
