"""Stage 1: train the VQGAN (reconstruction + codebook losses, PatchGAN after `disc_start` steps).

    python training_vqgan.py --run-dir runs/vqgan_local            # configs/small/VQGAN_local.yml
    python training_vqgan.py --run-dir runs/vqgan_local --resume
    torchrun --nproc_per_node 4 training_vqgan.py --config configs/VQGAN.yml --run-dir runs/vqgan_lab
    python training_vqgan.py --config configs/small/VQGAN.yml --refit-codebook 256 --weights checkpoints/vqgan_small \
        --export runs/refit256
    python training_vqgan.py --fit-known-pixels 1500 --weights checkpoints/vqgan_local --export runs/vqgan_known

Hyper-parameters come from the config's `train_param` section (defaults in models/config.py);
flags override them. The run folder holds last.pt (resumable), best.pt (best validation PSNR),
vqgan.pt (plain weights of the best model, loadable like the lab's VQGAN.pt), log.jsonl, curves.png
and reconstruction grids. --refit-codebook K exports a trained VQGAN with a K-code k-means codebook of
its training latents (models/refit.py), which stage 2 --init-from can map a transformer onto.
--fit-known-pixels N exports a trained VQGAN whose decoder also sees the known pixels around a hole
(models.vqgan.KnownPixels), fitted for N steps; its codes are the parent's, so its transformers keep working.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torchvision.utils import save_image
from tqdm import tqdm

from common import (
    UserError,
    atomic_write,
    autocast,
    check_minimum,
    load_checkpoint,
    load_state,
    load_weights,
    progress_bar,
    resolve_device,
    seed_everything,
)
from data import ImageFolderDataset, denormalize, normalize, to_uint8_image
from data.masks import pixel_hole_bank
from maskgit_inpaint.metrics import hole_psnr
from maskgit_inpaint.tokens import format_report, token_report
from models import VQGAN, Discriminator
from models.config import VQGAN_TRAIN, Config, apply_overrides, load_vqgan_file
from models.kmeans import kmeans
from models.perceptual import PerceptualLoss
from models.pretrained import (
    DEFAULT_VQGAN_CONFIG,
    check_export_destination,
    known_pixels_record,
    read_vqgan_weights,
    vqgan_config_of,
    weights_digest,
)
from models.refit import refit_record, with_codebook
from training import engine
from training.engine import HOLE_BANK_SIZE, ResumableSampler, RunLog, check_finite

PLOT_PANELS = {"reconstruction loss": ["rec_loss"], "val PSNR (dB)": ["val_psnr"],
               "codebook usage": ["codebook_usage", "val_codebook_usage"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    engine.add_run_arguments(p, config=DEFAULT_VQGAN_CONFIG, run_dir="runs/vqgan", save_every=100,
                             log_every=20)
    p.add_argument("--strict-size", action="store_true", help="refuse images that are not img_resolution")
    p.add_argument("--evaluate", metavar="DIR", help="report reconstruction PSNR and codebook use on the images "
                   "in DIR for --weights (default RUN_DIR/best.pt), save a grid there, and exit")
    p.add_argument("--weights", help="with --evaluate or --refit-codebook: VQGAN weights (exported folder, training "
                   "checkpoint or plain weights); built from the model_param they record, --config's for plain "
                   "weights")
    p.add_argument("--refit-codebook", type=int, metavar="K",
                   help="k-means the training latents of --weights into K codes and export that VQGAN at --export")
    p.add_argument("--refit-decoder-steps", type=int, default=0, metavar="N",
                   help="with --refit-codebook: fine-tune the decoder on the new codes for N steps (default: 0)")
    p.add_argument("--fit-known-pixels", type=int, metavar="N",
                   help="give the decoder of --weights the known pixels around a hole, fit it for N steps on "
                        "generated holes, and export that VQGAN at --export (its codes stay those of --weights)")
    args = p.parse_args(argv)
    if args.refit_codebook is not None and args.fit_known_pixels is not None:
        raise UserError("--refit-codebook and --fit-known-pixels are two runs: refit first, then fit the refit")
    if args.weights is not None and not args.evaluate and args.refit_codebook is None and args.fit_known_pixels is None:
        raise UserError("--weights goes with --evaluate DIR, --refit-codebook K or --fit-known-pixels N (it names the "
                        "weights to evaluate, refit or fit); training starts from scratch or, with --resume, from "
                        "RUN_DIR/last.pt")
    return args


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
    picks = torch.randint(len(recent_latents), (len(dead),), generator=generator).to(recent_latents.device)
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


def weights_config(weights: str | Path, config: Config, config_path: str) -> dict:
    """The model_param of the VQGAN `weights` (vqgan_config_of; `config`'s for plain weights), with a
    note when it is not --config's: the weights decide the architecture, --config the rest."""
    cfg = vqgan_config_of(weights, config.model)
    if cfg != config.model:
        print(f"note: {weights} records its own model_param, which differs from that of --config {config_path}; "
              "building the VQGAN from the one it records")
    return cfg


def evaluate(config: Config, weights: str | Path, folder: str, args: argparse.Namespace) -> None:
    """Reconstruction PSNR and codebook use of trained weights on a folder of images."""
    cfg = weights_config(weights, config, args.config)
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
    report = token_report(vqgan, loader, [f.stem for f in dataset.files], cfg["mean"], cfg["std"], device)
    print(format_report(report))
    report |= {"folder": str(folder), "images": len(dataset), "psnr": psnr, "codes_used": int((counts > 0).sum()),
               "num_codes": len(counts), "perplexity": perplexity}
    path = Path(args.run_dir) / f"tokens_{Path(folder).name}.json"
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"token report: {path}")


