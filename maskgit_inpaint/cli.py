"""The command-line flags inpainting.py and scripts/sweep.py share, and their checks. The decoding
flags are made from the fields of settings.Decoding, which own their defaults and help."""
from __future__ import annotations

import argparse
from collections.abc import Collection
from dataclasses import fields
from pathlib import Path

from common import DEFAULT_NUM_WORKERS, check_minimum, check_readable, resolve_path, spelled
from data import FITS
from maskgit_inpaint.settings import (
    BATCH_SIZE,
    DEFAULT_MASKED,
    DEFAULT_MASKS,
    DEFAULT_TRANSFORMER,
    Decoding,
)
from models.maskgit import PRECISIONS
from models.pretrained import DEFAULT_CONFIG

SCHEDULE_FIELDS = ("method", "total_iter", "sweet_spot", "mask_func")  # inpainting.py's; the sweep has grids instead


def add_decoding_arguments(p: argparse.ArgumentParser, skip: Collection[str] = (),
                           only: Collection[str] | None = None) -> None:
    """One flag per field of Decoding (those in `only`, but those in `skip`), dest = the field's name,
    default = its default."""
    for f in fields(Decoding):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        kwargs = {k: v for k, v in f.metadata.items() if k not in ("flags", "boolean")}
        if f.metadata.get("boolean"):
            kwargs["action"] = argparse.BooleanOptionalAction
        p.add_argument(*f.metadata["flags"], dest=f.name, default=f.default, **kwargs)


def decoding_from_args(args: argparse.Namespace, **overrides: object) -> Decoding:
    """The Decoding the flags of add_decoding_arguments give, with `overrides` (e.g. a sweep's grid point)."""
    given = {f.name: getattr(args, f.name) for f in fields(Decoding) if hasattr(args, f.name)}
    return Decoding(**{**given, **overrides})


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared with scripts/sweep.py: model, data, device and sampling."""
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--cpu-fallback", action="store_true", help="use the CPU when the CUDA device asked for is missing")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"images per batch (default: {BATCH_SIZE['cuda']} on CUDA, {BATCH_SIZE['cpu']} on the CPU)")
    p.add_argument("--partial", type=float, default=1.0, help="fraction of the test set to use (the first ones)")
    p.add_argument(*spelled("--num-workers"), dest="num_workers", type=int, default=DEFAULT_NUM_WORKERS,
                   help="data loading processes (default: %(default)s)")
    p.add_argument("--load-transformer-ckpt-path", default=DEFAULT_TRANSFORMER,
                   help="transformer: an exported folder, which carries its config and names its VQGAN, or a plain "
                        ".pt (the lab's) with --MaskGitConfig (default: %(default)s)")
    p.add_argument("--MaskGitConfig", default=None,
                   help=f"with a plain .pt transformer: its MaskGit YAML config, which names the VQGAN files "
                        f"(default: {DEFAULT_CONFIG})")
    p.add_argument(*spelled("--vqgan"), dest="vqgan", default=None,
                   help="VQGAN weights (exported folder or .pt, e.g. the lab's VQGAN.pt; default: the one the "
                        "transformer names); one the transformer was not trained on is refused")
    p.add_argument("--test-maskedimage-path", default=DEFAULT_MASKED,
                   help="masked images, hole painted gray (default: %(default)s)")
    p.add_argument("--test-mask-path", default=DEFAULT_MASKS,
                   help="masks paired by sorted name, black = hole (default: %(default)s)")
    p.add_argument("--gt-path", help="ground truth for metrics: folder, lab CSV or (with --image) an image file "
                   "(default: test_gt.csv beside the masked images or one or two folders up, if there)")
    p.add_argument("--fit", choices=FITS, default="resize",
                   help="images of another size than the model's: resize them, or take their centre square "
                        "(default: %(default)s); results are also written at the input's size in inpainted/")
    p.add_argument("--mask-hole-white", action="store_true",
                   help="white marks the hole in the masks (diffusers, LaMa; default: black = hole, the lab's); "
                        "masks with transparency are read by their alpha: opaque = hole")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="the transformer's matrix products: fp32, or bf16 autocast, faster on GPUs and on CPUs with "
                        "AVX512-BF16 or AMX, slower where bf16 is emulated (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_decoding_arguments(p, skip=SCHEDULE_FIELDS)


# the flags that name something a run reads, by their argparse names
INPUT_FLAGS = {"image": "--image", "mask": "--mask", "test_maskedimage_path": "--test-maskedimage-path",
               "test_mask_path": "--test-mask-path", "gt_path": "--gt-path", "MaskGitConfig": "--MaskGitConfig",
               "load_transformer_ckpt_path": "--load-transformer-ckpt-path", "vqgan": "--vqgan"}


def inputs_by_flag(args: argparse.Namespace) -> dict[str, Path]:
    """The files and folders a run reads, by flag, found as the run finds them: --image and --mask
    in single-image mode, else the two folders; the flags left unset are left out."""
    single = getattr(args, "image", None) is not None
    unread = {"test_maskedimage_path", "test_mask_path"} if single else {"image", "mask"}
    return {flag: resolve_path(value) for name, flag in INPUT_FLAGS.items()
            if name not in unread and (value := getattr(args, name, None)) is not None}


def check_common_arguments(args: argparse.Namespace) -> None:
    """Ranges of the flags of add_common_arguments (the decoding flags are checked by Decoding), and
    that every input that exists can be read: one line naming the flag, not a PermissionError
    (a missing input gets its own message where it is opened)."""
    check_minimum(args, 1, "--batch-size")
    check_minimum(args, 0, "--num_workers")
    decoding_from_args(args)
    for flag, path in inputs_by_flag(args).items():
        if path.exists():
            check_readable(path, flag)


GT_NAME = "test_gt.csv"


def default_gt_path(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    """--gt-path, else the lab's test_gt.csv where lab users keep it: beside the masked images, or
    one or two folders up (dataset/test_gt.csv, test_gt.csv beside dataset/); and the line that says
    which file was taken or where it looked (None with --gt-path), for the run to print once its
    inputs are checked."""
    if args.gt_path is not None:
        return resolve_path(args.gt_path), None
    masked = resolve_path(args.test_maskedimage_path)
    places = [masked, masked.parent, masked.parent.parent]
    for folder in places:
        if (folder / GT_NAME).is_file():
            return folder / GT_NAME, (f"ground truth: {folder / GT_NAME} (found beside the masked images; "
                                      "--gt-path chooses another)")
    return None, (f"note: no {GT_NAME} in {', '.join(str(p) for p in dict.fromkeys(places))}: pass --gt-path "
                  "(a lab CSV or a folder of images) for metrics")


def input_paths(args: argparse.Namespace) -> list[Path]:
    """The files and folders a run reads images and weights from (`inputs_by_flag` less the config),
    for the check that outputs do not overlap them."""
    return [path for flag, path in inputs_by_flag(args).items() if flag != "--MaskGitConfig"]
