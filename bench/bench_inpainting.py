"""Inpainting throughput: this project's batched decoding against the lab-style loop, same weights,
same test images, measured side by side.

    python -m bench.bench_inpainting --device cpu --images 8 --repeats 3 --threads 1
    python -m bench.bench_inpainting --device cuda --config configs/MaskGit.yml --write
    python -m bench.bench_inpainting --device cpu --images 2 --profile

lab-style (the baseline, written here): one image at a time, the hand-written attention core, fp32,
and the VQGAN decode of the image after every decoding step, as the lab's loop does (the tokens of
each step come from MaskGit.inpaint's step history).
project: maskgit_inpaint.run_inpainting, the code path of `python inpainting.py`: batches, fused (sdpa)
attention, the transformer at --precision (default: bf16 on CUDA, fp32 on the CPU), one decode per
image at the end.

Both build the MaskGit of --config with the same seeded random weights (speed does not depend on
the weights' values; the parent checks that both children hold the same ones) and fill the holes
of the first --images images of the Twemoji test set, 8 steps of the cosine schedule. Each
variant runs in its own child process, set up and warmed up once, then asked for one timed pass
at a time: the timed passes alternate between the variants, and the peak RSS is the variant's own.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bench.harness import (
    VARIANTS,
    check_same_weights,
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
    weights_fingerprint,
)
from common import resolve_device, resolve_path, run_cli, seed_everything
from data import list_images, pixel_to_token_mask, to_uint8_image
from maskgit_inpaint import Decoding, load_config, run_inpainting
from maskgit_inpaint.decoding import make_generators
from maskgit_inpaint.preparation import open_dataset
from maskgit_inpaint.settings import DEFAULT_MASKED, DEFAULT_MASKS, default_batch_size
from models.maskgit import PRECISIONS, MaskGit, default_precision

GOAL = {"cpu": 3.0, "cuda": 10.0}
CPU_IMAGES = 16  # default subset on the CPU, where the lab-style loop is slow
SEED = 0

Items = list[tuple[torch.Tensor, torch.Tensor, int]]


def lab_style_inpainting(model: MaskGit, items: Items, decoding: Decoding, cfg: dict,
                         device: torch.device) -> np.ndarray:
    """The baseline: the lab's loop over the images one at a time, fp32 (no autocast), with the VQGAN
    decode of the image after every step (the lab draws them; the last one is the output).
    Returns the pasted-back outputs, uint8 (N, H, W, 3)."""
    vq = cfg["vqgan"]
    outputs = []
    for image, hole, index in items:
        images, holes = image[None].to(device), hole[None].to(device)  # (1, 3, H, W), (1, 1, H, W)
        token_mask = pixel_to_token_mask(holes, model.vqgan.latent_resolution)
        _, z = model.encode_to_z(images)
        history = model.inpaint(z, token_mask, total_iter=decoding.total_iter, sweet_spot=decoding.steps,
                                mask_func=decoding.mask_func, choice_temperature=decoding.choice_temperature,
                                sample_temperature=decoding.sample_temperature, top_p=decoding.nucleus,
                                readout=decoding.readout,
                                scheduler=decoding.scheduler, generators=make_generators(decoding.seed, [index]),
                                return_history=True).history
        steps = [model.decode_tokens(tokens.to(device)) for tokens in history.tokens]  # (1, 3, H, W) each
        outputs.append(to_uint8_image(torch.where(holes, steps[-1], images), vq["mean"], vq["std"]))
    return np.concatenate(outputs)


def prepare(variant: str, config: str, images: int, batch_size: int, device: torch.device, precision: str
            ) -> tuple[MaskGit, Items, Callable[[Items], np.ndarray]]:
    """The seeded model with the variant's attention, the first `images` test items (read into
    memory, so that disk reads are timed for neither), and the variant's inpainting function."""
    cfg = load_config(config)
    seed_everything(SEED)
    model = MaskGit(cfg).to(device).eval()
    model.transformer.set_attention("manual" if variant == "lab-style" else "sdpa")
    dataset = open_dataset(DEFAULT_MASKED, DEFAULT_MASKS, cfg)
    items = [dataset[i] for i in range(min(images, len(dataset)))]
    # the lab's decoding for both variants (T = 8, sampled tokens, one view, plain paste), so the
    # figures compare across versions: the defaults' mirror view and blending are not the lab's
    decoding = Decoding(total_iter=8, sweet_spot=8, mask_func=cfg["gamma_type"],
                        choice_temperature=cfg["choice_temperature"], readout="sample", encode_fill="gray",
                        flip_average=False, blend="none")
    if variant == "lab-style":
        return model, items, lambda batch: lab_style_inpainting(model, batch, decoding, cfg, device)
    model.set_precision(precision)
    vq = cfg["vqgan"]
    return model, items, lambda batch: run_inpainting(batch, model, decoding, vq["mean"], vq["std"], device,
                                                      batch_size, progress=False).outputs


