"""Stage 2: train MaskGit's bidirectional transformer by masked visual token modeling on the tokens
of a frozen stage-1 VQGAN.

    python training_transformer.py --vqgan-ckpt runs/vqgan_local/vqgan.pt --checkpoint-path runs/maskgit_local
    python training_transformer.py --vqgan-ckpt runs/vqgan_local/vqgan.pt --checkpoint-path runs/maskgit_local --resume
    torchrun --nproc_per_node 4 training_transformer.py --MaskGitConfig configs/MaskGit.yml --checkpoint-path runs/lab
    python training_transformer.py --checkpoint-path runs/maskgit_local --export checkpoints/transformer_local \
        --overwrite

The VQGAN encodes the training images (and their mirror images when `flip` is on, their colour
variants with `colour_variants`) and the validation images once into token caches under
--cache-dir, keyed by the VQGAN checkpoint, its config and the image files; an epoch then costs
transformer time only. Hyper-parameters come from the config's `train_param` section (defaults in
models/config.py); flags override them. The run folder (--checkpoint-path, or --run-dir) holds
last.pt (resumable), best.pt (highest val hole PSNR with --val-inpaint, else lowest validation
loss: best_score), transformer.pt (plain weights of the best, for load_maskgit), log.jsonl and
curves.png.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from common import (
    UserError,
    autocast,
    check_minimum,
    file_sha256,
    load_checkpoint,
    load_state,
    numerics,
    progress_bar,
    read_weights,
    save_checkpoint,
    seed_everything,
)
from data import (
    ImageFolderDataset,
    pixel_to_token_mask,
    read_image,
    to_uint8_image,
    view_pixels,
)
from data.masks import pixel_hole_bank
from maskgit_inpaint import Decoding, run_inpainting
from maskgit_inpaint.baselines import fill_baseline
from maskgit_inpaint.blending import nearest_known
from maskgit_inpaint.metrics import compute_metrics, result_metrics
from models import BidirectionalTransformer, MaskGit
from models.config import MASKGIT_TRAIN, Config, apply_overrides, load_maskgit_file
from models.maskgit import encode_images, load_maskgit, masked_token_loss
from models.pretrained import (
    DEFAULT_CONFIG,
    check_trained_on,
    read_description,
    read_vqgan_weights,
    vqgan_file_digests,
    weights_digest,
    weights_file,
)
from models.refit import map_vocabulary, refit_parent
from training import engine
from training.engine import HOLE_BANK_SIZE, ResumableSampler, RunLog, check_finite, param_groups

CACHE_VERSION = 1
ENCODE_BATCH = 64  # images per batch when encoding the token caches: no gradients, so more than a training batch
VAL_MASK_SEED = 1234  # the validation masks are the same at every validation, so epochs compare
PLOT_PANELS = {"loss (masked tokens)": ["loss", "val_loss"], "masked-token accuracy": ["acc", "val_acc"],
               "val inpainting: hole PSNR (dB)": ["val_psnr_hole", "val_iter_psnr_hole", "val_ns_psnr_hole"],
               "val inpainting: SSIM": ["val_ssim", "val_iter_ssim", "val_ns_ssim"], "learning rate": ["lr"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    engine.add_run_arguments(p, config=DEFAULT_CONFIG, run_dir="runs/maskgit", save_every=200,
                             log_every=10)
    p.add_argument("--partial", type=float, default=1.0, help="share of the training set drawn for each epoch")
    p.add_argument("--accum-grad", type=int, default=None, help="micro-batches per optimizer step")
    p.add_argument("--val-per-epoch", type=int, default=1, help="validate every N epochs (and at the last step)")
    p.add_argument("--save-per-epoch", type=int, default=0,
                   help="also keep a resumable epochNNN.pt every N epochs (0: only last.pt and best.pt)")
    p.add_argument("--start-from-epoch", type=int, default=0,
                   help="restart from the epochNNN.pt snapshot written after epoch N (see --save-per-epoch)")
    p.add_argument("--init-from", metavar="WEIGHTS", default=None,
                   help="start a new run from these transformer weights (a run's best.pt or last.pt, "
                        "transformer.pt or an exported folder), with a fresh optimizer and schedule: fine-tuning. "
                        "Weights of the VQGAN that --vqgan-ckpt is a codebook refit of are mapped onto its codes")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    p.add_argument("--vqgan-ckpt", default=None, help="stage-1 weights (default: the config's VQ_CKPT_path)")
    p.add_argument("--cache-dir", default="runs/token_cache", help="folder of the token caches, shared by runs")
    p.add_argument("--val-inpaint", type=int, default=64,
                   help="at each validation also inpaint this many val images (fixed holes) with the demo's settings "
                        "and log hole PSNR, SSIM and hole L1, beside OpenCV Navier-Stokes on the same images (0: off)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- token cache

def cache_key(vqgan_digest: str, vqgan_cfg: dict, files: list[Path], flip: bool, device: torch.device,
              colour_variants: int = 0) -> str:
    """Hash of everything the tokens depend on: VQGAN weights and config, the image files (name,
    size, modification time), the views encoded (mirror images, colour variants), and the device's
    numerics (TF32 on CUDA changes a few tokens)."""
    listing = [(f.name, st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()]]
    blob = json.dumps({"version": CACHE_VERSION, "vqgan": vqgan_digest, "config": vqgan_cfg,
                       "files": listing, "flip": flip, **({"numerics": n} if (n := numerics(device)) else {}),
                       **({"colour_variants": colour_variants} if colour_variants else {})},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_tokens(model: MaskGit, dataset: ImageFolderDataset, flip: bool, colour_variants: int, vqgan_digest: str,
                cache_dir: Path, split: str, batch_size: int, num_workers: int, device: torch.device, rank: int,
                world: int) -> torch.Tensor:
    """The (N, views, h*w) tokens of `dataset` in its training views (data.training_views), read from
    the cache or encoded and cached by rank 0, then sent to the other ranks (no shared file system needed)."""
    tokens = None
    if rank == 0:
        key = cache_key(vqgan_digest, model.vqgan.cfg, dataset.files, flip, device, colour_variants)
        path = cache_dir / f"{split}-{key[:16]}.pt"
        if path.is_file():
            try:
                cached = load_checkpoint(path)
                if cached.get("key") == key:
                    tokens = cached["tokens"]
            except UserError as err:
                print(f"rebuilding the token cache: {err}")
        if tokens is None:
            tokens = encode_images(model, dataset, flip, batch_size, num_workers, device, f"encoding {split} images",
                                   colour_variants)
            save_checkpoint({"version": CACHE_VERSION, "key": key, "files": [f.name for f in dataset.files],
                             "flip": flip, "colour_variants": colour_variants, "tokens": tokens}, path)
            print(f"token cache written: {path}")
        else:
            print(f"token cache reused: {path}")
    return engine.broadcast_from_main(tokens, world)  # the others wait while rank 0 encodes


# ----------------------------------------------------------------------------- training pieces

@torch.no_grad()
def validate(model: MaskGit, tokens: torch.Tensor, masks: torch.Tensor, batch_size: int, label_smoothing: float,
             device: torch.device, rank: int, world: int) -> dict[str, float]:
    """Validation metrics: loss and accuracy on the masked tokens of the validation set, under fixed
    masks (N, h*w). Each rank takes every world-th image; the sums are all-reduced, so every rank
    gets the totals. Returns {"val_loss", "val_acc"}, the names they have in the log."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, masked count
    for idx in torch.arange(rank, len(tokens), world).split(batch_size):
        z, mask = tokens[idx, 0].long().to(device), masks[idx].to(device)  # (B, N) each
        with autocast(device):
            logits = model.transformer(model.masked(z, mask))
        losses, correct = masked_token_loss(logits, z, mask, label_smoothing)
        sums += torch.stack([losses.sum(), correct.sum(), torch.tensor(len(losses), device=device)]).double()
    if world > 1:
        dist.all_reduce(sums)
    model.train()
    return {"val_loss": (sums[0] / sums[2]).item(), "val_acc": (sums[1] / sums[2]).item()}


