"""Stage 1: train the VQGAN (reconstruction + codebook losses, PatchGAN after `disc_start` steps).

    python training_vqgan.py --config configs/small/VQGAN.yml --run-dir runs/vqgan_small
    python training_vqgan.py --config configs/small/VQGAN.yml --run-dir runs/vqgan_small --resume
    torchrun --nproc_per_node 4 training_vqgan.py --config configs/VQGAN.yml --run-dir runs/vqgan_lab

Hyper-parameters come from the config's `train_param` section (defaults below); flags override them.
The run folder holds last.pt (resumable), best.pt (best validation PSNR), vqgan.pt (plain weights
of the best model, loadable like the lab's VQGAN.pt), log.jsonl, curves.png and reconstruction grids.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torchvision.utils import save_image
from tqdm import tqdm

from common import (
    ResumableSampler,
    RunLog,
    UserError,
    autocast,
    check_finite,
    check_minimum,
    check_output_dir,
    cleanup_distributed,
    gather_per_rank,
    half_state_dict,
    load_checkpoint,
    load_weights,
    merge_train_param,
    resolve_device,
    restore_rng_state,
    rng_state,
    run_cli,
    save_checkpoint,
    seed_everything,
    setup_distributed,
    warmup_cosine,
)
from data import ImageFolderDataset, denormalize
from models import VQGAN, Discriminator
from models.config import load_vqgan_config, read_yaml
from models.perceptual import PerceptualLoss

TRAIN_DEFAULTS = {
    "epochs": 100, "batch_size": 32, "learning_rate": 2e-4, "betas": [0.5, 0.9], "warmup_steps": 200,
    "l2_weight": 0.0,             # reconstruction = L1 + l2_weight * L2
    "disc_start": 10000,          # step at which the PatchGAN loss switches on
    "disc_weight": 0.1,           # times the adaptive weight ||grad rec|| / ||grad gan|| at the last layer
    "disc_loss": "hinge",         # hinge or vanilla (non-saturating)
    "perceptual_weight": 0.0,     # > 0 needs perceptual_weights: a local VGG16 file
    "perceptual_weights": None,
    "reinit_dead_codes": True,    # replace codes unused for `reinit_every` steps by recent encoder outputs
    "reinit_every": 200,
    "flip": True,
    "grad_clip": 1.0,
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/small/VQGAN.yml", help="VQGAN YAML config")
    p.add_argument("--train-path", default="datasets/twemoji/train")
    p.add_argument("--val-path", default="datasets/twemoji/val")
    p.add_argument("--run-dir", default="runs/vqgan")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimizer steps in total (the LR schedule still spans --epochs)")
    p.add_argument("--save-every", type=int, default=100, help="write last.pt every N steps (and each epoch)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--random-seed", type=int, default=0)
    p.add_argument("--strict-size", action="store_true", help="refuse images that are not img_resolution")
    p.add_argument("--export", metavar="PATH", help="write RUN_DIR/best.pt's VQGAN weights in fp16 to PATH and exit")
    p.add_argument("--evaluate", metavar="DIR", help="report reconstruction PSNR and codebook use on the images "
                   "in DIR for --weights (default RUN_DIR/best.pt), save a grid there, and exit")
    p.add_argument("--weights", help="with --evaluate: a VQGAN checkpoint (training checkpoint or plain weights)")
    return p.parse_args()


def gan_losses(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss, hinge or non-saturating (vanilla)."""
    if kind == "hinge":
        return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())
    return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())


