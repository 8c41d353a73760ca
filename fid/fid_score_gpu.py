"""Frechet Inception Distance between generated and ground-truth images, with pytorch-fid's network.

    python fid/fid_score_gpu.py --predicted-path test_results --gtcsv-path test_gt.csv --device cuda:0

Each side is a folder of images, a lab-style CSV (header row, one S*S*3 HWC row per image) or an
.npz of statistics (`mu`, `sigma`, as written by --save-stats or pytorch-fid). Statistics of a
ground-truth folder or CSV are cached, keyed by its content, --dims and the weights, so a sweep
computes them once. From Python: `from fid import compute_fid`.
"""
from __future__ import annotations

from common import DEFAULT_NUM_WORKERS, ArgumentParser, UserError, check_minimum, resolve_device, run_cli, spelled
from fid.inception import DIMS
from fid.score import compute_fid


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predicted-path", help="generated images: folder, CSV or .npz of statistics")
    parser.add_argument(*spelled("--gt-path"), dest="gt_path", required=True,
                        help="ground truth: folder, lab CSV (--gtcsv-path is the lab's name) or .npz of statistics")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--cpu-fallback", action="store_true", help="run on the CPU when CUDA is asked for but missing")
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception batch (default: 50)")
    parser.add_argument("--num-workers", type=int, default=DEFAULT_NUM_WORKERS,
                        help="data loading processes for image folders (default: %(default)s)")
    parser.add_argument("--dims", type=int, default=2048, choices=DIMS, help="which Inception features")
    parser.add_argument("--inception-weights", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                        "(default: $FID_INCEPTION_WEIGHTS, then torch's hub cache)")
    parser.add_argument("--save-stats", metavar="PATH.npz", help="also write the ground-truth statistics here; "
                        "without --predicted-path, only do that")
    parser.add_argument("--cache-dir", help="ground-truth statistics cache (default: $FID_CACHE_DIR or "
                        "~/.cache/maskgit_fid)")
    parser.add_argument("--overwrite", action="store_true", help="let --save-stats replace a file that holds "
                        "something other than FID statistics")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the statistics cache")
    args = parser.parse_args(argv)
    if args.predicted_path is None and args.save_stats is None:
        raise UserError("give --predicted-path (or --save-stats PATH.npz to only save the ground-truth statistics)")
    check_minimum(args, 1, "--batch-size")
    check_minimum(args, 0, "--num-workers")
    value = compute_fid(
        args.predicted_path, args.gt_path, dims=args.dims, device=resolve_device(args.device, args.cpu_fallback),
        batch_size=args.batch_size, num_workers=args.num_workers, weights=args.inception_weights,
        cache=not args.no_cache, cache_dir=args.cache_dir, save_stats=args.save_stats,
        overwrite=args.overwrite,
    )
    if value is None:
        print(f"saved ground-truth statistics to {args.save_stats}")
    else:
        print(f"FID: {value}")


if __name__ == "__main__":
    run_cli(main)
