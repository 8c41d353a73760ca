"""Stage-2 training throughput: this project's training step on cached tokens against the
lab-style step that encodes every batch with the VQGAN, same weights, same images, side by side.

    python -m bench.bench_training --device cpu --steps 2 --batch-size 8 --repeats 3 --threads 1
    python -m bench.bench_training --device cuda --config configs/MaskGit.yml --write
    python -m bench.bench_training --device cpu --steps 1 --batch-size 4 --profile

lab-style (the baseline, written here): every batch of images is encoded to tokens by the frozen
VQGAN (fp32, mirror images at random as the project's `flip` does), then the transformer step in
fp32 with the hand-written attention core.
project: the token cache of training_transformer.py (models.maskgit.encode_images, run once before training, its
cost reported apart and extrapolated to the whole training split), fused (sdpa) attention and
bf16 autocast on CUDA.

Both then take the same step as training.transformer.train(): MaskGit.forward (random MVTM mask),
masked_token_loss, backward, gradient clipping, AdamW on param_groups, loss.item(). Weights are
the same seeded random initialization in both (the parent checks it), the images are the first
ones of the Twemoji training split, read into memory before timing (disk reads are timed for
neither; they would only add to the baseline). s/epoch is extrapolated from the timed steps to
the training split's steps per epoch. Each variant runs in its own child process, set up and
warmed up once, then asked for --steps timed steps at a time: the timed runs alternate between the
variants, and the peak RSS is the variant's own.
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

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
from common import autocast, resolve_device, resolve_path, run_cli, seed_everything
from data import ImageFolderDataset
from models.config import MASKGIT_TRAIN, apply_overrides, load_maskgit_file
from models.maskgit import MaskGit, encode_images, masked_token_loss
from training.engine import param_groups

TRAIN_DIR = "datasets/twemoji/train"
GOAL = {"cuda": 5.0}  # none set for the CPU
WARMUP_STEPS = {"cpu": 1, "cuda": 5}
SEED = 0


class Setup:
    """A variant ready to train: the seeded model with the variant's attention, AdamW, the images of
    the run in memory and, for the project, their token cache (its build time extrapolated to the
    whole training split in `cache_seconds_epoch`)."""

    def __init__(self, variant: str, config: str, batch_size: int | None, steps: int, device: torch.device):
        path = resolve_path(config)
        config = load_maskgit_file(path)
        self.cfg, self.tcfg = config.model, apply_overrides(config.train, MASKGIT_TRAIN, {"batch_size": batch_size})
        self.batch, self.device, self.variant = self.tcfg["batch_size"], device, variant
        seed_everything(SEED)
        self.model = MaskGit(self.cfg).to(device).train()
        self.fingerprint = weights_fingerprint(self.model)
        self.model.transformer.set_attention("manual" if variant == "lab-style" else "sdpa")
        self.optimizer = torch.optim.AdamW(param_groups(self.model.transformer, self.tcfg["weight_decay"]),
                                           lr=self.tcfg["learning_rate"], betas=tuple(self.tcfg["betas"]))
        vq = self.cfg["vqgan"]
        dataset = ImageFolderDataset(TRAIN_DIR, vq["mean"], vq["std"], size=vq["img_resolution"])
        self.steps_per_epoch = len(dataset) // self.batch  # training.transformer.train(), one process
        count = (WARMUP_STEPS[device.type] + steps) * self.batch
        self.images = torch.stack([dataset[i % len(dataset)] for i in range(count)])  # (count, 3, H, W)
        self.cache_seconds_epoch = 0.0
        if variant == "project":
            with stopwatch(device) as times:
                self.tokens = encode_images(self.model, list(self.images), self.tcfg["flip"], self.batch, 0, device,
                                            "token cache")
            self.cache_seconds_epoch = times["seconds"] / count * len(dataset)

    def batch_tokens(self, step: int) -> torch.Tensor:
        """Token ids (B, N) of step `step`'s images: looked up in the cache, or (lab-style) encoded now."""
        rows = slice(step * self.batch, (step + 1) * self.batch)
        if self.variant == "project":
            views = torch.randint(self.tokens.shape[1], (self.batch,))
            return self.tokens[rows][torch.arange(self.batch), views].long().to(self.device, non_blocking=True)
        images = self.images[rows].to(self.device)
        if self.tcfg["flip"]:
            mirrored = (torch.rand(self.batch) < 0.5).to(self.device)[:, None, None, None]
            images = torch.where(mirrored, images.flip(-1), images)
        return self.model.encode_to_z(images)[1]

    def step(self, step: int) -> float:
        """One optimizer step on step `step`'s batch; returns the loss (a sync, as in the real loop)."""
        z = self.batch_tokens(step)
        with autocast(self.device, enabled=self.variant == "project"):
            logits, targets, mask = self.model(z)
        losses, _ = masked_token_loss(logits, targets, mask, self.cfg["label_smoothing"])
        losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(self.model.transformer.parameters(), self.tcfg["grad_clip"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return losses.mean().item()

    def run(self, first: int, count: int) -> None:
        for i in range(first, first + count):
            self.step(i)


def worker(args: argparse.Namespace) -> None:
    """One variant's child process: set up, warm-up steps, then --steps timed steps per request."""
    device = torch.device(args.device)
    set_threads(args.threads)
    setup = Setup(args.worker, args.config, args.batch_size, args.steps, device)
    warmup = WARMUP_STEPS[device.type]
    setup.run(0, warmup)

    def measure() -> dict:
        with stopwatch(device) as times:
            setup.run(warmup, args.steps)
        return {**times, "steps": args.steps, "batch": setup.batch,
                "tokens": setup.cfg["num_image_tokens"], "steps_per_epoch": setup.steps_per_epoch,
                "cache_seconds_epoch": setup.cache_seconds_epoch, "fingerprint": setup.fingerprint,
                **peak_memory(device)}

    serve(measure)


def profile(args: argparse.Namespace, device: torch.device) -> None:
    """Print torch.profiler's top operators of --steps steps of each variant."""
    set_threads(args.threads)
    for variant in VARIANTS:
        setup = Setup(variant, args.config, args.batch_size, args.steps, device)
        setup.run(0, WARMUP_STEPS[device.type])
        table = profile_table(partial(setup.run, WARMUP_STEPS[device.type], args.steps), device)
        print(f"\n{variant}, {args.steps} step(s) of {setup.batch}:\n{table}")


def describe(variant: str, device: torch.device) -> list[str]:
    if variant == "lab-style":
        return ["lab-style (baseline)", "VQGAN encode every batch", "manual", "fp32"]
    return ["project", "token cache", "sdpa", "bf16 autocast" if device.type == "cuda" else "fp32"]


def command_line(args: argparse.Namespace, device: torch.device) -> str:
    flags = [f"--device {device.type}", f"--config {args.config}", f"--steps {args.steps}",
             f"--repeats {args.repeats}"]
    flags += [f"--batch-size {args.batch_size}"] if args.batch_size else []
    flags += [f"--threads {args.threads}"] if args.threads else []
    return "python -m bench.bench_training " + " ".join(flags)


def summarize(runs: list[dict]) -> dict:
    """A variant's runs: tokens/s of each, and the medians of seconds per step, tokens/s, s/epoch and
    the one-off token cache's seconds."""
    per_step = median([r["seconds"] / r["steps"] for r in runs])
    tokens_per_step = runs[0]["batch"] * runs[0]["tokens"]
    return {"per_step": per_step, "tokens_per_s": tokens_per_step / per_step,
            "each": [tokens_per_step * r["steps"] / r["seconds"] for r in runs],
            "epoch": per_step * runs[0]["steps_per_epoch"], "cache": median([r["cache_seconds_epoch"] for r in runs])}


def benchmark(args: argparse.Namespace, device: torch.device) -> None:
    """Run the variants in alternation, print the tables and, with --write, update BENCHMARKS.md."""
    machine = machine_summary(device, args.threads)
    child_args = ["--device", str(device), "--config", args.config, "--steps", str(args.steps),
                  "--threads", str(args.threads)] + (["--batch-size", str(args.batch_size)] if args.batch_size else [])
    with start_children(Path(__file__).resolve(), {v: [*child_args, "--worker", v] for v in VARIANTS}) as children:
        results = interleave(args.repeats, VARIANTS, lambda v: children[v].measure())
    check_same_weights(results)
    stats = {v: summarize(runs) for v, runs in results.items()}
    first = results["project"][0]
    rows = []
    for variant in VARIANTS:
        s = stats[variant]
        cache = f"{s['cache']:.4g}" if variant == "project" else "(every epoch)"
        each = ", ".join(f"{x:.4g}" for x in s["each"])
        rows.append(describe(variant, device) + [f"{s['tokens_per_s']:.4g}", each, f"{s['per_step']:.3g}",
                                                 f"{s['epoch']:.4g}", cache])
    speed = markdown_table(["variant", "tokens from", "attention", "precision", "tokens/s (median)",
                            "tokens/s (each run)", "s/step", "s/epoch (extrapolated)",
                            "one-off token cache, s"], rows)
    verdict = (f"{speedup_text(results, device, GOAL.get(device.type))} {first['steps_per_epoch']} steps of "
               f"{first['batch']} images per epoch (the {TRAIN_DIR} split), {first['tokens']} tokens per image.")
    memory = memory_table(results, device)
    title = f"{device.type.upper()}, {args.config}, batch {first['batch']}, {args.steps} timed step(s) per run"
    print(f"\n{title}\n{machine}\n\n{speed}\n\n{verdict}\n\n{memory}")

    if args.write:
        note = f" {args.note}" if args.note else ""
        key = f"bench_training {device.type} {args.config}"
        update_section("Stage-2 training throughput", key, f"### {title}\n\n"
                       f"Machine: {machine}.{note}\n\nCommand: `{command_line(args, device)} --write`\n\n"
                       f"{speed}\n\n{verdict}")
        update_section("Peak memory", key, f"### Stage-2 training: {title}\n\n"
                       f"Peak of each variant's own process (set-up with the images it trains on, warm-up "
                       f"and the {args.repeats} timed runs).\n\n{memory}")
        print("\nBENCHMARKS.md updated")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--config", default="configs/small/MaskGit.yml", help="MaskGit config (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="measured runs of each variant (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed optimizer steps per run (default: 20 on CUDA, 2 on the CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: the config's)")
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
    args.steps = args.steps or (20 if device.type == "cuda" else 2)
    if args.profile:
        profile(args, device)
    else:
        benchmark(args, device)


if __name__ == "__main__":
    run_cli(main)
