"""Inpainting scores and the simple baselines they are compared with.

Metrics work on uint8 pictures (N, H, W, 3) and hole masks (N, H, W) bool, True = hole. The
baselines fill the holes of uint8 pictures from their known pixels only:

- `mean-fill`: the mean colour of the known pixels;
- `nearest`: the nearest known pixel (Euclidean distance transform, scipy);
- `harmonic`: the smoothest fill that meets the known pixels at the hole's edge (Laplace's equation,
  solved exactly with scipy's sparse solver);
- `telea`, `ns`: OpenCV's inpainting (Telea's fast marching, Navier-Stokes), radius 3, what people
  reach for instead of a learned model.
"""
from __future__ import annotations

import math

import numpy as np

from common import UserError

PSNR_CAP = 100.0  # dB: an exact match has infinite PSNR, which neither a mean nor JSON can hold
BASELINES = ("mean-fill", "nearest", "harmonic", "telea", "ns")
OPENCV_RADIUS = 3  # pixels around the hole OpenCV looks at (the value people use at 64x64)


# ----------------------------------------------------------------------------- metrics

def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of 8-bit pictures with mean squared error `mse`, capped at PSNR_CAP."""
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255 ** 2 / mse))


def hole_psnr(output: np.ndarray, gt: np.ndarray, hole: np.ndarray) -> float:
    """PSNR (dB) of uint8 (H, W, 3) `output` against `gt` over the pixels of `hole` (H, W) only:
    scikit-image has no masked PSNR, so the MSE over the hole is converted to dB the same way."""
    diff = output[hole].astype(np.float64) - gt[hole]  # (P, 3)
    return psnr_from_mse(float(np.mean(diff ** 2)))


def compute_metrics(outputs: np.ndarray, gt: np.ndarray, holes: np.ndarray) -> dict:
    """Means over the images that have a hole (uint8 (N, H, W, 3) outputs and ground truth, (N, H, W)
    holes): PSNR of the whole image and of the hole only (dB, capped at PSNR_CAP), SSIM, and L1 in
    the hole (pixel values in [0, 1])."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # scipy: slow to import

    scored = [i for i in range(len(outputs)) if holes[i].any()]
    if not scored:
        raise UserError("no image has a hole (every mask is all white): nothing to score")
    psnr, psnr_hole, ssim, l1_hole = [], [], [], []
    for i in scored:
        out, ref = outputs[i], gt[i]
        with np.errstate(divide="ignore"):  # identical images: skimage divides by an MSE of 0
            psnr.append(min(PSNR_CAP, float(peak_signal_noise_ratio(ref, out, data_range=255))))
        ssim.append(float(structural_similarity(ref, out, channel_axis=-1, data_range=255)))
        psnr_hole.append(hole_psnr(out, ref, holes[i]))
        l1_hole.append(float(np.mean(np.abs(out[holes[i]].astype(np.float64) - ref[holes[i]]))) / 255)
    return {"psnr": float(np.mean(psnr)), "psnr_hole": float(np.mean(psnr_hole)), "ssim": float(np.mean(ssim)),
            "l1_hole": float(np.mean(l1_hole)), "scored_images": len(scored)}


# ----------------------------------------------------------------------------- baselines

def _mean_fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[hole] = np.round(image[~hole].astype(np.float64).mean(0)).astype(np.uint8)
    return out


def nearest_known(hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel of `hole` (H, W) bool, the (rows, cols) of the nearest known pixel (itself
    when known), by the Euclidean distance transform."""
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(hole, return_distances=False, return_indices=True)


def _nearest(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    rows, cols = nearest_known(hole)
    return image[rows, cols]


def harmonic_fill(values: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`values` (H, W, C) float with the pixels of `hole` (H, W) replaced by the harmonic function
    that equals `values` on the known pixels next to the hole: each hole pixel is the mean of its
    4 neighbours (fewer at the image border, where the slope across the border is zero). Used by
    the `harmonic` baseline and by Poisson blending (inpainting.poisson_blend)."""
    import scipy.sparse
    import scipy.sparse.linalg

    height, width = hole.shape
    ys, xs = np.nonzero(hole)
    index = np.full(hole.shape, -1)
    index[ys, xs] = np.arange(len(ys))
    degree = np.zeros(len(ys))
    rhs = np.zeros((len(ys), values.shape[-1]))   # (P, C): the known neighbours' values
    rows, cols = [], []                            # -1 entries: neighbour pairs inside the hole
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        degree += inside
        pixel, ny, nx = np.nonzero(inside)[0], ny[inside], nx[inside]
        in_hole = hole[ny, nx]
        rows.append(pixel[in_hole])
        cols.append(index[ny[in_hole], nx[in_hole]])
        np.add.at(rhs, pixel[~in_hole], values[ny[~in_hole], nx[~in_hole]])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    laplacian = scipy.sparse.csc_matrix((np.full(len(rows), -1.0), (rows, cols)), shape=(len(ys), len(ys)))
    laplacian = laplacian + scipy.sparse.diags(degree, format="csc")
    filled = values.astype(np.float64, copy=True)
    filled[ys, xs] = scipy.sparse.linalg.spsolve(laplacian, rhs).reshape(len(ys), -1)
    return filled


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
