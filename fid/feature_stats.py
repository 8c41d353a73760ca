"""Inception feature statistics (mean, covariance) of a set of images, their .npz files and the
cache of ground-truth statistics keyed by content, dims and weights."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from common import UserError, numerics, progress_bar
from data.ground_truth import list_images
from fid.inception import FIDInceptionV3
from fid.inputs import Images, note

STATS_VERSION = 2  # bump when a change alters computed statistics, to invalidate the cache


@torch.inference_mode()
def extract_features(
    images: Images, model: FIDInceptionV3, batch_size: int = 50, num_workers: int = 0, progress: bool = True
) -> torch.Tensor:
    """Inception features (N, model.dims) in float64 on the model's device."""
    device = next(model.parameters()).device
    if isinstance(images, np.ndarray):
        batches = torch.from_numpy(images).permute(0, 3, 1, 2).split(batch_size)
    else:
        batches = DataLoader(images, batch_size=batch_size, num_workers=num_workers, pin_memory=device.type == "cuda")
    features = []
    for batch in progress_bar(batches, desc="FID features", unit="batch", enabled=progress):
        x = batch.to(device, non_blocking=True).float().div(255)
        x = x.contiguous(memory_format=torch.channels_last)  # same values, ~25% faster convolutions on CPU
        features.append(model(x).double())
    return torch.cat(features)


def compute_statistics(
    images: Images, model: FIDInceptionV3, batch_size: int = 50, num_workers: int = 0, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Mean (dims,) and covariance (dims, dims) of the images' Inception features, float64."""
    features = extract_features(images, model, batch_size, num_workers, progress)
    if len(features) <= model.dims:
        note(
            f"{len(features)} images for {model.dims}-d features: the covariance is singular "
            "(FID is still defined but biased; use more images than dims)"
        )
    return features.mean(0).cpu().numpy(), torch.cov(features.T).cpu().numpy()


def load_statistics(path: str | os.PathLike, dims: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`mu`, `sigma` of an .npz file, checked for shape (and for `dims` when given)."""
    try:
        with np.load(path) as f:
            mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot read statistics (mu, sigma) from {path}: {err}") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise UserError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not (D,) and (D, D)")
    if dims is not None and len(mu) != dims:
        raise UserError(f"{path} holds {len(mu)}-d statistics, not {dims}-d (--dims)")
    return mu, sigma


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write `mu`, `sigma` to an .npz (atomically), readable by `load_statistics` and pytorch-fid."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise UserError(f"statistics are saved as .npz, not {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma)
    os.replace(tmp, path)


def default_cache_dir() -> Path:
    """$FID_CACHE_DIR, else ~/.cache/maskgit_fid (or under $XDG_CACHE_HOME)."""
    if os.environ.get("FID_CACHE_DIR"):
        return Path(os.environ["FID_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "maskgit_fid"


def _content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in [path] if path.is_file() else list_images(path):
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def cached_statistics(
    path: str | os.PathLike,
    images: Images,
    model: FIDInceptionV3,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 50,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """`compute_statistics` of the folder or CSV at `path` (opened as `images`), through a cache in
    `cache_dir` (default `default_cache_dir()`) keyed by the content, dims, weights hash and the
    device's numerics (TF32 on CUDA changes the features slightly)."""
    if model.weights_sha256 is None:  # random weights: nothing worth caching
        return compute_statistics(images, model, batch_size, num_workers, progress)
    path = Path(path)
    key = f"{_content_hash(path)} {model.dims} {model.weights_sha256} {STATS_VERSION}"
    facts = numerics(next(model.parameters()).device)
    if facts:
        key += " " + json.dumps(facts, sort_keys=True)
    name = f"{path.name}-{model.dims}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    file = Path(cache_dir or default_cache_dir()) / name
    if file.is_file():
        return load_statistics(file, model.dims)
    mu, sigma = compute_statistics(images, model, batch_size, num_workers, progress)
    save_statistics(file, mu, sigma)
    return mu, sigma
