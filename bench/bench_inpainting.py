"""Inpainting throughput: this project's batched decoding against the lab-style loop, same weights,
same test images, measured side by side.

    python bench/bench_inpainting.py --device cpu --images 16 --repeats 3 --threads 1
    python bench/bench_inpainting.py --device cuda --config configs/MaskGit.yml --write
    python bench/bench_inpainting.py --device cpu --images 2 --profile

lab-style (the baseline, written here): one image at a time, the hand-written attention core, fp32,
and the VQGAN decode of the current prediction after every decoding step, as the lab's loop does.
project: inpainting.run_inpainting, the code path of `python inpainting.py`: batches, fused (sdpa)
attention, bf16 autocast on CUDA, one decode per image at the end.

Both build the MaskGit of --config with the same seeded random weights (speed does not depend on
the weights' values; the parent checks that both children hold the same ones) and fill the holes
of the first --images images of the Twemoji test set, 8 steps of the cosine schedule. Every
measured run is a child process, so the peak RSS is the variant's own; the variants alternate.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import from the repo root

import numpy as np
import torch

from bench.harness import (
    interleave,
    machine_summary,
    markdown_table,
    median,
    paired_ratios,
    peak_memory,
    profile_table,
    report_result,
    run_child,
    set_threads,
    timed,
    update_section,
    weights_fingerprint,
)
from common import resolve_device, run_cli, seed_everything
from data import pixel_to_token_mask, to_uint8_image
from inpainting import (
    DEFAULT_MASKED,
    DEFAULT_MASKS,
    Decoding,
    default_batch_size,
    load_config,
    make_generators,
    open_dataset,
    run_inpainting,
)
from models.maskgit import MaskGit

VARIANTS = ("lab-style", "project")
GOAL = {"cpu": 3.0, "cuda": 10.0}
CPU_IMAGES = 16  # default subset on the CPU, where the lab-style loop is slow
SEED = 0

Items = list[tuple[torch.Tensor, torch.Tensor, int]]


class StepDecoder:
    """Forward hook on the transformer that decodes each step's prediction (masked tokens filled
    with their most likely code) to pixels, as the lab's loop does after every step. MaskGit.inpaint
    has no per-step callback, hence the hook. The last step's decode is the output itself, which
    the caller makes, so the hook skips every `steps`-th call."""

    def __init__(self, model: MaskGit, steps: int):
        self.model, self.steps, self.calls = model, steps, 0

    def __call__(self, module: torch.nn.Module, args: tuple, logits: torch.Tensor) -> None:
        self.calls += 1
        if self.calls % self.steps:
            tokens = args[0]
            predicted = torch.where(tokens == self.model.mask_token_id, logits[..., :-1].argmax(-1), tokens)
            self.model.decode_tokens(predicted)


def lab_style_inpainting(model: MaskGit, items: Items, decoding: Decoding, cfg: dict,
                         device: torch.device) -> np.ndarray:
    """The baseline: the lab's loop over the images one by one, fp32, decoding after every step.
    Returns the pasted-back outputs, uint8 (N, H, W, 3)."""
    vq = cfg["vqgan"]
    hook = model.transformer.register_forward_hook(StepDecoder(model, decoding.sweet_spot))
    outputs = []
    try:
        for image, hole, index in items:
            images, holes = image[None].to(device), hole[None].to(device)  # (1, 3, H, W), (1, 1, H, W)
            token_mask = pixel_to_token_mask(holes, model.vqgan.latent_resolution)
            _, z = model.encode_to_z(images)
            tokens, _ = model.inpaint(z, token_mask, decoding.total_iter, decoding.sweet_spot, decoding.mask_func,
                                      decoding.choice_temperature, decoding.sample_temperature,
                                      generators=make_generators(decoding.seed, [index]))
            decoded = model.decode_tokens(tokens)
            outputs.append(to_uint8_image(torch.where(holes, decoded, images), vq["mean"], vq["std"]))
    finally:
        hook.remove()
    return np.concatenate(outputs)


def prepare(variant: str, config: str, images: int, batch_size: int, device: torch.device
            ) -> tuple[MaskGit, Items, Callable[[Items], np.ndarray]]:
    """The seeded model with the variant's attention, the first `images` test items (read into
    memory, so that disk reads are timed for neither), and the variant's inpainting function."""
    cfg = load_config(config)
    seed_everything(SEED)
    model = MaskGit(cfg).to(device).eval()
    model.transformer.set_attention("manual" if variant == "lab-style" else "sdpa")
    dataset = open_dataset(DEFAULT_MASKED, DEFAULT_MASKS, cfg)
    items = [dataset[i] for i in range(min(images, len(dataset)))]
    decoding = Decoding(mask_func=cfg["gamma_type"], choice_temperature=cfg["choice_temperature"])
    if variant == "lab-style":
        return model, items, lambda batch: lab_style_inpainting(model, batch, decoding, cfg, device)
    vq = cfg["vqgan"]
    return model, items, lambda batch: run_inpainting(batch, model, decoding, vq["mean"], vq["std"], device,
                                                      batch_size, progress=False).outputs