def baseline_scores(items: list, gt: np.ndarray, mean: list[float], std: list[float]) -> dict[str, float]:
    """OpenCV Navier-Stokes on the val inpainting set, named like score_inpainting's figures."""
    inputs = np.stack([to_uint8_image(image[None], mean, std)[0] for image, _, _ in items])
    holes = np.stack([hole[0].numpy() for _, hole, _ in items])
    ns = compute_metrics(fill_baseline("ns", inputs, holes), gt, holes)
    return {f"val_ns_{k}": ns[k] for k in ("psnr_hole", "ssim", "l1_hole")}


ITERATIVE = Decoding(total_iter=8, readout="sample", blend="none")  # MaskGIT's own decoding, no post-processing


def score_inpainting(model: MaskGit, items: list, gt: np.ndarray, device: torch.device, batch_size: int
                     ) -> dict[str, float]:
    """Inpaint `items` with the demo's decoding settings (inpainting.py's defaults, the config's
    choice temperature) and with iterative sampled decoding (`ITERATIVE`): val hole PSNR, SSIM, hole
    L1 and masked-token accuracy of the first, the `val_iter_` figures of the second."""
    vq = model.vqgan.cfg
    model.eval()
    scores = {}
    for prefix, decoding in (("val_", Decoding()), ("val_iter_", ITERATIVE)):
        with torch.random.fork_rng(devices=[]):  # the loader draws a seed: keep the training's random stream
            result = run_inpainting(items, model, decoding, vq["mean"], vq["std"], device, batch_size, gt=gt,
                                    progress=False)
        metrics = result_metrics(result, gt)
        scores.update({f"{prefix}psnr_hole": metrics["psnr_hole"], f"{prefix}ssim": metrics["ssim"],
                       f"{prefix}l1_hole": metrics["l1_hole"]})
        if prefix == "val_":
            scores["val_inpaint_token_acc"] = metrics["masked_token_accuracy"]
    model.train()
    return scores


