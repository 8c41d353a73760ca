"""Sweep MaskGIT's decoding settings on one test set: mask functions x total iterations x sweet
spots, with the inpainting metrics, and FID when the Inception weights are on this machine.

    python scripts/sweep.py                               # every mask function, T = 8, S = 1..8
    python scripts/sweep.py --mask-funcs cosine linear --total-iters 8 12 --sweet-spots 4 6 8 12 --partial 0.25

Writes OUT_DIR/sweep.csv (one row per setting, rewritten after each one) and OUT_DIR/sweep.png
(each metric vs sweet spot, one line per mask function and T). The model and the data are loaded
once; the runs go through maskgit_inpaint's decode path (decode_holes, as inpaint() and app.py do)
in this process.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from common import (
    ArgumentParser,
    UserError,
    check_output_dir,
    progress_bar,
    resolve_device,
    write_csv,
)
from fid import compute_fid, find_weights, load_inception
from fid.inception import WEIGHTS_ENV, WEIGHTS_NAME
from maskgit_inpaint import load_model, model_config, run_inpainting
from maskgit_inpaint.cli import (
    add_common_arguments,
    check_common_arguments,
    decoding_from_args,
    default_gt_path,
    input_paths,
)
from maskgit_inpaint.metrics import result_metrics
from maskgit_inpaint.outputs import save_results
from maskgit_inpaint.preparation import input_files, open_dataset, open_ground_truth
from maskgit_inpaint.settings import default_batch_size
from models.schedules import GAMMA_FUNCTIONS

PLOT_METRICS = ("psnr_hole", "ssim", "l1_hole", "masked_token_accuracy", "fid")


def local_inception_weights(path: str | None) -> Path | None:
    """The FID Inception weights if they are on this machine (never downloads): --inception-weights,
    then $FID_INCEPTION_WEIGHTS (either must exist), then torch's hub cache; None when absent."""
    if path or os.environ.get(WEIGHTS_ENV):
        return find_weights(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME
    return cached if cached.is_file() else None


def setting_dir(mask_func: str, total_iter: int, sweet_spot: int) -> str:
    """The folder (in --out-dir) of one setting's test_results/ with --save-images."""
    return f"{mask_func}_T{total_iter}_S{sweet_spot}"


def plot_sweep(rows: list[dict], path: Path) -> None:
    """One panel per metric: the metric vs sweet spot, one line per (mask function, T)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in PLOT_METRICS if any(m in row for row in rows)]
    curves = list(dict.fromkeys((row["mask_func"], row["total_iter"]) for row in rows))
    colors = {f: f"C{i}" for i, f in enumerate(dict.fromkeys(f for f, _ in curves))}  # one color per mask function
    styles = {t: ("-", "--", ":", "-.")[i % 4] for i, t in enumerate(dict.fromkeys(t for _, t in curves))}  # per T
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for mask_func, total_iter in curves:
            points = sorted((r["sweet_spot"], r[metric]) for r in rows
                            if (r["mask_func"], r["total_iter"]) == (mask_func, total_iter))
            ax.plot(*zip(*points), color=colors[mask_func], linestyle=styles[total_iter], marker="o", markersize=3,
                    label=f"{mask_func} T={total_iter}" if len(styles) > 1 else mask_func)
        ax.set_title(metric)
        ax.set_xlabel("sweet spot")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument("--mask-funcs", nargs="+", default=list(GAMMA_FUNCTIONS), help="mask schedules to compare")
    p.add_argument("--total-iters", nargs="+", type=int, default=[8], help="values of T")
    p.add_argument("--sweet-spots", nargs="+", type=int, default=None,
                   help="values of S (those above a T are skipped for it; default: 1..T)")
    p.add_argument("--out-dir", default="outputs/sweep", help="where sweep.csv and sweep.png go (default: %(default)s)")
    p.add_argument("--save-images", action="store_true",
                   help="also write each setting's test_results/ under OUT_DIR/<func>_T<T>_S<S>/")
    p.add_argument("--inception-weights", help="FID Inception weights (default: $FID_INCEPTION_WEIGHTS, the hub cache)")
    p.add_argument("--no-fid", action="store_true", help="skip FID even when the weights are available")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_common_arguments(args)
    grid = []  # (mask function, T, the sweet spots S <= T to score)
    for mask_func in args.mask_funcs:
        for total_iter in args.total_iters:
            decoding_from_args(args, total_iter=total_iter, mask_func=mask_func)  # checks both
            spots = sorted({s for s in args.sweet_spots or range(1, total_iter + 1) if s <= total_iter})
            if any(s < 1 for s in spots):
                raise UserError(f"--sweet-spots must be at least 1, got {spots}")
            if spots:
                grid.append((mask_func, total_iter, spots))
    if not grid:
        raise UserError("no setting to run: every --sweet-spots value is larger than every --total-iters value")
    writes = ["sweep.csv", "sweep.png"] + [setting_dir(f, t, s) for f, t, spots in grid for s in spots
                                           if args.save_images]
    out_dir = check_output_dir(args.out_dir, "--out-dir", writes, input_paths(args))
    cfg = model_config(args.load_transformer_ckpt_path, args.MaskGitConfig)
    vq = cfg["vqgan"]
    device = resolve_device(args.device, args.cpu_fallback)
    dataset = open_dataset(args.test_maskedimage_path, args.test_mask_path, cfg, args.partial, args.fit,
                           args.mask_hole_white)
    gt_path, gt_note = default_gt_path(args)
    if gt_path is not None and gt_note:
        print(gt_note, file=sys.stderr)
    if gt_path is None:
        raise UserError("the sweep scores against ground truth: pass --gt-path (folder or lab CSV)")
    total = len(getattr(dataset, "dataset", dataset))
    gt = open_ground_truth(gt_path, total, vq["img_resolution"], input_files(dataset))
    weights = None if args.no_fid else local_inception_weights(args.inception_weights)
    inception = None if weights is None else load_inception(weights, device=device)
    if not args.no_fid and inception is None:
        print(f"note: FID skipped: no Inception weights ({WEIGHTS_NAME}) in torch's hub cache; pass "
              f"--inception-weights PATH or set ${WEIGHTS_ENV}", file=sys.stderr)
    model = load_model(cfg, args.load_transformer_ckpt_path, device, args.vqgan, args.precision)
    batch_size = args.batch_size or default_batch_size(device)
    out_dir.mkdir(parents=True, exist_ok=True)

    rows: list[dict] = []
    for mask_func, total_iter, spots in progress_bar(grid, desc="sweep", unit="schedule", enabled=not args.no_progress):
        # one run of max(spots) steps scores every sweet spot: stopping after S steps is its first S steps
        decoding, _ = decoding_from_args(args, total_iter=total_iter, sweet_spot=spots[-1], mask_func=mask_func
                                         ).resolved(mask_func, cfg["choice_temperature"], cfg["num_image_tokens"])
        run = run_inpainting(dataset, model, decoding, vq["mean"], vq["std"], device, batch_size,
                             args.num_workers, gt=gt, progress=False, early_spots=spots)
        for sweet_spot in spots:
            result = run.at_sweet_spot(sweet_spot)
            if args.save_images:
                save_results(out_dir / setting_dir(mask_func, total_iter, sweet_spot), result)
            row = {"mask_func": mask_func, "total_iter": total_iter, "sweet_spot": sweet_spot,
                   **result_metrics(result, gt)}
            if inception is not None and len(result.indices) > 1:
                whole_set = len(result.indices) == total  # then the ground truth's statistics come from fid's cache
                row["fid"] = compute_fid(result.outputs, gt_path if whole_set else gt[result.indices],
                                         model=inception, device=device, progress=False)
            rows.append(row)
            write_csv(rows, out_dir / "sweep.csv")
    plot_sweep(rows, out_dir / "sweep.png")

    best = max(rows, key=lambda r: r["psnr_hole"])
    print(f"{len(rows)} settings on {len(result.indices)} images: {out_dir / 'sweep.csv'}, {out_dir / 'sweep.png'}")
    print(f"best hole PSNR {best['psnr_hole']:.2f} dB: --mask-func {best['mask_func']} "
          f"--total-iter {best['total_iter']} --sweet-spot {best['sweet_spot']}")
    if "fid" in best:
        best_fid = min(rows, key=lambda r: r["fid"])
        print(f"best FID {best_fid['fid']:.2f}: --mask-func {best_fid['mask_func']} "
              f"--total-iter {best_fid['total_iter']} --sweet-spot {best_fid['sweet_spot']}")

