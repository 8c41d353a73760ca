"""FID: the Frechet distance of this project against the pytorch-fid formula with scipy.linalg.sqrtm,
on the same 2048-d statistics, measured side by side; and Inception feature extraction in images/s.

    python -m bench.bench_fid --device cpu --threads 1 --write
    python -m bench.bench_fid --device cuda --write
    python -m bench.bench_fid --device cpu --profile

lab-style (the baseline, written here): pytorch-fid's calculate_frechet_distance, a general matrix
square root of S1 S2 with scipy.linalg.sqrtm (numpy, CPU, float64), retried with 1e-6 on the
diagonals when it is not finite, real part taken.
project: fid.frechet_distance, float64 torch on --device: a factor F of S1 (Cholesky; pivoted and
cut at the rank when S1 is singular), then the sum of the square roots of the eigenvalues
(eigvalsh) of the symmetric F^T S2 F (only its lower triangle, by blocks, when F is triangular).

Both compute the distance between the same two seeded 2048-d Gaussians (the parent checks that
the values agree to 1e-6 relative), in two cases: well-conditioned covariances, and the singular
ones of 401 samples (this project's test set has 401 images, fewer than 2048 dims). Each variant
runs in its own child process, set up and warmed up once; the timed runs alternate between them.
Another child times fid.extract_features on --images random 64x64 images with random Inception
weights (the speed does not depend on the weights' values).
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from bench.harness import (
    VARIANTS,
    interleave,
    machine_summary,
    markdown_table,
    median,
    memory_table,
    peak_memory,
    profile_table,
    serve,
    set_threads,
    speedup_text,
    start_children,
    stopwatch,
    update_section,
)
from common import resolve_device, run_cli
from fid import FIDInceptionV3, extract_features, frechet_distance
from fid.frechet import lower_congruence, pivoted_cholesky

GOAL = {"cpu": 10.0}
FEATURES = "features"
TEST_IMAGES = 401  # the Twemoji test set
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def lab_style_frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The baseline: pytorch-fid's formula, a general matrix square root of S1 S2 with scipy."""
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


Statistics = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def synthetic_statistics(dims: int, seed: int = 0) -> Statistics:
    """Two correlated, well-conditioned covariances like those of two large feature sets:
    S = A A^T / (2d) with A a (d, 2d) Gaussian matrix has eigenvalues in about [0.09, 2.9]."""
    gen = torch.Generator().manual_seed(seed)
    a1 = torch.randn(dims, 2 * dims, generator=gen, dtype=torch.float64)
    a2 = a1 + 0.5 * torch.randn(dims, 2 * dims, generator=gen, dtype=torch.float64)
    mu1, mu2 = 0.1 * torch.randn(2, dims, generator=gen, dtype=torch.float64)
    return mu1.numpy(), (a1 @ a1.T / (2 * dims)).numpy(), mu2.numpy(), (a2 @ a2.T / (2.5 * dims)).numpy()


def sample_statistics(dims: int, samples: int = TEST_IMAGES, seed: int = 0) -> Statistics:
    """Statistics of two sets of `samples` non-negative (post-ReLU-like) feature vectors: with fewer
    samples than dims both covariances are singular (rank samples - 1), as for this project's test set."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dims, dims, generator=gen, dtype=torch.float64) / dims**0.5
    mixing *= torch.exp(-torch.arange(dims, dtype=torch.float64) / 300)
    stats = []
    for shift in (0.0, 0.05):
        x = (torch.randn(samples, dims, generator=gen, dtype=torch.float64) @ mixing.T + shift).clamp(min=0)
        stats += [x.mean(0).numpy(), torch.cov(x.T).numpy()]
    return tuple(stats)


CASES = {
    "well-conditioned": synthetic_statistics,
    f"{TEST_IMAGES} samples (singular)": sample_statistics,
}


def distance_steps(sigma1: np.ndarray, sigma2: np.ndarray, device: torch.device) -> dict[str, float]:
    """Wall seconds of each step of frechet_distance, run one by one: where the project's time goes."""
    s1, s2 = (torch.as_tensor(s, device=device) for s in (sigma1, sigma2))
    with stopwatch(device) as factoring:
        factor, info = torch.linalg.cholesky_ex(s1)
        if info.item() != 0:
            factor = pivoted_cholesky(s1)
    with stopwatch(device) as congruence:
        product = lower_congruence(s2, factor) if info.item() == 0 else factor.T @ s2 @ factor
    with stopwatch(device) as eigvalsh:
        torch.linalg.eigvalsh(product)
    names = ("Cholesky", "L^T S2 L") if info.item() == 0 else ("Cholesky attempt + pivoted Cholesky", "F^T S2 F")
    return {names[0]: factoring["seconds"], names[1]: congruence["seconds"], "eigvalsh": eigvalsh["seconds"]}