@torch.no_grad()
def training_latents(vqgan: VQGAN, dataset: ImageFolderDataset, flip: bool, device: torch.device) -> torch.Tensor:
    """The continuous latents (N * views * h * w, C) of every image, and of its mirror image when `flip`."""
    latents = []
    for images in DataLoader(dataset, batch_size=64):
        images = images.to(device)
        for view in [images, images.flip(-1)] if flip else [images]:
            latents.append(vqgan.encode_latents(view).permute(0, 2, 3, 1).flatten(0, 2))  # (B*h*w, C)
    return torch.cat(latents)


KNOWN_WEIGHT = 0.1  # --fit-known-pixels: the known pixels' share of the loss (decoding pastes them back anyway)


def reconstruction_loss(images: torch.Tensor, decoded: torch.Tensor, l2_weight: float,
                        hole: torch.Tensor | None = None) -> torch.Tensor:
    """L1 + l2_weight * L2 per pixel, averaged; with `hole` (B, 1, H, W) bool, the hole's mean plus
    KNOWN_WEIGHT times the known pixels' mean."""
    error = decoded - images
    per_pixel = error.abs() + l2_weight * error ** 2  # (B, C, H, W)
    if hole is None:
        return per_pixel.mean()
    hole = hole.expand_as(per_pixel)
    return per_pixel[hole].mean() + KNOWN_WEIGHT * per_pixel[~hole].mean()


def finetune_decoder(vqgan: VQGAN, dataset: ImageFolderDataset, steps: int, tcfg: dict, seed: int,
                     device: torch.device, holes: torch.Tensor | None = None) -> None:
    """`steps` steps of the decoder and post_quant_conv on the codes of the frozen encoder and
    codebook, with the config's reconstruction loss, batch size and learning rate (--batch-size and
    --learning-rate override them), warmed up over warmup_steps and cosine-decayed. With `holes`
    (M, H, W) bool, each image gets one of them at random, the decoder also sees the pixels around it
    (its KnownPixels is fitted too), and the loss is reconstruction_loss's for a hole."""
    modules = [vqgan.decoder, vqgan.post_quant_conv] + ([vqgan.known_pixels] if holes is not None else [])
    opt = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=tcfg["learning_rate"],
                           betas=tuple(tcfg["betas"]))
    schedule = engine.lr_scheduler(opt, steps, tcfg["warmup_steps"])
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=tcfg["batch_size"], shuffle=True, drop_last=True, generator=generator)
    batches = (images for _ in range(steps) for images in loader)  # as many epochs as needed
    for _, images in zip(range(steps), progress_bar(batches, total=steps, desc="decoder", unit="step")):
        images = random_flip(images.to(device)) if tcfg["flip"] else images.to(device)
        with torch.no_grad():
            z_q = vqgan.encode(images)[0]
        hole = None
        if holes is not None:
            hole = holes[torch.randint(len(holes), (len(images),), generator=generator)][:, None].to(device)
        loss = reconstruction_loss(images, vqgan.decode(z_q, images, hole), tcfg["l2_weight"], hole)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()