def generator_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean() if kind == "hinge" else F.softplus(-fake_logits).mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """VQGAN's balance of the GAN term: ||d rec / d W_last|| / ||d gan / d W_last||, clamped."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, 1e4).detach()


def codebook_health(counts: torch.Tensor) -> tuple[float, float]:
    """(share of codes used, perplexity) from per-code usage counts."""
    probs = counts.float() / counts.sum().clamp(min=1)
    perplexity = torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum()).item()
    return (counts > 0).float().mean().item(), perplexity


@torch.no_grad()
def reinit_dead_codes(vqgan: VQGAN, counts: torch.Tensor, recent_latents: torch.Tensor, generator: torch.Generator
                      ) -> int:
    """Move codes that were never chosen onto randomly picked recent encoder outputs."""
    dead = (counts == 0).nonzero().flatten()
    if len(dead) == 0 or len(recent_latents) == 0:
        return 0
    picks = torch.randint(len(recent_latents), (len(dead),), generator=generator)
    vqgan.codebook.embedding.weight.data[dead.to(recent_latents.device)] = recent_latents[picks]
    return len(dead)


@torch.no_grad()
def validate(vqgan: VQGAN, loader: DataLoader, device: torch.device, mean, std, grid_path: Path | None
             ) -> tuple[float, torch.Tensor]:
    """Mean reconstruction PSNR (dB, pixels in [0, 1]) over the loader; code usage counts."""
    vqgan.eval()
    psnrs, counts = [], torch.zeros(vqgan.codebook.num_codebook_vectors, dtype=torch.long)
    for i, images in enumerate(loader):
        images = images.to(device)
        decoded, indices, _ = vqgan(images)
        real, fake = denormalize(images, mean, std), denormalize(decoded, mean, std).clamp(0, 1)
        mse = ((real - fake) ** 2).flatten(1).mean(1).clamp(min=1e-10)
        psnrs.append(10 * torch.log10(1 / mse).cpu())
        counts += torch.bincount(indices.cpu(), minlength=len(counts))
        if i == 0 and grid_path is not None:
            n = min(8, len(images))
            save_image(torch.cat([real[:n], fake[:n]]), grid_path, nrow=n)
    vqgan.train()
    return torch.cat(psnrs).mean().item(), counts


def evaluate(cfg: dict, weights: str | Path, folder: str, args: argparse.Namespace) -> None:
    """Reconstruction PSNR and codebook use of trained weights on a folder of images."""
    device = resolve_device(args.device)
    vqgan = VQGAN(cfg).to(device)
    load_weights(vqgan, weights, key="vqgan")
    dataset = ImageFolderDataset(folder, cfg["mean"], cfg["std"], size=cfg["img_resolution"], strict=args.strict_size)
    loader = DataLoader(dataset, batch_size=64, num_workers=args.num_workers)
    grid = Path(args.run_dir) / f"recon_{Path(folder).name}.png"
    grid.parent.mkdir(parents=True, exist_ok=True)
    psnr, counts = validate(vqgan, loader, device, cfg["mean"], cfg["std"], grid)
    usage, perplexity = codebook_health(counts)
    print(f"{folder}: {len(dataset)} images, reconstruction PSNR {psnr:.2f} dB, codebook use {usage:.1%} "
          f"({int((counts > 0).sum())} of {len(counts)} codes), perplexity {perplexity:.0f}; grid: {grid}")


def main() -> None:
    args = parse_args()
    check_minimum(args, 1, "--batch-size", "--epochs", "--max-steps", "--save-every")
    check_minimum(args, 0, "--num_workers")
    cfg = load_vqgan_config(args.config)
    tcfg = merge_train_param(TRAIN_DEFAULTS, read_yaml(args.config).get("train_param"),
                             {"batch_size": args.batch_size, "epochs": args.epochs,
                              "learning_rate": args.learning_rate}, args.config)
    if tcfg["disc_loss"] not in ("hinge", "vanilla"):
        raise UserError(f"{args.config}: train_param.disc_loss must be hinge or vanilla")
    run_dir = check_output_dir(args.run_dir, "--run-dir")

    if args.export:
        vqgan = VQGAN(cfg)
        load_weights(vqgan, run_dir / "best.pt", key="vqgan")
        save_checkpoint(half_state_dict(vqgan), args.export)
        print(f"wrote {args.export}")
        return

    if args.evaluate:
        evaluate(cfg, args.weights or run_dir / "best.pt", args.evaluate, args)
        return

    rank, world, device = setup_distributed(args.device)
    is_main = rank == 0
    seed_everything(args.random_seed + rank)
    mean, std = cfg["mean"], cfg["std"]
    # flips are drawn in the training loop from the checkpointed RNG, so that a resume continues exactly
    train_set = ImageFolderDataset(args.train_path, mean, std, size=cfg["img_resolution"], strict=args.strict_size)
    val_set = ImageFolderDataset(args.val_path, mean, std, size=cfg["img_resolution"], strict=args.strict_size)
    batch = tcfg["batch_size"]
    steps_per_epoch = len(train_set) // (batch * world)
    if steps_per_epoch == 0:
        raise UserError(f"{args.train_path} has {len(train_set)} images, fewer than one batch of {batch * world}")
    total_steps = steps_per_epoch * tcfg["epochs"]  # the LR schedule's length
    stop_at = total_steps if args.max_steps is None else min(total_steps, args.max_steps)

    vqgan = VQGAN(cfg).to(device)
    disc = Discriminator(cfg["image_channels"]).to(device)
    perceptual = None
    if tcfg["perceptual_weight"] > 0:
        perceptual = PerceptualLoss(tcfg["perceptual_weights"], mean, std).to(device)
    opt_vq = torch.optim.Adam(vqgan.parameters(), lr=tcfg["learning_rate"], betas=tuple(tcfg["betas"]))
    opt_disc = torch.optim.Adam(disc.parameters(), lr=tcfg["learning_rate"], betas=tuple(tcfg["betas"]))
    schedule = lambda step: warmup_cosine(step, total_steps, tcfg["warmup_steps"])
    sched_vq = torch.optim.lr_scheduler.LambdaLR(opt_vq, schedule)
    sched_disc = torch.optim.lr_scheduler.LambdaLR(opt_disc, schedule)

    step, best_psnr = 0, -math.inf
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    counts = torch.zeros(cfg["num_codebook_vectors"], dtype=torch.long)  # code use since the last re-init
    epoch_counts = torch.zeros_like(counts)
    code_rng = torch.Generator().manual_seed(args.random_seed)
    if args.resume:
        state = load_checkpoint(last_path, keys=("vqgan", "discriminator", "opt_vq", "step"))
        vqgan.load_state_dict(state["vqgan"])
        disc.load_state_dict(state["discriminator"])
        opt_vq.load_state_dict(state["opt_vq"])
        opt_disc.load_state_dict(state["opt_disc"])
        sched_vq.load_state_dict(state["sched_vq"])
        sched_disc.load_state_dict(state["sched_disc"])
        step, best_psnr = state["step"], state["best_psnr"]
        restore_rng_state(state["rng"], rank)
        if rank < len(state.get("code_counts", [])):
            counts, epoch_counts = state["code_counts"][rank]
        if "code_rng" in state:
            code_rng.set_state(state["code_rng"])
        if is_main:
            print(f"resumed from {last_path} at step {step}")
    elif last_path.exists():
        raise UserError(f"{last_path} exists: pass --resume to continue that run, or choose another --run-dir")
    log = RunLog(run_dir, enabled=is_main)
    log.truncate_after(step)
    model = DistributedDataParallel(vqgan) if world > 1 else vqgan
    disc_model = DistributedDataParallel(disc) if world > 1 else disc

    def checkpoint() -> dict:
        return {"vqgan": vqgan.state_dict(), "discriminator": disc.state_dict(), "opt_vq": opt_vq.state_dict(),
                "opt_disc": opt_disc.state_dict(), "sched_vq": sched_vq.state_dict(),
                "sched_disc": sched_disc.state_dict(), "step": step, "best_psnr": best_psnr,
                "rng": gather_per_rank(rng_state(), world),
                "code_counts": gather_per_rank([counts, epoch_counts], world), "code_rng": code_rng.get_state(),
                "config": cfg, "train_param": tcfg}

    # loaders get their own generator: creating one must not draw from the checkpointed global RNG
    val_loader = DataLoader(val_set, batch_size=batch, num_workers=args.num_workers, generator=torch.Generator())
    while step < stop_at:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        sampler = ResumableSampler(len(train_set), args.random_seed, epoch, done_in_epoch * batch, rank, world)
        loader = DataLoader(train_set, batch_size=batch, sampler=sampler, num_workers=args.num_workers,
                            drop_last=True, pin_memory=device.type == "cuda", generator=torch.Generator())
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tcfg['epochs']}", disable=not is_main,
                   initial=done_in_epoch, total=steps_per_epoch, dynamic_ncols=True)
        for images in bar:
            images = images.to(device, non_blocking=True)
            if tcfg["flip"]:
                flip = (torch.rand(len(images)) < 0.5).to(device)
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            gan_on = step >= tcfg["disc_start"] and tcfg["disc_weight"] > 0
            with autocast(device):
                decoded, indices, q_loss = model(images)
                rec_loss = (images - decoded).abs().mean()
                if tcfg["l2_weight"]:
                    rec_loss = rec_loss + tcfg["l2_weight"] * ((images - decoded) ** 2).mean()
                if perceptual is not None:
                    rec_loss = rec_loss + tcfg["perceptual_weight"] * perceptual(images, decoded)
                loss = rec_loss + q_loss
                g_loss = torch.zeros((), device=device)
                if gan_on:
                    disc.requires_grad_(False)
                    g_loss = generator_loss(tcfg["disc_loss"], disc(decoded))
                    disc.requires_grad_(True)
                    weight = adaptive_weight(rec_loss, g_loss, vqgan.last_layer_weight())
                    loss = loss + tcfg["disc_weight"] * weight * g_loss
            check_finite(loss, step, last_path)
            opt_vq.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vqgan.parameters(), tcfg["grad_clip"])
            opt_vq.step()
            sched_vq.step()
            d_loss = torch.zeros(())
            if gan_on:
                with autocast(device):
                    real_logits, fake_logits = disc_model(torch.cat([images, decoded.detach()])).chunk(2)
                    d_loss = gan_losses(tcfg["disc_loss"], real_logits, fake_logits)
                opt_disc.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_disc.step()
                sched_disc.step()
            step += 1

            used = torch.bincount(indices.cpu(), minlength=len(counts))
            counts += used
            epoch_counts += used
            reinit = 0
            if tcfg["reinit_dead_codes"] and step % tcfg["reinit_every"] == 0:
                if world > 1:
                    torch.distributed.all_reduce(counts)
                if is_main:
                    with torch.no_grad():
                        latents = vqgan.encode_latents(images).float()  # (B, C, h, w)
                    reinit = reinit_dead_codes(vqgan, counts, latents.permute(0, 2, 3, 1).flatten(0, 2), code_rng)
                if world > 1:
                    torch.distributed.broadcast(vqgan.codebook.embedding.weight.data, 0)
                counts.zero_()
            bar.set_postfix(rec=f"{rec_loss.item():.4f}", q=f"{q_loss.item():.4f}",
                            lr=f"{sched_vq.get_last_lr()[0]:.1e}")
            if step % 20 == 0 or reinit:
                log.write(step=step, epoch=epoch, rec_loss=rec_loss.item(), q_loss=q_loss.item(),
                          g_loss=g_loss.item(), d_loss=d_loss.item(), lr=sched_vq.get_last_lr()[0],
                          reinit_codes=reinit)
            epoch_end = step % steps_per_epoch == 0
            if epoch_end or step == stop_at:
                psnr, val_counts = validate(vqgan, val_loader, device, mean, std,
                                            run_dir / f"recon_epoch{epoch + 1:03d}.png" if is_main else None)
                usage, perplexity = codebook_health(epoch_counts)
                val_usage, _ = codebook_health(val_counts)
                epoch_counts.zero_()
                improved = psnr > best_psnr
                best_psnr = max(best_psnr, psnr)
                log.write(step=step, epoch=epoch + 1, val_psnr=psnr, codebook_usage=usage, perplexity=perplexity,
                          val_codebook_usage=val_usage)
                log.plot(run_dir / "curves.png", {"reconstruction loss": ["rec_loss"], "val PSNR (dB)": ["val_psnr"],
                                                  "codebook usage": ["codebook_usage", "val_codebook_usage"]})
                if is_main:
                    tqdm.write(f"epoch {epoch + 1}: val PSNR {psnr:.2f} dB, codes used {usage:.1%} "
                               f"(val {val_usage:.1%}), perplexity {perplexity:.0f}")
                state = checkpoint()
                if is_main:
                    save_checkpoint(state, last_path)
                    if improved:
                        save_checkpoint(state, best_path)
                        save_checkpoint(vqgan.state_dict(), run_dir / "vqgan.pt")
            elif step % args.save_every == 0:
                state = checkpoint()
                if is_main:
                    save_checkpoint(state, last_path)
            if step >= stop_at:
                break
    if is_main:
        print(f"done: {step} steps, best val PSNR {best_psnr:.2f} dB; weights in {run_dir / 'vqgan.pt'}")
    cleanup_distributed()


if __name__ == "__main__":
    run_cli(main)
