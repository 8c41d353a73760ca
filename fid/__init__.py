"""FID with pytorch-fid's Inception network: `compute_fid(predicted, ground_truth)`; CLI: fid/fid_score_gpu.py."""
from fid.feature_stats import compute_statistics, extract_features, load_statistics, save_statistics
from fid.frechet import frechet_distance
from fid.inception import FIDInceptionV3, find_weights, load_inception
from fid.inputs import open_images
from fid.score import compute_fid

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
