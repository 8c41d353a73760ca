"""compute_fid: FID between two sets of images (folders, lab CSVs, arrays or .npz statistics)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from common import UserError, check_destination, check_output_dir, resolve_device
from fid.feature_stats import cached_statistics, compute_statistics, load_statistics, save_statistics
from fid.frechet import frechet_distance
from fid.inception import DIMS, FIDInceptionV3, load_inception
from fid.inputs import open_images


def _is_npz(source: str | os.PathLike | np.ndarray) -> bool:
    return not isinstance(source, np.ndarray) and Path(source).suffix.lower() == ".npz"


def _statistics_file(path: Path) -> str | None:
    """None when `path` holds FID statistics only (mu, sigma), which --save-stats may replace."""
    try:
        with np.load(path) as stats:
            if sorted(stats.files) == ["mu", "sigma"]:
                return None
    except (OSError, ValueError):
        pass
    return "holds something other than FID statistics (mu, sigma)"


def compute_fid(
    predicted: str | os.PathLike | np.ndarray | None,
    ground_truth: str | os.PathLike | np.ndarray,
    *,
    dims: int = 2048,
    device: str | torch.device | None = None,
    batch_size: int = 50,
    num_workers: int = 0,
    weights: str | os.PathLike | None = None,
    model: FIDInceptionV3 | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    save_stats: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> float | None:
    """FID between `predicted` and `ground_truth`: each a folder of images, a lab CSV, an .npz of
    statistics or a uint8 (N, H, W, 3) array. Ground-truth statistics of a folder or CSV are cached
    (unless `cache=False`); `save_stats` also writes them to an .npz (replacing only statistics, or
with `overwrite` any file, never an input). `model` (from `load_inception`)
    saves reloading the weights in a sweep; otherwise they are found as `find_weights(weights)` says.
    With `predicted=None` only the ground-truth statistics are computed (and saved): returns None."""
    device = resolve_device(device)
    if save_stats is not None:
        if Path(save_stats).suffix.lower() != ".npz":
            raise UserError(f"--save-stats must name an .npz file, not {save_stats}")
        check_destination(save_stats, "--save-stats", overwrite=overwrite, replaceable=_statistics_file,
                          inputs=[x for x in (predicted, ground_truth) if not isinstance(x, np.ndarray)])
    if cache_dir is not None:
        check_output_dir(cache_dir, "--cache-dir")
    if model is not None:
        dims = model.dims
    elif dims not in DIMS:
        raise UserError(f"--dims must be one of {', '.join(map(str, DIMS))}, not {dims}")
    pred_images = None if predicted is None or _is_npz(predicted) else open_images(predicted)
    gt_images = None if _is_npz(ground_truth) else open_images(ground_truth)  # inputs checked before weights
    if model is None and (pred_images is not None or gt_images is not None):
        model = load_inception(weights, dims, device)
    elif model is not None:
        model = model.to(device)

    if gt_images is None:
        mu2, sigma2 = load_statistics(ground_truth, dims)
    elif cache and not isinstance(ground_truth, np.ndarray):
        mu2, sigma2 = cached_statistics(ground_truth, gt_images, model, cache_dir, batch_size, num_workers, progress)
    else:
        mu2, sigma2 = compute_statistics(gt_images, model, batch_size, num_workers, progress)
    if save_stats is not None:
        save_statistics(save_stats, mu2, sigma2)
    if predicted is None:
        return None
    if pred_images is not None and gt_images is not None and len(pred_images) != len(gt_images):
        warnings.warn(f"FID of {len(pred_images)} predicted images against {len(gt_images)} ground-truth images: "
                      "sets of different sizes (a --partial run?) score worse by their size alone; compare FIDs "
                      "only of the same images", stacklevel=2)
    if pred_images is None:
        mu1, sigma1 = load_statistics(predicted, dims)
    else:
        mu1, sigma1 = compute_statistics(pred_images, model, batch_size, num_workers, progress)
    return frechet_distance(mu1, sigma1, mu2, sigma2, device)