@dataclass
class Derived:
    """What a VQGAN made from a trained one (--refit-codebook, --fit-known-pixels) starts from."""
    parent: VQGAN
    digest: str          # the parent's weights digest
    origin: str          # what the export records: the run's kind and the parent's digest
    tcfg: dict
    device: torch.device
    train_set: ImageFolderDataset
    val_set: ImageFolderDataset


def derive(config: Config, args: argparse.Namespace, flag: str, kind: str, model_changes: dict) -> Derived:
    """The checks and inputs of a run that exports a VQGAN made from --weights at --export: both
    given, the destination free for the origin `kind` + the parent's digest (an earlier export of
    the same kind from the same parent may be replaced), the parent built from the model_param it
    records with `model_changes` (a KnownPixels it lacks starts as a new one), the train_param with
    the flags' overrides, the device and the datasets."""
    tcfg = apply_overrides(config.train, VQGAN_TRAIN, {"batch_size": args.batch_size,
                                                       "learning_rate": args.learning_rate})
    if not args.weights or not args.export:
        raise UserError(f"{flag} needs --weights (the trained VQGAN) and --export (the new folder)")
    state = read_vqgan_weights(args.weights)  # read once: for its digest and to load
    digest = weights_digest(state)
    cfg = {**weights_config(args.weights, config, args.config), **model_changes}
    origin = f"{kind}:{digest}"
    check_export_destination(args.export, "--export", "vqgan", origin,
                             [args.weights, args.config, *args.train_path, args.val_path], args.overwrite)
    device = resolve_device(args.device)
    seed_everything(args.random_seed)
    parent = VQGAN(cfg).to(device)
    fresh = {k: v for k, v in parent.state_dict().items() if k.startswith("known_pixels.")}
    load_state(parent, {**fresh, **state}, args.weights)
    train_set, val_set = (ImageFolderDataset(path, cfg["mean"], cfg["std"], size=cfg["img_resolution"])
                          for path in (args.train_path, args.val_path))
    return Derived(parent, digest, origin, tcfg, device, train_set, val_set)


def refit(config: Config, args: argparse.Namespace) -> None:
    """--refit-codebook K: the VQGAN --weights with its codebook replaced by the k-means centroids of
    its training latents, the decoder optionally fine-tuned on the new codes, exported at --export
    with a record of its parent; the val reconstruction PSNR before and after."""
    k = args.refit_codebook
    check_minimum(args, 1, "--refit-codebook")
    check_minimum(args, 0, "--refit-decoder-steps")
    d = derive(config, args, "--refit-codebook", "refit", {})
    cfg = d.parent.cfg
    latents = training_latents(d.parent, d.train_set, d.tcfg["flip"], d.device)
    if k > len(latents):
        raise UserError(f"--refit-codebook {k}: the training images have only {len(latents)} latents")
    fit = kmeans(latents, k, seed=args.random_seed)
    print(f"k-means of {len(latents)} training latents into {k} codes: {fit.iterations} iterations, "
          f"mean squared error {fit.inertia / latents.numel():.4f} per latent dimension")
    vqgan = with_codebook(d.parent, fit.centroids.to(d.device))
    val_psnr = lambda model: validate(model, DataLoader(d.val_set, batch_size=64), d.device, cfg["mean"], cfg["std"],
                                      None)[0]
    line = (f"{args.val_path}: reconstruction PSNR {val_psnr(d.parent):.2f} dB with the "
            f"{cfg['num_codebook_vectors']} codes of {args.weights}, {val_psnr(vqgan):.2f} dB with the {k} refit codes")
    if args.refit_decoder_steps:
        finetune_decoder(vqgan, d.train_set, args.refit_decoder_steps, d.tcfg, args.random_seed, d.device)
        line += f", {val_psnr(vqgan):.2f} dB after {args.refit_decoder_steps} decoder steps"
    print(line)
    engine.export(vqgan, {"vqgan": vqgan.state_dict()}, "vqgan", args.export, "vqgan", vqgan.cfg, args.train_path,
                  d.origin,
                  refit=refit_record(args.weights, d.digest, args.export, k, args.refit_decoder_steps))


