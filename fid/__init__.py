"""FID with pytorch-fid's Inception network: `compute_fid(predicted, ground_truth)`; CLI: fid/fid_score_gpu.py."""
from fid.fid_score_gpu import (
    compute_fid,
    compute_statistics,
    extract_features,
    frechet_distance,
    load_statistics,
    open_images,
    save_statistics,
)
from fid.inception import FIDInceptionV3, find_weights, load_inception

__all__ = [
    "FIDInceptionV3",
    "compute_fid",
    "compute_statistics",
    "extract_features",
    "find_weights",
    "frechet_distance",
    "load_inception",
    "load_statistics",
    "open_images",
    "save_statistics",
]