def best_score(metrics: dict[str, float]) -> tuple[str, float]:
    """What best.pt is chosen by, and this validation's value of it (higher is better): the hole PSNR
    of the val inpainting when it ran, which is what users see, else minus the validation loss."""
    if "val_psnr_hole" in metrics:
        return "val_psnr_hole", metrics["val_psnr_hole"]
    return "val_loss", -metrics["val_loss"]


def inpainting_summary(metrics: dict[str, float]) -> str:
    """The val inpainting figures of a validation, for the progress line ("" when not measured)."""
    if "val_psnr_hole" not in metrics:
        return ""
    return (f"; inpainting hole PSNR {metrics['val_psnr_hole']:.2f} dB, SSIM {metrics['val_ssim']:.4f}, "
            f"iterative {metrics['val_iter_psnr_hole']:.2f} dB, {metrics['val_iter_ssim']:.4f} "
            f"(Navier-Stokes {metrics['val_ns_psnr_hole']:.2f} dB, {metrics['val_ns_ssim']:.4f})")


def trained_on(path: Path, vqgan_ckpt: str | Path) -> bool:
    """Whether the --init-from weights at `path` may come from the tokens of `vqgan_ckpt`: False when
    they record another VQGAN (a run checkpoint or an exported folder does), else True."""
    if path.is_dir():
        expected = read_description(path, "maskgit").get("vqgan", {}).get("digest")
        return expected is None or weights_digest(read_vqgan_weights(vqgan_ckpt)) == expected
    if path.suffix == ".safetensors":
        return True
    checkpoint = load_checkpoint(path)  # plain weights (transformer.pt) do not say
    return "vqgan_digest" not in checkpoint or checkpoint["vqgan_digest"] in vqgan_file_digests(vqgan_ckpt)


def init_from(model: MaskGit, path: Path, vqgan_ckpt: str | Path) -> None:
    """--init-from: load transformer weights trained on the tokens of `vqgan_ckpt` or, when that is a
    codebook refit, of the VQGAN it was refit from, with the vocabulary mapped onto the refit's codes."""
    state = read_weights(path, key="model")
    if not trained_on(path, vqgan_ckpt):
        parent = refit_parent(vqgan_ckpt)
        if parent is None or not trained_on(path, parent.path):
            raise UserError(f"{path} was trained on another VQGAN than {vqgan_ckpt}; pass the VQGAN it was trained "
                            "on, or a codebook refit of it (--vqgan-ckpt)")
        state, note = map_vocabulary(state, parent.codebook, model.vqgan.codebook.vectors.detach().cpu())
        print(f"--init-from {path}: {note}")
    load_state(model.transformer, state, path)


