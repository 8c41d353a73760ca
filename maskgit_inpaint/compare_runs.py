"""Side by side: the same test images as filled by several inpainting runs (the `test_results/`
folders inpainting.py writes, a baseline's included), between the masked input and the ground truth.

    python scripts/compare_runs.py --runs outputs/ns outputs/demo --labels "Navier-Stokes" "MaskGIT" \
        --out docs/compare.png

One row per image (8 by default, spread evenly over the set, as overview.png picks them); columns:
input with its hole gray | each run | ground truth, with each run's hole PSNR on that image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from common import ArgumentParser, UserError, atomic_write, check_destination, check_number, check_readable
from data import list_images, load_ground_truth, read_image
from maskgit_inpaint.metrics import hole_psnr
from maskgit_inpaint.preparation import painted
from maskgit_inpaint.settings import DEFAULT_MASKED, DEFAULT_MASKS


def read_run(folder: Path, count: int, size: int) -> np.ndarray:
    """A run's test_results/image_{i:03d}.png, i < count -> (count, H, W, 3) uint8."""
    files = [folder / "test_results" / f"image_{i:03d}.png" for i in range(count)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{folder}: {len(missing)} of {count} results missing (e.g. {missing[0]}); "
                        "compare runs over the whole set")
    return np.stack([read_image(f, "RGB", size) for f in files])


SOFTWARE = "scripts/compare_runs.py"  # the PNG's Software entry: a figure this script may replace
DEFAULT_NAME = "compare.png"  # the figure's name when --out is a folder


def _own_figure(path: Path) -> str | None:
    """None when `path` is a figure this script wrote (its PNG says so), which a rerun replaces."""
    try:
        with Image.open(path) as im:
            if im.info.get("Software") == SOFTWARE:
                return None
    except (OSError, ValueError):
        pass
    return "is not a figure compare_runs.py wrote"


def output_file(out: str, inputs: list[str], overwrite: bool) -> Path:
    """--out: a .png file, or a folder to write compare.png into; checked by check_destination."""
    path = Path(out)
    if path.is_dir():
        path = path / DEFAULT_NAME
    elif path.suffix.lower() != ".png":
        raise UserError(f"--out must be a .png file or a folder, not {out}")
    return check_destination(path, "--out", inputs=inputs, replaceable=_own_figure, overwrite=overwrite)


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="output folders of inpainting.py runs")
    p.add_argument("--labels", nargs="+", help="one column title per run (default: the folder names)")
    p.add_argument("--masked", default=DEFAULT_MASKED, help="the masked inputs the runs filled")
    p.add_argument("--masks", default=DEFAULT_MASKS, help="their masks (black = hole)")
    p.add_argument("--gt-path", default=str(Path(DEFAULT_MASKED).parent / "test_gt.csv"),
                   help="ground truth: lab CSV or folder (default: %(default)s)")
    p.add_argument("--images", type=int, default=8, help="rows (default: %(default)s)")
    p.add_argument("--out", required=True, help=f"the PNG to write, or a folder for {DEFAULT_NAME}")
    p.add_argument("--overwrite", action="store_true", help="replace a file at --out that this script did not write")
    args = p.parse_args(argv)
    check_number(args.images, "--images", minimum=1, integer=True)
    for run in args.runs:
        check_readable(run, "--runs", folder=True)
    check_readable(args.masks, "--masks", folder=True)
    check_readable(args.gt_path, "--gt-path")
    out = output_file(args.out, [*args.runs, args.masked, args.masks, args.gt_path], args.overwrite)
    labels = args.labels or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        raise UserError(f"{len(args.runs)} runs but {len(labels)} labels")
    gt = load_ground_truth(args.gt_path)
    size = gt.shape[1]
    masks = list_images(args.masks)  # in the order of the ground truth: numbers in names counted as numbers
    if len(masks) != len(gt):
        raise UserError(f"{args.masks} holds {len(masks)} masks but {args.gt_path} {len(gt)} images")
    holes = np.stack([read_image(m, "L", size) < 128 for m in masks])
    runs = [read_run(Path(r), len(gt), size) for r in args.runs]
    picks = np.linspace(0, len(gt) - 1, min(args.images, len(gt))).round().astype(int)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["input", *labels, "ground truth"]
    fig, axes = plt.subplots(len(picks), len(columns), figsize=(1.3 * len(columns), 1.35 * len(picks)),
                             squeeze=False)
    for row, i in enumerate(picks):
        cells = [painted(gt[i], holes[i]), *(run[i] for run in runs), gt[i]]
        for col, (ax, cell) in enumerate(zip(axes[row], cells)):
            ax.imshow(cell, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if 0 < col <= len(runs):
                ax.set_xlabel(f"{hole_psnr(cell, gt[i], holes[i]):.1f} dB", fontsize=7, labelpad=1)
            if row == 0:
                ax.set_title(columns[col], fontsize=7)
    fig.tight_layout(pad=0.3)
    with atomic_write(out) as tmp:
        fig.savefig(tmp, dpi=100, metadata={"Software": SOFTWARE})
    plt.close(fig)
    print(f"wrote {out}: {len(picks)} images x {len(runs)} runs")

