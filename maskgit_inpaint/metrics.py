"""Inpainting scores on uint8 pictures (N, H, W, 3) and hole masks (N, H, W) bool, True = hole."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from common import UserError

if TYPE_CHECKING:
    from maskgit_inpaint.pipeline import Result

PSNR_CAP = 100.0  # dB: an exact match has infinite PSNR, which neither a mean nor JSON can hold


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


def result_metrics(result: Result, gt: np.ndarray) -> dict:
    """compute_metrics of a run against the ground truth (indexed like the inputs), plus masked-token
    accuracy (MaskGIT only) and speed."""
    metrics = compute_metrics(result.outputs, gt[result.indices], result.holes)
    if result.token_count:
        metrics["masked_token_accuracy"] = result.token_hits / result.token_count
    metrics["images_per_second"] = result.images_per_second
    return metrics