def worker(args: argparse.Namespace) -> None:
    """One measured run of one variant (a child process): a warm-up, then the timed pass."""
    device = torch.device(args.device)
    set_threads(args.threads)
    model, items, run = prepare(args.worker, args.config, args.images, args.batch_size, device)
    warmup = args.batch_size if device.type == "cuda" and args.worker == "project" else 1
    run(items[:warmup])
    seconds, _ = timed(lambda: run(items), device)
    report_result({"seconds": seconds, "images": len(items), "fingerprint": weights_fingerprint(model),
                   **peak_memory(device)})


def profile(args: argparse.Namespace, device: torch.device) -> None:
    """Print torch.profiler's top operators of each variant on the first --images images."""
    set_threads(args.threads)
    for variant in VARIANTS:
        _, items, run = prepare(variant, args.config, args.images, args.batch_size, device)
        run(items[:1])
        table = profile_table(partial(run, items), device)
        print(f"\n{variant}, {len(items)} image(s):\n{table}")


def describe(variant: str, device: torch.device, batch_size: int) -> list[str]:
    if variant == "lab-style":
        return ["lab-style (baseline)", "1", "manual", "fp32", "yes"]
    return ["project", str(batch_size), "sdpa", "bf16 autocast" if device.type == "cuda" else "fp32", "no"]


def command_line(args: argparse.Namespace, device: torch.device) -> str:
    flags = [f"--device {device.type}", f"--config {args.config}", f"--images {args.images}",
             f"--batch-size {args.batch_size}", f"--repeats {args.repeats}"]
    flags += [f"--threads {args.threads}"] if args.threads else []
    return "python bench/bench_inpainting.py " + " ".join(flags)


def benchmark(args: argparse.Namespace, device: torch.device) -> None:
    """Run the variants in alternation, print the tables and, with --write, update BENCHMARKS.md."""
    machine = machine_summary(device, args.threads)
    child_args = ["--device", str(device), "--config", args.config, "--images", str(args.images),
                  "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    script = Path(__file__).resolve()
    results = interleave(args.repeats, VARIANTS, lambda v: run_child(script, [*child_args, "--worker", v]))
    if len({r["fingerprint"] for runs in results.values() for r in runs}) != 1:
        raise RuntimeError("the variants were not given the same weights")
    images = results["project"][0]["images"]
    rates = {v: [r["images"] / r["seconds"] for r in runs] for v, runs in results.items()}
    ratios = paired_ratios([r["seconds"] for r in results["lab-style"]], [r["seconds"] for r in results["project"]])
    speedup, goal = median(ratios), GOAL[device.type]

    speed_rows = [describe(v, device, args.batch_size) + [f"{median(rates[v]):.3g}",
                                                          ", ".join(f"{x:.3g}" for x in rates[v])]
                  for v in VARIANTS]
    speed = markdown_table(["variant", "batch", "attention", "precision", "decode every step",
                            "images/s (median)", "images/s (each run)"], speed_rows)
    verdict = (f"Speed-up (median of {len(ratios)} paired ratios, lab-style time / project time): "
               f"**{speedup:.2f}x** (runs: {', '.join(f'{x:.2f}' for x in ratios)}); "
               f"goal on {device.type.upper()}: at least {goal:g}x, {'met' if speedup >= goal else 'missed'}.")
    memory_headers = ["variant", "peak RSS (MiB)"] + (["GPU max allocated (MiB)"] if device.type == "cuda" else [])
    memory_rows = [[v, f"{max(r['rss_mib'] for r in results[v]):.0f}"]
                   + ([f"{max(r['gpu_mib'] for r in results[v]):.0f}"] if device.type == "cuda" else [])
                   for v in VARIANTS]
    memory = markdown_table(memory_headers, memory_rows)
    title = f"{device.type.upper()}, {args.config}, {images} test image(s)"
    print(f"\n{title}\n{machine}\n\n{speed}\n\n{verdict}\n\n{memory}")

    if args.write:
        note = f" {args.note}" if args.note else ""
        key = f"bench_inpainting {device.type} {args.config}"
        update_section("Inpainting throughput", key, f"### {title}\n\n"
                       f"Machine: {machine}.{note}\n\nCommand: `{command_line(args, device)} --write`\n\n"
                       f"{speed}\n\n{verdict}")
        update_section("Peak memory", key, f"### Inpainting: {title}\n\n"
                       f"Largest peak over the {args.repeats} runs of each variant (each run is its own "
                       f"process).\n\n{memory}")
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
    if args.profile:
        profile(args, device)
    else:
        benchmark(args, device)


if __name__ == "__main__":
    run_cli(main)
