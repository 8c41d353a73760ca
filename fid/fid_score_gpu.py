"""Frechet Inception Distance between generated and ground-truth images, with pytorch-fid's network.

    python fid/fid_score_gpu.py --predicted-path test_results --gtcsv-path test_gt.csv --device cuda:0

Each side is a folder of images, a lab-style CSV (header row, one S*S*3 HWC row per image) or an
.npz of statistics (`mu`, `sigma`, as written by --save-stats or pytorch-fid). Statistics of a
ground-truth folder or CSV are cached, keyed by its content, --dims and the weights, so a sweep
computes them once. From Python: `from fid import compute_fid`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as `python fid/fid_score_gpu.py`: import from the repo root, not fid/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from common import UserError, check_minimum, numerics, resolve_device, run_cli
from data.ground_truth import list_images, read_gt_csv
from data.images import image_size, read_image
from fid.inception import DIMS, FIDInceptionV3, load_inception

STATS_VERSION = 2  # bump when a change alters computed statistics, to invalidate the cache


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


def _note(message: str) -> None:
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
            images = _open_folder(path)
        else:
            raise UserError(f"{path}: not a folder of images, a .csv or an .npz of statistics")
    if len(images) < 2:
        raise UserError(f"{where} has {len(images)} image; FID needs at least 2 (a covariance of 1 is undefined)")
    return images


def _open_folder(path: Path) -> ImageFiles:
    files = list_images(path)
    sizes = [image_size(file) for file in files]  # a damaged file fails here, named, not in a loader worker
    size = Counter(sizes).most_common(1)[0][0]
    odd = sum(s != size for s in sizes)
    if odd:
        _note(f"{odd} of {len(files)} images in {path} are not {size[0]}x{size[1]}; resizing them to that size")
    return ImageFiles(files, size)


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
    for batch in tqdm(batches, desc="FID features", unit="batch", disable=not progress):
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
        _note(
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


def pivoted_cholesky(sigma: torch.Tensor) -> torch.Tensor:
    """A (d, r) factor F of a singular covariance, sigma = F F^T: Cholesky with diagonal pivoting,
    stopped at the numerical rank r (largest remaining diagonal <= d * eps * max diagonal, as
    LAPACK's pstrf). Costs O(d r^2)."""
    d = len(sigma)
    diag = sigma.diagonal().clone()  # diagonal of sigma - F F^T
    tol = d * torch.finfo(sigma.dtype).eps * diag.max()
    factor = torch.zeros_like(sigma)
    rank = 0
    while rank < d:
        p = int(torch.argmax(diag))
        if diag[p] <= tol:
            break
        column = (sigma[:, p] - factor[:, :rank] @ factor[p, :rank]) / diag[p].sqrt()
        factor[:, rank] = column
        diag -= column * column
        diag[p] = 0
        rank += 1
    return factor[:, :rank]


def lower_congruence(sigma: torch.Tensor, lower: torch.Tensor, block: int = 256) -> torch.Tensor:
    """The lower triangle of L^T sigma L for a lower-triangular L (the rest is not filled), by blocks
    that skip L's zeros: about a third of the work of two full matmuls."""
    product = torch.empty_like(sigma)
    for j in range(0, len(lower), block):  # sigma L: columns j.. of L are zero above row j
        product[:, j:j + block] = sigma[:, j:] @ lower[j:, j:j + block]
    out = torch.zeros_like(sigma)
    for i in range(0, len(lower), block):  # rows i.. of L^T (sigma L), up to the diagonal block
        out[i:i + block, :i + block] = lower[i:, i:i + block].T @ product[i:, :i + block]
    return out


def frechet_distance(
    mu1: np.ndarray | torch.Tensor,
    sigma1: np.ndarray | torch.Tensor,
    mu2: np.ndarray | torch.Tensor,
    sigma2: np.ndarray | torch.Tensor,
    device: str | torch.device = "cpu",
) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1^(1/2) S2 S1^(1/2))), in float64 on `device`.

    For any factor F with S1 = F F^T, F^T S2 F is symmetric PSD with the same nonzero eigenvalues as
    S1^(1/2) S2 S1^(1/2) (and as S1 S2), so the trace term is the sum of the square roots of its
    eigenvalues (eigvalsh, negative rounding noise clamped to 0): no iteration, nothing that can fail
    to converge. F is the Cholesky factor of S1; on well-conditioned covariances the result equals
    the scipy.linalg.sqrtm formula to ~1e-12 relative.

    Singular S1 (fewer images than dims, constant features), where Cholesky fails: F comes from
    `pivoted_cholesky` with as many columns as S1's numerical rank, so F^T S2 F is small and the
    result is the distance between the two degenerate Gaussians, with no epsilon added to the
    diagonals (to ~1e-12 relative of an exact SVD of the samples in the tests). scipy's sqrtm is
    less accurate there (~1e-7) and can return complex values; pytorch-fid then takes the real part
    or retries with 1e-6 added to the diagonals.
    """
    mu1, sigma1, mu2, sigma2 = (
        torch.as_tensor(a, dtype=torch.float64, device=device) for a in (mu1, sigma1, mu2, sigma2)
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise UserError(f"statistics do not match: mu {tuple(mu1.shape)} vs {tuple(mu2.shape)}, "
                        f"sigma {tuple(sigma1.shape)} vs {tuple(sigma2.shape)}")
    if not all(torch.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)):
        raise UserError("statistics contain NaN or infinite values")
    factor, info = torch.linalg.cholesky_ex(sigma1)
    if info.item() == 0:
        product = lower_congruence(sigma2, factor)  # eigvalsh reads only the lower triangle
    else:
        factor = pivoted_cholesky(sigma1)
        product = factor.T @ sigma2 @ factor
    eigenvalues = torch.linalg.eigvalsh(product).clamp(min=0)
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * eigenvalues.sqrt().sum())


def _is_npz(source: str | os.PathLike | np.ndarray) -> bool:
    return not isinstance(source, np.ndarray) and Path(source).suffix.lower() == ".npz"


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
    progress: bool = True,
) -> float | None:
    """FID between `predicted` and `ground_truth`: each a folder of images, a lab CSV, an .npz of
    statistics or a uint8 (N, H, W, 3) array. Ground-truth statistics of a folder or CSV are cached
    (unless `cache=False`); `save_stats` also writes them to an .npz. `model` (from `load_inception`)
    saves reloading the weights in a sweep; otherwise they are found as `find_weights(weights)` says.
    With `predicted=None` only the ground-truth statistics are computed (and saved): returns None."""
    device = resolve_device(device)
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
    if pred_images is None:
        mu1, sigma1 = load_statistics(predicted, dims)
    else:
        mu1, sigma1 = compute_statistics(pred_images, model, batch_size, num_workers, progress)
    return frechet_distance(mu1, sigma1, mu2, sigma2, device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predicted-path", help="generated images: folder, CSV or .npz of statistics")
    parser.add_argument("--gt-path", "--gtcsv-path", dest="gt_path", required=True,
                        help="ground truth: folder, lab CSV (--gtcsv-path is the lab's name) or .npz of statistics")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--cpu-fallback", action="store_true", help="run on the CPU when CUDA is asked for but missing")
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception batch (default: 50)")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="data loading processes for image folders (default: CPU cores, at most 8)")
    parser.add_argument("--dims", type=int, default=2048, choices=DIMS, help="which Inception features")
    parser.add_argument("--inception-weights", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                        "(default: $FID_INCEPTION_WEIGHTS, then torch's hub cache)")
    parser.add_argument("--save-stats", metavar="PATH.npz", help="also write the ground-truth statistics here; "
                        "without --predicted-path, only do that")
    parser.add_argument("--cache-dir", help="ground-truth statistics cache (default: $FID_CACHE_DIR or "
                        "~/.cache/maskgit_fid)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the statistics cache")
    args = parser.parse_args(argv)
    if args.predicted_path is None and args.save_stats is None:
        raise UserError("give --predicted-path (or --save-stats PATH.npz to only save the ground-truth statistics)")
    check_minimum(args, 1, "--batch-size")
    check_minimum(args, 0, "--num-workers")
    if args.save_stats is not None and not args.save_stats.lower().endswith(".npz"):
        raise UserError(f"--save-stats must name an .npz file, not {args.save_stats}")
    value = compute_fid(
        args.predicted_path, args.gt_path, dims=args.dims, device=resolve_device(args.device, args.cpu_fallback),
        batch_size=args.batch_size, num_workers=args.num_workers, weights=args.inception_weights,
        cache=not args.no_cache, cache_dir=args.cache_dir, save_stats=args.save_stats,
    )
    if value is None:
        print(f"saved ground-truth statistics to {args.save_stats}")
    else:
        print(f"FID: {value}")


if __name__ == "__main__":
    run_cli(main)