def check_flags(args: argparse.Namespace) -> None:
    """The stage-2 flags' values (the shared ones: engine.check_run_arguments)."""
    if not 0 < args.partial <= 1:
        raise UserError(f"--partial must be in (0, 1], got {args.partial}")
    if args.val_per_epoch < 1:
        raise UserError(f"--val-per-epoch must be at least 1, got {args.val_per_epoch}")
    if args.val_inpaint < 0:
        raise UserError(f"--val-inpaint must be at least 0, got {args.val_inpaint}")
    check_minimum(args, 0, "--save-per-epoch")
    if args.resume and args.start_from_epoch:
        raise UserError("--resume (from last.pt) and --start-from-epoch (from epochNNN.pt) exclude each other")
    if args.init_from and (args.resume or args.start_from_epoch):
        raise UserError("--init-from starts a new run; --resume and --start-from-epoch continue one")
    if args.init_from and not Path(args.init_from).exists():
        raise UserError(f"--init-from: {args.init_from} not found")


# ----------------------------------------------------------------------------- training

@dataclass
class Stage2:
    """What a step trains: the MaskGit (its transformer, bare and under DDP), AdamW and its LR schedule."""
    model: MaskGit
    ddp: nn.Module  # the MaskGit, under DDP when distributed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    best_val_loss: float = math.inf
    best: dict = field(default_factory=lambda: {"by": None, "score": -math.inf})  # best.pt's criterion, score
    running: torch.Tensor = field(default_factory=lambda: torch.zeros(3))  # log interval: loss sum, acc sum, steps
    grad_norm: float = math.nan  # the last step's

    def parts(self) -> dict[str, engine.Stateful]:
        """The checkpoint keys of what a resume must restore."""
        return {"model": self.model.transformer, "optimizer": self.optimizer, "scheduler": self.scheduler}


