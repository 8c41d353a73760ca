"""Benchmark fid/: the Frechet distance on 2048-d statistics against the pytorch-fid formula with
scipy.linalg.sqrtm (the baseline, written below), and Inception feature extraction in images/s.
Writes the `## FID` section of BENCHMARKS.md.

    python bench/bench_fid.py                  # CPU, machine-default threads
    python bench/bench_fid.py --device cuda    # the distance and the features on the GPU too

Thread counts follow torch/numpy defaults; set OMP_NUM_THREADS / MKL_NUM_THREADS /
OPENBLAS_NUM_THREADS in the environment to pin them (recorded in the output).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy
import scipy.linalg
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fid import FIDInceptionV3, extract_features, frechet_distance

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def baseline_frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Baseline: the pytorch-fid / lab formula, a general matrix square root of S1 S2 with scipy."""
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def synthetic_statistics(dims: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two well-conditioned, correlated covariances, like those of two feature sets: S = A A^T / (2d)
    with A (d, 2d) Gaussian has eigenvalues in about [0.09, 2.9]."""
    gen = torch.Generator().manual_seed(seed)
    a1 = torch.randn(dims, 2 * dims, generator=gen, dtype=torch.float64)
    a2 = a1 + 0.5 * torch.randn(dims, 2 * dims, generator=gen, dtype=torch.float64)
    mu1, mu2 = torch.randn(2, dims, generator=gen, dtype=torch.float64) * 0.1
    return mu1.numpy(), (a1 @ a1.T / (2 * dims)).numpy(), mu2.numpy(), (a2 @ a2.T / (2 * dims) / 1.25).numpy()


def timed(fn, device: torch.device) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result) of fn(). On a shared machine the CPU time
    is the steadier figure: it leaves out the time other processes held the cores."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def distance_breakdown(sigma1: np.ndarray, sigma2: np.ndarray, device: torch.device) -> dict[str, float]:
    """Where frechet_distance spends its time: the same steps, timed one by one (wall seconds)."""
    s1, s2 = (torch.as_tensor(s, device=device) for s in (sigma1, sigma2))
    times = {}
    times["cholesky"], _, (factor, _) = timed(lambda: torch.linalg.cholesky_ex(s1), device)
    times["2 matmuls"], _, product = timed(lambda: factor.T @ s2 @ factor, device)
    times["eigvalsh"], _, _ = timed(lambda: torch.linalg.eigvalsh(product), device)
    return times


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_distance(args: argparse.Namespace, device: torch.device) -> list[str]:
    mu1, s1, mu2, s2 = synthetic_statistics(args.dims, seed=0)
    ours, base, parts = [], [], []
    for run in range(args.repeats):  # interleaved, so machine load hits both alike
        *t, value = timed(lambda: frechet_distance(mu1, s1, mu2, s2, device), device)
        ours.append(t)
        *t, reference = timed(lambda: baseline_frechet(mu1, s1, mu2, s2), torch.device("cpu"))
        base.append(t)
        parts.append(distance_breakdown(s1, s2, device))
        print(f"run {run + 1}: ours {ours[-1][0]:.3f} s, sqrtm {base[-1][0]:.3f} s (wall)", file=sys.stderr)
    rel = abs(value - reference) / abs(reference)
    ours_wall, ours_cpu = (statistics.median(t[i] for t in ours) for i in (0, 1))
    base_wall, base_cpu = (statistics.median(t[i] for t in base) for i in (0, 1))
    cpu_ratio = f", {base_cpu / ours_cpu:.1f}x CPU time" if device.type == "cpu" else ""
    breakdown = ", ".join(f"{k} {statistics.median(p[k] for p in parts):.3f} s" for k in parts[0])
    return [
        f"| Frechet distance, {args.dims}-d, {device.type} (median of {args.repeats}) | {ours_wall:.3f} s "
        f"(CPU time {ours_cpu:.3f} s) | {base_wall:.3f} s (CPU time {base_cpu:.3f} s) "
        f"| **{base_wall / ours_wall:.1f}x** wall{cpu_ratio} |",
        "",
        f"- Same value: ours {value:.10f}, sqrtm formula {reference:.10f}, relative difference {rel:.1e} "
        f"({'within' if rel <= 1e-6 else 'NOT within'} 1e-6).",
        f"- All runs (wall s), ours: {', '.join(f'{t[0]:.2f}' for t in ours)}; "
        f"sqrtm: {', '.join(f'{t[0]:.2f}' for t in base)}.",
        f"- Where our time goes (wall medians): {breakdown}.",
        f"- Peak RSS after the distance runs: {peak_rss_mib():.0f} MiB.",
    ]


def bench_features(args: argparse.Namespace, device: torch.device) -> list[str]:
    model = FIDInceptionV3(args.dims).eval().requires_grad_(False).to(device)  # random weights: timing only
    images = np.random.default_rng(0).integers(0, 256, (args.n_images, 64, 64, 3), dtype=np.uint8)
    extract_features(images[: args.batch_size], model, args.batch_size, progress=False)  # warm-up
    times = [
        timed(lambda: extract_features(images, model, args.batch_size, progress=False), device)[:2]
        for _ in range(args.feature_repeats)
    ]
    median, cpu = (statistics.median(t[i] for t in times) for i in (0, 1))
    if device.type == "cuda":
        memory = f"; GPU max allocated {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
    else:
        memory = ""
    return [
        f"| Inception features, {args.n_images} 64x64 images, {device.type}, batch {args.batch_size} "
        f"(median of {args.feature_repeats}) | {args.n_images / median:.1f} images/s ({median:.1f} s; "
        f"CPU time {cpu:.1f} s) | — | — |",
        "",
        "- Feature extraction: random weights (the timing does not depend on them); fp32, images resized to "
        f"299x299 as pytorch-fid does. Peak RSS after the feature runs: {peak_rss_mib():.0f} MiB{memory}.",
    ]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = ", ".join(f"{v}={os.environ[v]}" for v in THREAD_VARS if v in os.environ) or "thread env vars unset"
    text = f"{cpu}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()} ({threads})"
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name()}"
    return text


def write_section(lines: list[str]) -> None:
    """Replace (or append) the `## FID` section of BENCHMARKS.md, leaving the other sections alone."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    section = "\n".join(lines).rstrip() + "\n"
    start = text.find("\n## FID\n")
    if start < 0:
        text = text.rstrip() + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[: start + 1] + section + (text[end:] if end >= 0 else "")
    BENCHMARKS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="where ours runs; the sqrtm baseline is always CPU")
    parser.add_argument("--dims", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each distance")
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--feature-repeats", type=int, default=1)
    parser.add_argument("--skip-features", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args()
    device = torch.device(args.device)

    env = " ".join(f"{v}={os.environ[v]}" for v in THREAD_VARS if v in os.environ)
    command = " ".join(filter(None, [env, "python bench/bench_fid.py", *sys.argv[1:]]))
    lines = [
        "## FID",
        "",
        f"`{command}` — {datetime.date.today()}, {machine()}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}.",
        "",
        "| what | this project | baseline: pytorch-fid formula, `scipy.linalg.sqrtm` (CPU) | speed-up |",
        "|---|---|---|---|",
    ]
    distance = bench_distance(args, device)
    features = [] if args.skip_features else bench_features(args, device)
    lines += [distance[0], *features[:1], "", *distance[2:], *features[2:]]
    if args.no_write:
        print("\n".join(lines))
    else:
        write_section(lines)
        print(f"wrote the FID section of {BENCHMARKS}")


if __name__ == "__main__":
    main()
