"""Inpainting with MaskGIT: fill the holes of a test set, or of one image, by iterative parallel
decoding, and score the results against the ground truth.

    python inpainting.py                                   # default dataset and shipped checkpoints
    python inpainting.py --total-iter 12 --sweet-spot 8 --mask-func linear --save-history
    python inpainting.py --image photo.jpg --mask-kind center --output-dir outputs/one
    python inpainting.py --image photo.jpg --mask hole.png --mask-hole-white --fit crop
    python inpainting.py --baseline ns         # OpenCV Navier-Stokes (or telea, harmonic, nearest, mean-fill)

Outputs in --output-dir, with the lab's names: test_results/image_000.png, ... (one per input, in
input order, at the model's size), inpainted/<input name>.png (at the input's size, known pixels
kept exactly), with --save-history steps/test_{i}.png (a labelled figure of every step),
mask_scheduling/test_{i}.png and imga/test_{i}.png (the lab's unlabelled strips), overview.png, and
metrics.json when ground truth is given (--gt-path; default: test_gt.csv beside the masked images).

The pipeline is the package maskgit_inpaint; from Python, `maskgit_inpaint.inpaint(image, mask)`
fills one image (numpy or PIL, any size) and returns the image and, on request, every step.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import Subset

from common import ArgumentParser, UserError, check_output_dir, resolve_device, resolve_path, run_cli
from data import MASK_KINDS, normalize
from maskgit_inpaint.cli import (
    SCHEDULE_FIELDS,
    add_common_arguments,
    add_decoding_arguments,
    check_common_arguments,
    decoding_from_args,
    default_gt_path,
    input_paths,
)
from maskgit_inpaint.figures import save_overview
from maskgit_inpaint.loading import load_config, load_model, model_config
from maskgit_inpaint.metrics import result_metrics
from maskgit_inpaint.outputs import OUTPUTS, clear_outputs, folder_originals, save_named
from maskgit_inpaint.pipeline import run_inpainting
from maskgit_inpaint.preparation import input_files, open_dataset, open_ground_truth, prepare_image
from maskgit_inpaint.settings import default_batch_size
from models.pretrained import DEFAULT_CONFIG


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
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


if __name__ == "__main__":
    run_cli(main)