def worker(args: argparse.Namespace) -> None:
    """One variant's child process: set up, warm up, then one timed pass over the images per request."""
    device = torch.device(args.device)
    set_threads(args.threads)
    model, items, run = prepare(args.worker, args.config, args.images, args.batch_size, device, args.precision)
    fingerprint = weights_fingerprint(model)
    run(items[:args.batch_size if device.type == "cuda" and args.worker == "project" else 1])

    def measure() -> dict:
        with stopwatch(device) as times:
            run(items)
        return {**times, "images": len(items), "fingerprint": fingerprint, **peak_memory(device)}

    serve(measure)


def profile(args: argparse.Namespace, device: torch.device) -> None:
    """Print torch.profiler's top operators of each variant on the first --images images."""
    set_threads(args.threads)
    for variant in VARIANTS:
        _, items, run = prepare(variant, args.config, args.images, args.batch_size, device, args.precision)
        run(items[:1])
        table = profile_table(partial(run, items), device)
        print(f"\n{variant}, {len(items)} image(s):\n{table}")


def describe(variant: str, batch_size: int, precision: str) -> list[str]:
    if variant == "lab-style":
        return ["lab-style (baseline)", "1", "manual", "fp32", "yes"]
    return ["project", str(batch_size), "sdpa", "bf16 autocast" if precision == "bf16" else precision, "no"]


def command_line(args: argparse.Namespace, device: torch.device) -> str:
    flags = [f"--device {device.type}", f"--config {args.config}", f"--images {args.images}",
             f"--batch-size {args.batch_size}", f"--repeats {args.repeats}", f"--precision {args.precision}"]
    flags += [f"--threads {args.threads}"] if args.threads else []
    return "python -m bench.bench_inpainting " + " ".join(flags)


def benchmark(args: argparse.Namespace, device: torch.device) -> None:
    """Run the variants in alternation, print the tables and, with --write, update BENCHMARKS.md."""
    machine = machine_summary(device, args.threads)
    child_args = ["--device", str(device), "--config", args.config, "--images", str(args.images),
                  "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--precision", args.precision]
    with start_children(Path(__file__).resolve(), {v: [*child_args, "--worker", v] for v in VARIANTS}) as children:
        results = interleave(args.repeats, VARIANTS, lambda v: children[v].measure())
    check_same_weights(results)
    images = results["project"][0]["images"]
    rates = {v: [r["images"] / r["seconds"] for r in runs] for v, runs in results.items()}
    rows = [describe(v, args.batch_size, args.precision)
            + [f"{median(rates[v]):.3g}", ", ".join(f"{x:.3g}" for x in rates[v])] for v in VARIANTS]
    speed = markdown_table(["variant", "batch", "attention", "precision", "decode every step",
                            "images/s (median)", "images/s (each run)"], rows)
    verdict = speedup_text(results, device, GOAL[device.type])
    memory = memory_table(results, device)
    total = len(list_images(resolve_path(DEFAULT_MASKED)))
    subset = f"all {total} test images" if images == total else f"the first {images} of the {total} test images"
    title = f"{device.type.upper()}, {args.config}, {subset}"
    if args.precision != default_precision(device):
        title += f", project in {args.precision}"
    print(f"\n{title}\n{machine}\n\n{speed}\n\n{verdict}\n\n{memory}")

    if args.write:
        note = f" {args.note}" if args.note else ""
        key = f"bench_inpainting {device.type} {args.config}"
        key += "" if args.precision == default_precision(device) else f" {args.precision}"
        update_section("Inpainting throughput", key, f"### {title}\n\n"
                       f"Machine: {machine}.{note}\n\nCommand: `{command_line(args, device)} --write`\n\n"
                       f"{speed}\n\n{verdict}")
        update_section("Peak memory", key, f"### Inpainting: {title}\n\n"
                       f"Peak of each variant's own process (set-up, warm-up and the {args.repeats} timed "
                       f"passes).\n\n{memory}")
        print("\nBENCHMARKS.md updated")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--config", default="configs/small/MaskGit.yml", help="MaskGit config (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="measured runs of each variant (default: %(default)s)")
    p.add_argument("--images", type=int, default=None,
                   help=f"first N test images (default: all 401 on CUDA, {CPU_IMAGES} on the CPU)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="the project's batch size (default: inpainting.py's, 64 on CUDA and 16 on the CPU)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="the project's transformer precision (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per run (default: torch's choice)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top operators instead of timing")
    p.add_argument("--write", action="store_true", help="update this benchmark's blocks of BENCHMARKS.md")
    p.add_argument("--note", default="", help="a sentence added to the BENCHMARKS.md block (e.g. machine load)")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    device = resolve_device(args.device)
    args.images = args.images or (401 if device.type == "cuda" else CPU_IMAGES)
    args.batch_size = args.batch_size or default_batch_size(device)
    args.precision = args.precision or default_precision(device)
    if args.profile:
        profile(args, device)
    else:
        benchmark(args, device)


if __name__ == "__main__":
    run_cli(main)