@torch.no_grad()
def own_code_hole_psnr(vqgan: VQGAN, dataset: ImageFolderDataset, device: torch.device) -> float:
    """Mean hole PSNR (dB) of every val image with its val hole (engine.val_inpainting_set), decoded
    from the image's own codes and its known pixels: what a known-pixel decoder adds when the tokens
    are right."""
    vqgan.eval()
    items, gt = engine.val_inpainting_set(dataset, len(dataset))
    psnrs = []
    for start in range(0, len(items), 64):
        batch, truth = items[start:start + 64], gt[start:start + 64]
        known = torch.stack([image for image, _, _ in batch]).to(device)  # (B, 3, H, W), hole gray
        holes = torch.stack([hole for _, hole, _ in batch])  # (B, 1, H, W) bool
        codes = vqgan.encode(normalize(truth, dataset.mean, dataset.std).to(device))[0]
        decoded = to_uint8_image(vqgan.decode(codes, known, holes.to(device)), dataset.mean, dataset.std)
        psnrs += [hole_psnr(out, ref, hole) for out, ref, hole in zip(decoded, truth, holes[:, 0].numpy())]
    return float(np.mean(psnrs))


def fit_known_pixels(config: Config, args: argparse.Namespace) -> None:
    """--fit-known-pixels N: the VQGAN --weights with a known-pixel decoder (models.vqgan.KnownPixels),
    the decoder, post_quant_conv and KnownPixels fitted for N steps on generated holes (the shapes
    stage 2 trains on) while the encoder and codebook stay, exported at --export with a record of
    its parent; the val hole PSNR from the images' own codes before and after. --weights may be a
    known-pixel VQGAN already (a longer fit): the record then names the VQGAN its tokens come from,
    that fit's parent, so that the transformers trained on them keep loading with it, and counts
    the steps of both fits."""
    check_minimum(args, 1, "--fit-known-pixels")
    d = derive(config, args, "--fit-known-pixels", "known-pixels", {"known_pixels": True})
    earlier = known_pixels_record(args.weights)  # {} unless --weights is a known-pixel fit already
    before = own_code_hole_psnr(d.parent, d.val_set, d.device)
    holes = torch.from_numpy(pixel_hole_bank(HOLE_BANK_SIZE, d.parent.cfg["img_resolution"], args.random_seed))
    finetune_decoder(d.parent, d.train_set, args.fit_known_pixels, d.tcfg, args.random_seed, d.device, holes)
    after = own_code_hole_psnr(d.parent, d.val_set, d.device)
    print(f"{args.val_path}: hole PSNR from the images' own codes {before:.2f} dB before, {after:.2f} dB after "
          f"{args.fit_known_pixels} steps with the known pixels")
    engine.export(d.parent, {"vqgan": d.parent.state_dict()}, "vqgan", args.export, "vqgan", d.parent.cfg,
                  args.train_path, d.origin,
                  known_pixels={"from_digest": earlier.get("from_digest", d.digest),
                                "steps": earlier.get("steps", 0) + args.fit_known_pixels,
                                "val_hole_psnr": {"before": round(before, 2), "after": round(after, 2)}})


@dataclass
class Stage1:
    """What a step trains: the VQGAN and the PatchGAN (bare, and wrapped for DDP), their optimizers
    and LR schedules, and the optional perceptual loss."""
    vqgan: VQGAN
    disc: Discriminator
    model: nn.Module       # the VQGAN, under DDP when distributed
    disc_model: nn.Module  # the discriminator, likewise
    opt_vq: torch.optim.Optimizer
    opt_disc: torch.optim.Optimizer
    sched_vq: torch.optim.lr_scheduler.LRScheduler
    sched_disc: torch.optim.lr_scheduler.LRScheduler
    perceptual: PerceptualLoss | None
    best_psnr: float = -math.inf
    counts: torch.Tensor | None = None        # (K,) code use since the last re-init
    epoch_counts: torch.Tensor | None = None  # (K,) code use this epoch
    code_rng: torch.Generator | None = None   # draws the encoder outputs that renew dead codes
    losses: dict[str, float] = field(default_factory=dict)  # the last step's
    renewed: int = 0  # codes the last step renewed

    def parts(self) -> dict[str, engine.Stateful]:
        """The checkpoint keys of what a resume must restore."""
        return {"vqgan": self.vqgan, "discriminator": self.disc, "opt_vq": self.opt_vq, "opt_disc": self.opt_disc,
                "sched_vq": self.sched_vq, "sched_disc": self.sched_disc}


