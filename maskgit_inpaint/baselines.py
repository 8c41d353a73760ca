"""The simple baselines MaskGIT is compared with, filling the holes of uint8 pictures from their
known pixels only:

- `mean-fill`: the mean colour of the known pixels;
- `nearest`: the nearest known pixel (Euclidean distance transform, scipy);
- `harmonic`: the smoothest fill that meets the known pixels at the hole's edge (Laplace's equation,
  solved exactly with scipy's sparse solver);
- `telea`, `ns`: OpenCV's inpainting (Telea's fast marching, Navier-Stokes), radius 3, what people
  reach for instead of a learned model.
"""
from __future__ import annotations

import numpy as np

from common import UserError
from maskgit_inpaint.blending import harmonic_fill, nearest_known

BASELINES = ("mean-fill", "nearest", "harmonic", "telea", "ns")
OPENCV_RADIUS = 3  # pixels around the hole OpenCV looks at (the value people use at 64x64)


def _mean_fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[hole] = np.round(image[~hole].astype(np.float64).mean(0)).astype(np.uint8)
    return out


def _nearest(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    rows, cols = nearest_known(hole)
    return image[rows, cols]


def _harmonic(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    return np.clip(np.round(harmonic_fill(image.astype(np.float64), hole)), 0, 255).astype(np.uint8)


def _opencv(flag_name: str):
    def fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        try:
            import cv2
        except ImportError:
            raise UserError("the telea and ns baselines need OpenCV: pip install opencv-python-headless") from None
        return cv2.inpaint(np.ascontiguousarray(image), hole.astype(np.uint8) * 255, OPENCV_RADIUS,
                           getattr(cv2, flag_name))
    return fill


_FILLS = {"mean-fill": _mean_fill, "nearest": _nearest, "harmonic": _harmonic, "telea": _opencv("INPAINT_TELEA"),
          "ns": _opencv("INPAINT_NS")}


def fill_baseline(method: str, images: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """Fill the holes of uint8 pictures (N, H, W, 3) with a baseline; known pixels stay as they are.
    Images whose hole covers everything are returned unchanged (nothing to fill from)."""
    if method not in _FILLS:
        raise UserError(f"unknown baseline {method!r}; valid: {', '.join(BASELINES)}")
    fill = _FILLS[method]
    out = images.copy()
    for i, (image, hole) in enumerate(zip(images, holes)):
        if hole.any() and not hole.all():
            out[i] = np.where(hole[..., None], fill(image, hole), image)
    return out
