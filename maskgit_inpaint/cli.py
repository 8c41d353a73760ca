"""The command-line flags inpainting.py and scripts/sweep.py share, and their checks."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from common import UserError, check_minimum, resolve_path
from data import FITS
from maskgit_inpaint.baselines import BASELINES  # noqa: F401 (for the scripts' --baseline)
from maskgit_inpaint.settings import (
    BATCH_SIZE,
    BLENDS,
    DEFAULT_CONFIG,
    DEFAULT_MASKED,
    DEFAULT_MASKS,
    DEFAULT_TRANSFORMER,
    ENCODE_FILLS,
    SAMPLE_TEMPERATURE,
    Decoding,
    check_temperatures,
)
from models.maskgit import PRECISIONS, READOUTS
from models.schedules import SCHEDULERS


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors: one line and exit code 2, like every bad input."""

    def error(self, message: str):
        raise UserError(message)


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared with scripts/sweep.py: model, data, device and sampling."""
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--cpu-fallback", action="store_true", help="use the CPU when the CUDA device asked for is missing")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"images per batch (default: {BATCH_SIZE['cuda']} on CUDA, {BATCH_SIZE['cpu']} on the CPU)")
    p.add_argument("--partial", type=float, default=1.0, help="fraction of the test set to use (the first ones)")
    p.add_argument("--num_workers", "--num-workers", dest="num_workers", type=int,
                   default=min(4, (os.cpu_count() or 2) // 2), help="data loading processes")
    p.add_argument("--load-transformer-ckpt-path", default=DEFAULT_TRANSFORMER,
                   help="transformer: an exported folder, which carries its config and names its VQGAN, or a plain "
                        ".pt (the lab's) with --MaskGitConfig (default: %(default)s)")
    p.add_argument("--MaskGitConfig", default=None,
                   help=f"with a plain .pt transformer: its MaskGit YAML config, which names the VQGAN files "
                        f"(default: {DEFAULT_CONFIG})")
    p.add_argument("--vqgan", "--vqgan-ckpt", dest="vqgan", default=None,
                   help="VQGAN weights (exported folder or .pt, e.g. the lab's VQGAN.pt; default: the one the "
                        "transformer names); one the transformer was not trained on is refused")
    p.add_argument("--test-maskedimage-path", default=DEFAULT_MASKED,
                   help="masked images, hole painted gray (default: %(default)s)")
    p.add_argument("--test-mask-path", default=DEFAULT_MASKS,
                   help="masks paired by sorted name, black = hole (default: %(default)s)")
    p.add_argument("--gt-path", help="ground truth for metrics: folder, lab CSV or (with --image) an image file "
                   "(default: test_gt.csv beside the masked images, if there)")
    p.add_argument("--fit", choices=FITS, default="resize",
                   help="images of another size than the model's: resize them, or take their centre square "
                        "(default: %(default)s); results are also written at the input's size in inpainted/")
    p.add_argument("--mask-hole-white", action="store_true",
                   help="white marks the hole in the masks (diffusers, LaMa; default: black = hole, the lab's); "
                        "masks with transparency are read by their alpha: opaque = hole")
    p.add_argument("--random-seed", type=int, default=0, help="each image's randomness comes from (seed, index)")
    p.add_argument("--choice-temperature", type=float, default=None,
                   help="Gumbel noise on the confidence when choosing tokens to keep (default: the config's)")
    p.add_argument("--sample-temperature", type=float, default=SAMPLE_TEMPERATURE,
                   help="token sampling temperature (0 = argmax) (default: %(default)s)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=Decoding.scheduler,
                   help="which tokens each step keeps: the most confident (MaskGIT) or the next ones in a 2-D "
                        "Halton order (Halton-MaskGIT) (default: %(default)s)")
    p.add_argument("--ring", type=int, default=Decoding.ring,
                   help="also regenerate this many rings of known tokens around the hole, whose encoding saw the "
                        "gray hole (known pixels are still pasted back) (default: %(default)s)")
    p.add_argument("--readout", choices=READOUTS, default=Decoding.readout,
                   help="what the hole decodes: the sampled tokens, or for each the code vector its predicted "
                        "distribution expects (smoother, closer in PSNR) (default: %(default)s)")
    p.add_argument("--encode-fill", choices=ENCODE_FILLS, default=Decoding.encode_fill,
                   help="what the VQGAN encoder sees in the hole: the gray of the input, or the nearest known "
                        "pixel, so the known tokens around the hole look less like a gray edge (default: %(default)s)")
    p.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=Decoding.flip_average,
                   help="also fill the mirror image and average the two results, mirrored back (twice the work; "
                        "smoother, closer in PSNR) (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="the transformer's matrix products: fp32, or bf16 autocast, faster on GPUs and on CPUs with "
                        "AVX512-BF16 or AMX, slower where bf16 is emulated (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--blend", choices=BLENDS, default=Decoding.blend,
                   help="how the decoded hole meets the pasted known pixels: Poisson blending (the decode's "
                        "gradients, no colour seam at the hole's edge) or none (default: %(default)s)")
    p.add_argument("--no-paste", action="store_true",
                   help="write the raw VQGAN decode (what the lab scored) instead of pasting the known pixels back "
                        "(nothing is blended)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_common_arguments(args: argparse.Namespace) -> None:
    """Ranges of the flags of add_common_arguments."""
    check_minimum(args, 1, "--batch-size")
    check_minimum(args, 0, "--num_workers")
    check_temperatures(args.choice_temperature, args.sample_temperature)
    if args.ring < 0:
        raise UserError(f"--ring must be at least 0, got {args.ring}")


def default_gt_path(args: argparse.Namespace) -> Path | None:
    """--gt-path, else test_gt.csv beside the masked-image folder (the dataset's), else None."""
    if args.gt_path is not None:
        return resolve_path(args.gt_path)
    beside = resolve_path(args.test_maskedimage_path).parent / "test_gt.csv"
    return beside if beside.is_file() else None


def input_paths(args: argparse.Namespace) -> list[Path]:
    """The files and folders a run reads images from, found as the run finds them."""
    single = getattr(args, "image", None) is not None
    paths = [args.image, args.mask] if single else [args.test_maskedimage_path, args.test_mask_path]
    return [resolve_path(p) for p in [*paths, args.gt_path, args.load_transformer_ckpt_path, args.vqgan]
            if p is not None]