def build(cfg: dict, tcfg: dict, device: torch.device, total_steps: int) -> Stage1:
    vqgan = VQGAN(cfg).to(device)
    disc = Discriminator(cfg["image_channels"]).to(device)
    perceptual = None
    if tcfg["perceptual_weight"] > 0:
        perceptual = PerceptualLoss(tcfg["perceptual_weights"], cfg["mean"], cfg["std"]).to(device)
    opt_vq = torch.optim.Adam(vqgan.parameters(), lr=tcfg["learning_rate"], betas=tuple(tcfg["betas"]))
    opt_disc = torch.optim.Adam(disc.parameters(), lr=tcfg["learning_rate"], betas=tuple(tcfg["betas"]))
    return Stage1(vqgan, disc, vqgan, disc, opt_vq, opt_disc,
                  engine.lr_scheduler(opt_vq, total_steps, tcfg["warmup_steps"]),
                  engine.lr_scheduler(opt_disc, total_steps, tcfg["warmup_steps"]), perceptual)


def random_flip(images: torch.Tensor) -> torch.Tensor:
    """Mirror each image (B, 3, H, W) with probability 1/2. The coins come from the global RNG, which
    checkpoints save, so that a resumed run draws the same flips."""
    flip = (torch.rand(len(images)) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def train_step(s: Stage1, images: torch.Tensor, step: int, tcfg: dict, last_path: Path, world: int = 1
               ) -> dict[str, torch.Tensor]:
    """One optimizer step of the VQGAN and, once the GAN is on, of the discriminator, on images
    (B, 3, H, W). Returns the losses and the chosen code indices (B*h*w,)."""
    device = images.device
    gan_on = step >= tcfg["disc_start"] and tcfg["disc_weight"] > 0
    with autocast(device):
        decoded, indices, q_loss = s.model(images)
        rec_loss = (images - decoded).abs().mean()
        if tcfg["l2_weight"]:
            rec_loss = rec_loss + tcfg["l2_weight"] * ((images - decoded) ** 2).mean()
        if s.perceptual is not None:
            rec_loss = rec_loss + tcfg["perceptual_weight"] * s.perceptual(images, decoded)
        loss = rec_loss + q_loss
        g_loss = torch.zeros((), device=device)
        if gan_on:
            s.disc.requires_grad_(False)
            g_loss = generator_loss(tcfg["disc_loss"], s.disc(decoded))
            s.disc.requires_grad_(True)
            weight = adaptive_weight(rec_loss, g_loss, s.vqgan.last_layer_weight())
            loss = loss + tcfg["disc_weight"] * weight * g_loss
    check_finite(loss, step, last_path, world)  # every rank stops together
    s.opt_vq.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(s.vqgan.parameters(), tcfg["grad_clip"])
    s.opt_vq.step()
    s.sched_vq.step()
    d_loss = torch.zeros(())
    if gan_on:
        with autocast(device):
            real_logits, fake_logits = s.disc_model(torch.cat([images, decoded.detach()])).chunk(2)
            d_loss = gan_losses(tcfg["disc_loss"], real_logits, fake_logits)
        s.opt_disc.zero_grad(set_to_none=True)
        d_loss.backward()
        s.opt_disc.step()
        s.sched_disc.step()
    return {"rec_loss": rec_loss, "q_loss": q_loss, "g_loss": g_loss, "d_loss": d_loss, "indices": indices}


def renew_dead_codes(vqgan: VQGAN, counts: torch.Tensor, images: torch.Tensor, code_rng: torch.Generator,
                     is_main: bool, world: int) -> int:
    """Every `reinit_every` steps: rank 0 moves the codes no rank used since the last time onto
    encoder outputs of its batch, and sends the codebook to the others. Resets `counts`."""
    if world > 1:  # on the devices' backend (NCCL reduces CUDA tensors only)
        reduced = counts.to(images.device)
        torch.distributed.all_reduce(reduced)
        counts.copy_(reduced.cpu())
    renewed = 0
    if is_main:
        with torch.no_grad():
            latents = vqgan.encode_latents(images).float()  # (B, C, h, w)
        renewed = reinit_dead_codes(vqgan, counts, latents.permute(0, 2, 3, 1).flatten(0, 2), code_rng)
    if world > 1:
        torch.distributed.broadcast(vqgan.codebook.embedding.weight.data, 0)
    counts.zero_()
    return renewed


def fit_batch(s: Stage1, images: torch.Tensor, step: int, tcfg: dict, last_path: Path, is_main: bool, world: int
              ) -> tuple[dict[str, str], bool]:
    """train_step on a loader's batch, then the code-use counts and dead-code renewal; returns the
    progress bar's postfix and whether codes were renewed (a step the log must show)."""
    images = images.to(next(s.vqgan.parameters()).device, non_blocking=True)
    if tcfg["flip"]:
        images = random_flip(images)
    out = train_step(s, images, step, tcfg, last_path, world)
    used = torch.bincount(out["indices"].cpu(), minlength=len(s.counts))
    s.counts += used
    s.epoch_counts += used
    s.renewed = 0
    if tcfg["reinit_dead_codes"] and (step + 1) % tcfg["reinit_every"] == 0:
        s.renewed = renew_dead_codes(s.vqgan, s.counts, images, s.code_rng, is_main, world)
    s.losses = {k: out[k].item() for k in ("rec_loss", "q_loss", "g_loss", "d_loss")}
    lr = s.sched_vq.get_last_lr()[0]
    return {"rec": f"{s.losses['rec_loss']:.4f}", "q": f"{s.losses['q_loss']:.4f}", "lr": f"{lr:.1e}"}, s.renewed > 0


def end_of_epoch(s: Stage1, val_loader: DataLoader, step: int, epoch: int, cfg: dict, run_dir: Path, log: RunLog,
                 is_main: bool) -> bool:
    """Validate at an epoch's end (or the run's): reconstruction PSNR, codebook health, log row,
    curves and a reconstruction figure. Returns whether the PSNR is the run's best."""
    device = next(s.vqgan.parameters()).device
    psnr, val_counts = validate(s.vqgan, val_loader, device, cfg["mean"], cfg["std"],
                                run_dir / f"recon_epoch{epoch + 1:03d}.png" if is_main else None)
    usage, perplexity = codebook_health(s.epoch_counts)
    val_usage, _ = codebook_health(val_counts)
    s.epoch_counts.zero_()
    improved = psnr > s.best_psnr
    s.best_psnr = max(s.best_psnr, psnr)
    log.write(step=step, epoch=epoch + 1, val_psnr=psnr, codebook_usage=usage, perplexity=perplexity,
              val_codebook_usage=val_usage)
    log.plot(run_dir / "curves.png", PLOT_PANELS)
    if is_main:
        tqdm.write(f"epoch {epoch + 1}: val PSNR {psnr:.2f} dB, codes used {usage:.1%} "
                   f"(val {val_usage:.1%}), perplexity {perplexity:.0f}")
    return improved


def train(args: argparse.Namespace, config: Config) -> tuple[VQGAN, int]:
    """Train (or continue training) the VQGAN; returns it and the number of steps done."""
    cfg = config.model
    if cfg["known_pixels"]:
        raise UserError(f"{args.config}: `known_pixels` is fitted onto a trained VQGAN (--fit-known-pixels N "
                        "--weights W --export DEST); train the VQGAN without it")
    engine.check_run_arguments(args)
    tcfg = apply_overrides(config.train, VQGAN_TRAIN, {"batch_size": args.batch_size, "epochs": args.epochs,
                                                       "learning_rate": args.learning_rate})
    run_dir = Path(args.run_dir)
    last_path = run_dir / "last.pt"
    source = engine.resume_source(run_dir, args.resume, weights=("vqgan.pt", "vqgan"))
    with engine.distributed(args.device) as (rank, world, device):
        is_main = rank == 0
        seed_everything(args.random_seed + rank)
        mean, std = cfg["mean"], cfg["std"]
        train_set = ImageFolderDataset(args.train_path, mean, std, size=cfg["img_resolution"], strict=args.strict_size)
        val_set = ImageFolderDataset(args.val_path, mean, std, size=cfg["img_resolution"], strict=args.strict_size)
        batch = tcfg["batch_size"]
        steps_per_epoch = len(train_set) // (batch * world)
        if steps_per_epoch == 0:
            raise UserError(f"{' '.join(args.train_path)} has {len(train_set)} images, fewer than one batch of "
                            f"{batch * world}")
        total_steps = steps_per_epoch * tcfg["epochs"]  # the LR schedule's length
        stop_at = total_steps if args.max_steps is None else min(total_steps, args.max_steps)
        s = build(cfg, tcfg, device, total_steps)

        step = 0
        s.counts = torch.zeros(cfg["num_codebook_vectors"], dtype=torch.long)
        s.epoch_counts = torch.zeros_like(s.counts)
        s.code_rng = torch.Generator().manual_seed(args.random_seed)
        if source is not None:
            state = load_checkpoint(source, keys=("vqgan", "discriminator", "opt_vq", "step"))
            engine.restore(state, s.parts(), rank, source, args.config, tcfg=tcfg, total_steps=total_steps,
                           stop_at=stop_at, device=device, cfg=cfg)
            step, s.best_psnr = state["step"], state["best_psnr"]
            if rank < len(state.get("code_counts", [])):
                s.counts, s.epoch_counts = state["code_counts"][rank]
            if "code_rng" in state:
                s.code_rng.set_state(state["code_rng"])
            if is_main:
                print(f"resumed from {source} at step {step}")
        log = RunLog(run_dir, enabled=is_main)
        log.truncate_after(step)
        if world > 1:
            s.model, s.disc_model = DistributedDataParallel(s.vqgan), DistributedDataParallel(s.disc)

        # loaders get their own generator: creating one must not draw from the checkpointed global RNG
        val_loader = DataLoader(val_set, batch_size=batch, num_workers=args.num_workers, generator=torch.Generator())
        step = engine.run_epochs(
            step, steps_per_epoch, stop_at, tcfg["epochs"], is_main=is_main, log=log, log_every=args.log_every,
            save_every=args.save_every, run_dir=run_dir, weights=("vqgan.pt", s.vqgan), parts=s.parts(),
            batches=lambda epoch, done: DataLoader(
                train_set, batch_size=batch, num_workers=args.num_workers, drop_last=True, generator=torch.Generator(),
                sampler=ResumableSampler(len(train_set), args.random_seed, epoch, done * batch, rank, world),
                pin_memory=device.type == "cuda"),
            train_step=lambda images, step: fit_batch(s, images, step, tcfg, last_path, is_main, world),
            log_entry=lambda step, epoch: dict(step=step, epoch=epoch, **s.losses, lr=s.sched_vq.get_last_lr()[0],
                                               reinit_codes=s.renewed),
            validate=lambda step, epoch: end_of_epoch(s, val_loader, step, epoch, cfg, run_dir, log, is_main),
            state=lambda step: engine.run_state(
                s.parts(), world, run_dir, device=device, step=step, best_psnr=s.best_psnr,
                code_counts=engine.gather_per_rank([s.counts, s.epoch_counts], world),
                code_rng=s.code_rng.get_state(), config=cfg, train_param=tcfg,
                train_path=[str(p) for p in args.train_path]))
        if is_main:
            print(f"done: {step} steps, best val PSNR {s.best_psnr:.2f} dB; "
                  f"{engine.weights_note(run_dir, 'vqgan.pt')}")
        return s.vqgan, step


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = load_vqgan_file(args.config)
    if args.refit_codebook is not None:
        refit(config, args)
    elif args.fit_known_pixels is not None:
        fit_known_pixels(config, args)
    elif args.export:
        origin = engine.check_export(args, "vqgan")
        best = engine.best_checkpoint(args.run_dir, "vqgan")
        cfg = best.get("config", config.model)
        engine.export(VQGAN(cfg), best, "vqgan", args.export, "vqgan", cfg, args.train_path, origin)
    elif args.evaluate:
        evaluate(config, args.weights or Path(args.run_dir) / "best.pt", args.evaluate, args)
    else:
        train(args, config)