def distance_fn(variant: str, stats: tuple[np.ndarray, ...], device: torch.device) -> Callable[[], float]:
    if variant == "lab-style":
        return partial(lab_style_frechet, *stats)
    return partial(frechet_distance, *stats, device)


def worker(args: argparse.Namespace) -> None:
    """One child process: set up, warm up, then one timed run per request."""
    device = torch.device("cpu") if args.worker == "lab-style" else torch.device(args.device)
    set_threads(args.threads)
    if args.worker == FEATURES:
        model = FIDInceptionV3().eval().requires_grad_(False).to(device)
        images = np.random.default_rng(0).integers(0, 256, (args.images, 64, 64, 3), dtype=np.uint8)
        extract_features(images[:args.batch_size], model, args.batch_size, progress=False)

        def measure() -> dict:
            with stopwatch(device) as times:
                extract_features(images, model, args.batch_size, progress=False)
            return {**times, "images": args.images, **peak_memory(device)}
    else:
        distance_fn(args.worker, CASES[args.case](64), device)()  # warm-up: libraries loaded
        stats = CASES[args.case](args.dims)
        run = distance_fn(args.worker, stats, device)

        def measure() -> dict:
            with stopwatch(device) as times:
                value = run()
            steps = distance_steps(stats[1], stats[3], device) if args.worker == "project" else {}
            return {**times, "value": value, "steps": steps, **peak_memory(device)}

    serve(measure)


def profile(args: argparse.Namespace, device: torch.device) -> None:
    """Print torch.profiler's top operators of the project's distance and of one feature batch."""
    set_threads(args.threads)
    for case, statistics in CASES.items():
        run = distance_fn("project", statistics(args.dims), device)
        run()
        print(f"\nfrechet_distance, {args.dims}-d, {case}:\n{profile_table(run, device)}")
    model = FIDInceptionV3().eval().requires_grad_(False).to(device)
    images = np.random.default_rng(0).integers(0, 256, (args.batch_size, 64, 64, 3), dtype=np.uint8)
    extract = partial(extract_features, images, model, args.batch_size, progress=False)
    extract()
    print(f"\nextract_features, one batch of {args.batch_size}:\n{profile_table(extract, device)}")


def command_line(args: argparse.Namespace, device: torch.device) -> str:
    flags = [f"--device {device.type}", f"--dims {args.dims}", f"--images {args.images}", f"--batch-size "
             f"{args.batch_size}", f"--repeats {args.repeats}", f"--feature-repeats {args.feature_repeats}"]
    flags += [f"--threads {args.threads}"] if args.threads else []
    return "python -m bench.bench_fid " + " ".join(flags)