def hole_regions(hole_bank: torch.Tensor | None, share: float, batch: int
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Where each sample's training mask may fall (B, h*w) bool: with probability `share` inside a
    hole drawn from `hole_bank` (K, h*w), else anywhere; and the bank index of each sample's hole
    (B,), -1 for anywhere. (None, None) when there is no bank."""
    if hole_bank is None:
        return None, None
    picks = torch.randint(len(hole_bank), (batch,))
    inside = torch.rand(batch) < share
    return torch.where(inside[:, None], hole_bank[picks], True), torch.where(inside, picks, -1)


class HoleContext:
    """The tokens decoding shows the transformer around a hole: each training image (a view of it)
    with a bank hole pre-filled by its nearest known pixels, encoded by the frozen VQGAN. Training
    on them (hole_context: prefilled) teaches the transformer the codes it will see at inference,
    which the hole changes near its edge, while the targets stay the clean image's tokens."""

    def __init__(self, images: torch.Tensor, pixel_bank: np.ndarray, mean: list[float], std: list[float],
                 flip: bool):
        self.images = images  # (N, 3, H, W) uint8
        self.flip = flip  # whether the token views include mirror images (data.training_views)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        nearest = [nearest_known(hole) for hole in pixel_bank]
        width = pixel_bank.shape[-1]
        self.sources = torch.from_numpy(np.stack([(r * width + c).reshape(-1) for r, c in nearest])
                                        .astype(np.int32))  # (K, H*W): the pixel each pixel is filled from

    @torch.no_grad()
    def tokens(self, model: MaskGit, z: torch.Tensor, idx: torch.Tensor, views: torch.Tensor, picks: torch.Tensor
               ) -> torch.Tensor:
        """`z` (B, N) with the rows whose pick is a hole (>= 0) replaced by the tokens of image
        `idx`, view `views` (data.view_pixels), pre-filled around bank hole `picks`."""
        rows = (picks >= 0).nonzero().flatten()
        if len(rows) == 0:
            return z
        images = view_pixels(self.images[idx[rows]].float() / 255, views[rows], self.flip)  # (R, 3, H, W)
        src = self.sources[picks[rows]].long()[:, None].expand(-1, 3, -1)  # (R, 3, H*W)
        filled = images.flatten(2).gather(2, src).view_as(images)
        device = z.device
        _, context = model.encode_to_z(((filled - self.mean) / self.std).to(device))  # (R, N)
        return z.index_copy(0, rows.to(device), context.to(z.dtype))


def token_shifts(batch: int, side: int, max_shift: int) -> torch.Tensor:
    """For each of `batch` samples a random move of its (side x side) token grid by up to
    `max_shift` whole tokens down/right or up/left: the index (B, side*side) of the token each
    position takes, the edge row or column repeated into the uncovered strip. An emoji's edge is
    mostly background, so a moved grid is the tokens of the same picture placed elsewhere."""
    moves = torch.randint(-max_shift, max_shift + 1, (batch, 2, 1))  # (B, [rows, cols], 1)
    pos = torch.arange(side)
    rows, cols = (pos - moves[:, 0]).clamp(0, side - 1), (pos - moves[:, 1]).clamp(0, side - 1)  # (B, side)
    return (rows[:, :, None] * side + cols[:, None, :]).flatten(1)


def load_uint8_images(dataset: ImageFolderDataset) -> torch.Tensor:
    """Every image of `dataset` as (N, 3, H, W) uint8, for on-the-fly pre-filled encodings."""
    return torch.stack([torch.from_numpy(read_image(f, "RGB", dataset.size, dataset.fit)).permute(2, 0, 1)
                        for f in progress_bar(dataset.files, desc="reading training images", unit="img")])


def train_step(s: Stage2, tokens: torch.Tensor, micro_batches: torch.Tensor, tcfg: dict, label_smoothing: float,
               step: int, last_path: Path, world: int, hole_bank: torch.Tensor | None = None,
               hole_context: HoleContext | None = None) -> dict[str, torch.Tensor]:
    """One optimizer step over `micro_batches` (accum, B) rows of `tokens` (N, views, h*w), one
    random view per row, masked anywhere or inside holes of `hole_bank` (see hole_regions), shown
    with the pre-filled context of `hole_context` around the hole when given, and moved by whole
    tokens when `shift_tokens` is on (see token_shifts).
    Returns the cross-entropy (mean over micro-batches and ranks), the masked-token accuracy and the
    gradient norm before clipping."""
    device, accum = next(s.model.transformer.parameters()).device, len(micro_batches)
    stats = torch.zeros(3, device=device)  # loss (sum of micro-batch means), correct, masked count
    for i, idx in enumerate(micro_batches):
        views = torch.randint(tokens.shape[1], (len(idx),))
        z = tokens[idx, views].long().to(device, non_blocking=True)  # (B, h*w)
        within, picks = hole_regions(hole_bank, tcfg["hole_mask_share"], len(idx))
        context = None if hole_context is None else hole_context.tokens(s.model, z, idx, views, picks)
        if tcfg["shift_tokens"]:
            source = token_shifts(len(idx), s.model.vqgan.latent_resolution, tcfg["shift_tokens"]).to(device)
            z, context, within = (None if t is None else t.to(device).gather(1, source)
                                  for t in (z, context, within))
        with s.ddp.no_sync() if world > 1 and i < accum - 1 else nullcontext():
            with autocast(device):
                logits, targets, mask = s.ddp(z, within=within, context=context)  # logits (B, h*w, vocab)
            losses, correct = masked_token_loss(logits, targets, mask, label_smoothing)
            loss = losses.mean()
            (loss / accum).backward()
        stats += torch.stack([losses.mean().detach(), correct.sum(), mask.sum()]).float()
    if world > 1:
        dist.all_reduce(stats)
    loss = stats[0] / (accum * world)
    check_finite(loss, step, last_path, world)
    grad_norm = torch.nn.utils.clip_grad_norm_(s.model.transformer.parameters(), tcfg["grad_clip"])
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.scheduler.step()
    return {"loss": loss, "acc": stats[1] / stats[2], "grad_norm": grad_norm}


def stage1_weights(args: argparse.Namespace, cfg: dict) -> str:
    """The VQGAN the tokens come from: --vqgan-ckpt, else the config's VQ_CKPT_path; it must exist."""
    vqgan_ckpt = args.vqgan_ckpt or cfg["VQ_Configs"]["VQ_CKPT_path"]
    if not vqgan_ckpt:
        raise UserError(f"{args.config}: no VQ_Configs.VQ_CKPT_path; pass --vqgan-ckpt")
    if not Path(vqgan_ckpt).exists():
        raise UserError(f"VQGAN checkpoint not found: {vqgan_ckpt} (train stage 1 with training_vqgan.py, then "
                        "pass --vqgan-ckpt RUN_DIR/vqgan.pt or set VQ_CKPT_path in the config)")
    return vqgan_ckpt


def hole_sampling(tcfg: dict, vq: dict, train_set: ImageFolderDataset, seed: int
                  ) -> tuple[torch.Tensor | None, HoleContext | None]:
    """The token hole bank (K, h*w) bool the training masks may fall in, and the pre-filled hole
    context, each None when the config does not ask for it."""
    hole_bank = hole_context = None
    if tcfg["hole_mask_share"] > 0:
        pixel_bank = pixel_hole_bank(HOLE_BANK_SIZE, vq["img_resolution"], seed)  # (K, H, W)
        hole_bank = pixel_to_token_mask(torch.from_numpy(pixel_bank)[:, None], vq["latent_resolution"],
                                        tcfg["hole_token_share"])  # (K, h*w)
        keep = hole_bank.any(1)  # a thin stroke may have no token above the share: nothing to mask
        pixel_bank, hole_bank = pixel_bank[keep.numpy()], hole_bank[keep]
        if tcfg["hole_context"] == "prefilled":
            hole_context = HoleContext(load_uint8_images(train_set), pixel_bank, vq["mean"], vq["std"],
                                       tcfg["flip"])
    return hole_bank, hole_context


def resume(s: Stage2, source: Path, args: argparse.Namespace, vqgan_ckpt: str, rank: int, steps_per_epoch: int,
           **restore_args: object) -> int:
    """Restore a run from `source` into `s` (see engine.restore); returns its step."""
    state = load_checkpoint(source, keys=("model", "optimizer", "vqgan_digest", "step"))
    check_trained_on(state, source, vqgan_ckpt)
    engine.restore(state, s.parts(), rank, source, args.config, **restore_args)
    s.best_val_loss = state["best_val_loss"]
    s.best = state.get("best", {"by": "val_loss", "score": -s.best_val_loss})  # runs before best_score
    if rank == 0:
        print(f"resumed from {source} at step {state['step']}")
        if state["steps_per_epoch"] != steps_per_epoch:
            print(f"warning: {steps_per_epoch} steps per epoch now, {state['steps_per_epoch']} before "
                  "(--partial, data or process count changed): the rest of the "
                  "epoch will not be the samples the run had left")
    return state["step"]


def fit_batch(s: Stage2, out: dict[str, torch.Tensor]) -> dict[str, str]:
    """Add a train_step's loss and accuracy to the log interval's sums; returns the bar's postfix."""
    loss, acc, lr = out["loss"].item(), out["acc"].item(), s.scheduler.get_last_lr()[0]
    s.running += torch.tensor([loss, acc, 1.0])
    s.grad_norm = out["grad_norm"].item()
    return {"loss": f"{loss:.3f}", "acc": f"{acc:.3f}", "lr": f"{lr:.1e}"}


def log_row(s: Stage2, step: int, steps_per_epoch: int) -> dict:
    """The log interval's mean loss and accuracy (the sums restart), the LR and the last grad norm."""
    row = dict(step=step, epoch=step / steps_per_epoch, loss=(s.running[0] / s.running[2]).item(),
               acc=(s.running[1] / s.running[2]).item(), lr=s.scheduler.get_last_lr()[0], grad_norm=s.grad_norm)
    s.running.zero_()
    return row


def initial_weights(model: MaskGit, args: argparse.Namespace, embedding_init: str, vqgan_ckpt: str,
                    resuming: bool) -> None:
    """--init-from's transformer, else (on a new run, when the config asks) token embeddings from
    the VQGAN's codebook."""
    if args.init_from:
        init_from(model, Path(args.init_from), vqgan_ckpt)
    elif embedding_init == "codebook" and not resuming:
        model.transformer.init_token_embedding(model.vqgan.codebook.vectors.detach(),
                                               torch.Generator().manual_seed(args.random_seed))


def inpainting_check(val_set: ImageFolderDataset, count: int, vq: dict) -> tuple[list, object, dict]:
    """--val-inpaint's items, their ground truth, and the cv2 baseline's scores on them."""
    items, gt = engine.val_inpainting_set(val_set, count)
    return items, gt, baseline_scores(items, gt, vq["mean"], vq["std"])


def validation_metrics(model: MaskGit, val_tokens: torch.Tensor, val_masks: torch.Tensor, batch: int,
                       label_smoothing: float, device: torch.device, rank: int, world: int,
                       inpainting: tuple[list, object, dict]) -> dict:
    """The masked-token validation, plus the inpainting scores when `inpainting` has items."""
    metrics = validate(model, val_tokens, val_masks, batch, label_smoothing, device, rank, world)
    items, gt, ns_scores = inpainting
    if items:
        metrics.update(score_inpainting(model, items, gt, device, batch), **ns_scores)
    return metrics


def end_of_validation(s: Stage2, metrics: dict, step: int, steps_per_epoch: int, run_dir: Path, log: RunLog,
                      is_main: bool) -> bool:
    """Record a validation's `metrics`: best criterion and score, log row, curves, summary line.
    Returns whether best.pt is to be rewritten."""
    s.best_val_loss = min(s.best_val_loss, metrics["val_loss"])
    by, score = best_score(metrics)
    improved = by != s.best["by"] or score > s.best["score"]  # a new criterion starts afresh
    s.best = {"by": by, "score": score} if improved else s.best
    log.write(step=step, epoch=step / steps_per_epoch, **metrics)
    log.plot(run_dir / "curves.png", PLOT_PANELS)
    if is_main:
        tqdm.write(f"step {step} (epoch {step / steps_per_epoch:.2f}): val loss "
                   f"{metrics['val_loss']:.4f}, masked-token accuracy {metrics['val_acc']:.1%}"
                   + (" (best)" if improved else "") + inpainting_summary(metrics))
    return improved


def train(args: argparse.Namespace, config: Config | None = None) -> tuple[MaskGit, int]:
    """Train (or continue training) the transformer; returns the model and the number of steps done."""
    config = config or load_maskgit_file(args.config)
    cfg = config.model
    engine.check_run_arguments(args, "--checkpoint-path")
    tcfg = apply_overrides(config.train, MASKGIT_TRAIN, {"batch_size": args.batch_size, "epochs": args.epochs,
                                                         "learning_rate": args.learning_rate,
                                                         "accum_grad": args.accum_grad})
    check_flags(args)
    vqgan_ckpt = stage1_weights(args, cfg)
    run_dir, cache_dir = Path(args.run_dir), Path(args.cache_dir)
    last_path = run_dir / "last.pt"
    source = engine.resume_source(run_dir, args.resume,
                                  run_dir / f"epoch{args.start_from_epoch:03d}.pt" if args.start_from_epoch else None,
                                  weights=("transformer.pt", "model"))
    with engine.distributed(args.device) as (rank, world, device):
        is_main = rank == 0
        batch, accum = tcfg["batch_size"], tcfg["accum_grad"]
        vq = cfg["vqgan"]
        train_set, val_set = (ImageFolderDataset(path, vq["mean"], vq["std"], size=vq["img_resolution"])
                              for path in (args.train_path, args.val_path))
        per_step = batch * accum  # samples per rank per optimizer step
        steps_per_epoch = int(len(train_set) * args.partial) // (per_step * world)
        if steps_per_epoch == 0:
            raise UserError(f"{' '.join(args.train_path)}: {int(len(train_set) * args.partial)} images (--partial "
                            f"{args.partial}) are fewer than one step of {per_step * world}")
        total_steps = steps_per_epoch * tcfg["epochs"]  # the LR schedule's length
        stop_at = total_steps if args.max_steps is None else min(total_steps, args.max_steps)

        seed_everything(args.random_seed)  # the same initial weights on every rank
        model = load_maskgit(cfg, vqgan_ckpt=vqgan_ckpt, device=device)
        vqgan_digest = file_sha256(weights_file(vqgan_ckpt))
        encoding = (max(batch, ENCODE_BATCH), args.num_workers, device, rank, world)
        train_tokens = load_tokens(model, train_set, tcfg["flip"], tcfg["colour_variants"], vqgan_digest, cache_dir,
                                   "train", *encoding)
        val_tokens = load_tokens(model, val_set, False, 0, vqgan_digest, cache_dir, "val", *encoding)  # (N, 1, h*w)
        val_masks = model.random_mask(len(val_tokens), torch.device("cpu"),
                                      torch.Generator().manual_seed(VAL_MASK_SEED))  # (N_val, h*w) bool
        initial_weights(model, args, tcfg["embedding_init"], vqgan_ckpt, source is not None)
        hole_bank, hole_context = hole_sampling(tcfg, vq, train_set, args.random_seed)
        inpainting = inpainting_check(val_set, args.val_inpaint, vq) if is_main and args.val_inpaint else ([], None, {})
        seed_everything(args.random_seed + rank)  # masks, views and dropout differ between ranks
        optimizer = torch.optim.AdamW(param_groups(model.transformer, tcfg["weight_decay"]),
                                      lr=tcfg["learning_rate"], betas=tuple(tcfg["betas"]))
        s = Stage2(model, model, optimizer, engine.lr_scheduler(optimizer, total_steps, tcfg["warmup_steps"]))
        step = 0 if source is None else resume(s, source, args, vqgan_ckpt, rank, steps_per_epoch, tcfg=tcfg,
                                                total_steps=total_steps, stop_at=stop_at, device=device, cfg=cfg)
        log = RunLog(run_dir, enabled=is_main)
        log.truncate_after(step)
        if args.compile:
            model.transformer.compile()
        if world > 1:
            s.ddp = DistributedDataParallel(model)
        model.train()
        if is_main:
            print(f"{len(train_tokens)} training images x {train_tokens.shape[1]} view(s), {len(val_tokens)} val; "
                  f"{sum(p.numel() for p in model.transformer.parameters()) / 1e6:.1f}M parameters; {steps_per_epoch} "
                  f"steps/epoch of {per_step * world} images, {total_steps} steps in all, on {world} x {device}")
        label_smoothing = cfg["label_smoothing"]
        step = engine.run_epochs(
            step, steps_per_epoch, stop_at, tcfg["epochs"], is_main=is_main, log=log, log_every=args.log_every,
            save_every=args.save_every, run_dir=run_dir, weights=("transformer.pt", model.transformer),
            parts=s.parts(), val_every=args.val_per_epoch, snapshot_every=args.save_per_epoch,
            batches=lambda epoch, done: torch.tensor(ResumableSampler(
                len(train_tokens), args.random_seed, epoch, done * per_step, rank, world).indices
            )[:(steps_per_epoch - done) * per_step].view(-1, accum, batch),  # (steps, accum, B)
            train_step=lambda micro_batches, step: (fit_batch(s, train_step(s, train_tokens, micro_batches, tcfg,
                label_smoothing, step, last_path, world, hole_bank, hole_context)),
                (step + 1) % steps_per_epoch == 0 or step + 1 >= stop_at),  # the log closes epochs and the run
            log_entry=lambda step, epoch: log_row(s, step, steps_per_epoch),
            validate=lambda step, epoch: end_of_validation(s, validation_metrics(
                model, val_tokens, val_masks, batch, label_smoothing, device, rank, world, inpainting),
                step, steps_per_epoch, run_dir, log, is_main),
            state=lambda step: engine.run_state(
                s.parts(), world, run_dir, device=device, step=step, epoch=step / steps_per_epoch,
                best_val_loss=s.best_val_loss, best=s.best, steps_per_epoch=steps_per_epoch,
                vqgan_digest=vqgan_digest, config=cfg, train_param=tcfg, train_path=[str(p) for p in args.train_path]))
        if is_main:
            print(f"done: {step} steps, best val loss {s.best_val_loss:.4f}, best.pt by {s.best['by']}; "
                  f"{engine.weights_note(run_dir, 'transformer.pt')}")
        return model, step


def export(args: argparse.Namespace) -> None:
    """--export DEST: the best transformer of the run as an exported folder that names its VQGAN
    (--vqgan-ckpt, else the VQ_CKPT_path of the run's config, which best.pt carries) by path and
    content digest, after checking that this VQGAN is the file the run was trained on. The config
    file (--config) is read only for runs whose best.pt carries none."""
    origin = engine.check_export(args, "maskgit", args.vqgan_ckpt)
    best = engine.best_checkpoint(args.run_dir, "model")
    model_cfg = best["config"] if "config" in best else load_maskgit_file(args.config).model
    vqgan_path = args.vqgan_ckpt or model_cfg["VQ_Configs"]["VQ_CKPT_path"]
    if not vqgan_path or not Path(vqgan_path).exists():
        raise UserError(f"VQGAN weights not found: {vqgan_path} (pass --vqgan-ckpt, the VQGAN the run was trained on)")
    engine.check_export(args, "maskgit", vqgan_path)  # the run's own VQGAN is an input too
    check_trained_on(best, f"{args.run_dir}/best.pt", vqgan_path)
    cfg = {k: v for k, v in model_cfg.items() if k != "VQ_Configs"}
    relative = os.path.relpath(Path(vqgan_path).resolve(), Path(args.export).resolve())
    vqgan = {"digest": weights_digest(read_vqgan_weights(vqgan_path)), "path": relative}
    engine.export(BidirectionalTransformer(cfg["Transformer_param"]), best, "model", args.export, "maskgit", cfg,
                  args.train_path, origin, vqgan=vqgan)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.export:
        export(args)
    else:
        train(args, load_maskgit_file(args.config))

