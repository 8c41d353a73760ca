"""The inpainting command line (`main`, which inpainting.py runs) and the flags the sweep
(maskgit_inpaint.sweep) shares with it, and their checks. The decoding flags are made from the
fields of settings.Decoding, which own their defaults and help."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection
from dataclasses import fields
from pathlib import Path

import torch
from torch.utils.data import Subset

from common import (
    DEFAULT_NUM_WORKERS,
    ArgumentParser,
    UserError,
    check_minimum,
    check_output_dir,
    check_readable,
    resolve_device,
    resolve_path,
    spelled,
)
from data import FITS, MASK_KINDS, normalize
from maskgit_inpaint.figures import save_overview
from maskgit_inpaint.loading import load_config, load_model, model_config
from maskgit_inpaint.metrics import result_metrics
from maskgit_inpaint.outputs import OUTPUTS, clear_outputs, folder_originals, save_named
from maskgit_inpaint.pipeline import run_inpainting
from maskgit_inpaint.preparation import input_files, open_dataset, open_ground_truth, prepare_image
from maskgit_inpaint.settings import (
    BATCH_SIZE,
    DEFAULT_MASKED,
    DEFAULT_MASKS,
    DEFAULT_TRANSFORMER,
    Decoding,
    default_batch_size,
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


DESCRIPTION = ("Inpainting with MaskGIT: fill the holes of a test set, or of one image, by iterative parallel\n"
               "decoding, and score the results against the ground truth.")  # inpainting.py --help


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    add_decoding_arguments(p, only=SCHEDULE_FIELDS)
    p.add_argument("--output-dir", default="outputs/inpainting",
                   help="where test_results/ etc. go (default: %(default)s)")
    p.add_argument("--save-history", action="store_true",
                   help="also write steps/test_{i}.png (a labelled figure of every step), mask_scheduling/test_{i}.png "
                        "and imga/test_{i}.png (slower)")
    p.add_argument("--image", help="single-image mode: the image to inpaint")
    p.add_argument("--mask", help="with --image: its mask (black = hole; see --mask-hole-white)")
    p.add_argument("--mask-kind", help=f"with --image (a clean one): generate a mask: {', '.join(MASK_KINDS)}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_common_arguments(args)
    baseline = None if args.method == "maskgit" else args.method
    if args.image is None and (args.mask or args.mask_kind):
        raise UserError("--mask and --mask-kind go with --image")
    if args.image is not None and (args.mask is None) == (args.mask_kind is None):
        raise UserError("--image needs exactly one of --mask FILE or --mask-kind KIND")
    if baseline and args.save_history:
        raise UserError("--save-history shows MaskGIT's steps; the baseline has none")
    out_dir = check_output_dir(args.output_dir, "--output-dir", OUTPUTS, input_paths(args))
    if baseline and (args.MaskGitConfig or not resolve_path(args.load_transformer_ckpt_path).exists()):
        cfg = load_config(args.MaskGitConfig or DEFAULT_CONFIG)  # a baseline uses no model, only the image size
    else:
        cfg = model_config(args.load_transformer_ckpt_path, args.MaskGitConfig)
    decoding, note = decoding_from_args(args).resolved(cfg["gamma_type"], cfg["choice_temperature"],
                                                       cfg["num_image_tokens"])
    if note:
        print(f"warning: {note}", file=sys.stderr)
    device = resolve_device(args.device, args.cpu_fallback)
    vq = cfg["vqgan"]

    if args.image is not None:
        prepared = prepare_image(resolve_path(args.image), None if args.mask is None else resolve_path(args.mask),
                                 vq["img_resolution"], fit=args.fit, hole_white=args.mask_hole_white,
                                 mask_kind=args.mask_kind, seed=args.seed, name=Path(args.image).name)
        dataset = [(normalize(prepared.pixels, vq["mean"], vq["std"]), torch.from_numpy(prepared.model_hole)[None], 0)]
        gt = None if prepared.clean is None else prepared.clean[None]
        gt_path = None if args.gt_path is None else resolve_path(args.gt_path)
        inputs = {"image": args.image, "mask": args.mask, "mask_kind": args.mask_kind}
        total, names, gt_note = 1, None, None
    else:
        dataset = open_dataset(args.test_maskedimage_path, args.test_mask_path, cfg, args.partial, args.fit,
                               args.mask_hole_white)
        gt, (gt_path, gt_note), names = None, default_gt_path(args), input_files(dataset)
        inputs = {"masked_images": args.test_maskedimage_path, "masks": args.test_mask_path, "partial": args.partial}
        total = len(dataset.dataset) if isinstance(dataset, Subset) else len(dataset)
    if gt_path is not None:
        gt = open_ground_truth(gt_path, total, vq["img_resolution"], names)

    model = None if baseline else load_model(cfg, args.load_transformer_ckpt_path, device, args.vqgan,
                                                  args.precision)
    if gt_note:
        print(gt_note, file=sys.stderr)
    removed = clear_outputs(out_dir)
    if removed:
        print(f"removed {removed} files of an earlier run from {out_dir}", file=sys.stderr)
    batch_size = args.batch_size or default_batch_size(device)
    result = run_inpainting(dataset, model, decoding, vq["mean"], vq["std"], device, batch_size, args.num_workers,
                            out_dir, args.save_history, gt, progress=not args.no_progress)
    if args.image is not None:
        names, originals = [Path(args.image).name], [(prepared.original, prepared.hole)]
    else:
        names, originals = folder_originals(dataset, result.indices.tolist(), args.mask_hole_white)
    save_named(out_dir, names, originals, result.outputs, args.fit, decoding.paste)

    title = (f"{baseline} baseline" if baseline
             else f"{decoding.mask_func} T={decoding.total_iter} S={decoding.sweet_spot}")
    save_overview(out_dir / "overview.png", result.inputs, result.outputs,
                  None if gt is None else gt[result.indices], title)
    n = len(result.indices)
    print(f"inpainted {n} image{'s' * (n != 1)} in {result.seconds:.1f} s ({result.images_per_second:.1f} images/s) "
          f"on {device}, batch size {batch_size}")
    written = ["test_results/", "inpainted/", "overview.png"]
    written += ["steps/", "mask_scheduling/", "imga/"] if args.save_history else []
    if gt is not None:
        metrics = result_metrics(result, gt)
        record = {**metrics, "images": n, "seconds": result.seconds, "settings": {
            **decoding.settings(), **inputs, "gt_path": None if gt_path is None else str(gt_path),
            "config": args.MaskGitConfig,
            "transformer_ckpt": None if baseline else args.load_transformer_ckpt_path,
            "vqgan_ckpt": None if baseline else args.vqgan or cfg.get("VQ_Configs", {}).get("VQ_CKPT_path"),
            "device": str(device), "batch_size": batch_size, "precision": model and model.precision}}
        (out_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
        written.append("metrics.json")
        accuracy = metrics.get("masked_token_accuracy")
        print(f"PSNR {metrics['psnr']:.2f} dB (hole {metrics['psnr_hole']:.2f} dB), SSIM {metrics['ssim']:.4f}, "
              f"L1 in hole {metrics['l1_hole']:.4f}"
              + ("" if accuracy is None else f", masked-token accuracy {accuracy:.1%}"))
    print(f"outputs in {out_dir}: {', '.join(written)}")
    if gt_path is not None and n > 1:
        print(f"FID: python fid/fid_score_gpu.py --predicted-path {out_dir / 'test_results'} --gt-path {gt_path}")
        if n != len(gt):
            print(f"note: FID would compare these {n} images with all {len(gt)} of the ground truth (--partial "
                  "scores a part); it is only comparable between runs of the same images", file=sys.stderr)