def distance_table(args: argparse.Namespace, device: torch.device, child_args: list[str]) -> tuple[list, str, dict]:
    """Both variants on each case of statistics, in alternation: table rows, verdicts and results."""
    rows, text, all_results = [], [], {v: [] for v in VARIANTS}
    methods = {
        "lab-style": "lab-style (baseline): `scipy.linalg.sqrtm(S1 S2)`, numpy float64, CPU",
        "project": f"project: `fid.frechet_distance`, torch float64, {device.type}",
    }
    for case in CASES:
        variants = {v: [*child_args, "--worker", v, "--case", case] for v in VARIANTS}
        with start_children(Path(__file__).resolve(), variants) as children:
            results = interleave(args.repeats, VARIANTS, lambda v: children[v].measure())
        rows += [[case, methods[v], f"{median([r['seconds'] for r in runs]):.3g}",
                  ", ".join(f"{r['seconds']:.3g}" for r in runs), f"{median([r['cpu_seconds'] for r in runs]):.3g}"]
                 for v, runs in results.items()]
        project, lab = results["project"][0]["value"], results["lab-style"][0]["value"]
        rel = abs(project - lab) / abs(lab)
        steps = ", ".join(f"{k} {median([r['steps'][k] for r in results['project']]):.3g} s"
                          for k in results["project"][0]["steps"])
        text.append(f"**{case}**: {speedup_text(results, device, GOAL.get(device.type))} Same value: project "
                    f"{project:.10g}, lab-style {lab:.10g}, relative difference {rel:.1e} "
                    f"({'within' if rel <= 1e-6 else 'NOT within'} 1e-6). The project's steps (median wall "
                    f"seconds, each run alone): {steps}.")
        for v in VARIANTS:
            all_results[v] += results[v]
    return rows, "\n\n".join(text), all_results


def benchmark(args: argparse.Namespace, device: torch.device) -> None:
    """Run the distances in alternation, then the features; print the tables and, with --write,
    update the FID block of BENCHMARKS.md."""
    machine = machine_summary(device, args.threads)
    if args.threads:  # scipy's BLAS reads these when the children import it
        os.environ.update({var: str(args.threads) for var in THREAD_VARS})
    child_args = ["--device", str(device), "--dims", str(args.dims), "--images", str(args.images),
                  "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    rows, verdicts, results = distance_table(args, device, child_args)
    distance = markdown_table(["statistics", "variant", "seconds (median)", "seconds (each run)",
                               "CPU seconds (median)"], rows)
    with start_children(Path(__file__).resolve(), {FEATURES: [*child_args, "--worker", FEATURES]}) as children:
        features = [children[FEATURES].measure() for _ in range(args.feature_repeats)]
    rates = [r["images"] / r["seconds"] for r in features]
    extraction = markdown_table(
        ["images", "batch", "images/s (median)", "images/s (each run)", "CPU seconds (median)"],
        [[args.images, args.batch_size, f"{median(rates):.3g}", ", ".join(f"{x:.3g}" for x in rates),
          f"{median([r['cpu_seconds'] for r in features]):.3g}"]])
    memory = memory_table({**results, "project: feature extraction": features}, device)
    title = f"{device.type.upper()}, {args.dims}-d statistics, {args.images} 64x64 images"
    print(f"\n{title}\n{machine}\n\n{distance}\n\n{verdicts}\n\n{extraction}\n\n{memory}")

    if args.write:
        note = f" {args.note}" if args.note else ""
        update_section("FID", f"bench_fid {device.type}", f"### {title}\n\nMachine: {machine}.{note}\n\n"
                       f"Command: `{command_line(args, device)} --write`\n\n"
                       f"Frechet distance:\n\n{distance}\n\n{verdicts}\n\n"
                       f"Feature extraction (`fid.extract_features`, fp32, resized to 299x299, random weights):"
                       f"\n\n{extraction}\n\nPeak memory of each child process:\n\n{memory}")
        print("\nBENCHMARKS.md updated")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dims", type=int, default=2048, help="statistics' dimension (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed distances of each variant (default: %(default)s)")
    p.add_argument("--images", type=int, default=1000, help="images for feature extraction (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=50, help="feature extraction batch (default: %(default)s)")
    p.add_argument("--feature-repeats", type=int, default=1, help="timed feature runs (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per child (default: the libraries' choice)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top operators instead of timing")
    p.add_argument("--write", action="store_true", help="update this benchmark's block of BENCHMARKS.md")
    p.add_argument("--note", default="", help="a sentence added to the BENCHMARKS.md block (e.g. machine load)")
    p.add_argument("--worker", choices=[*VARIANTS, FEATURES], help=argparse.SUPPRESS)
    p.add_argument("--case", choices=list(CASES), default=next(iter(CASES)), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    device = resolve_device(args.device)
    if args.profile:
        profile(args, device)
    else:
        benchmark(args, device)


if __name__ == "__main__":
    run_cli(main)
