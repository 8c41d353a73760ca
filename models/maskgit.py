"""MaskGit: a frozen VQGAN tokenizer + a BidirectionalTransformer, trained by masked visual token
modeling and used for inpainting by iterative parallel decoding (Chang et al., MaskGIT, CVPR 2022)."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from common import UserError, load_state, load_weights, native_bf16, progress_bar, resolve_device
from data.datasets import training_views, view_pixels
from models.config import load_maskgit_config
from models.pretrained import (
    DEFAULT_MODEL,
    checked_vqgan_digest,
    is_exported,
    maskgit_config,
    read_description,
    read_model_weights,
    read_vqgan_weights,
    vqgan_config,
    vqgan_path_of,
)
from models.schedules import SCHEDULERS, gamma_func, halton_ranks, masked_counts
from models.transformer import BidirectionalTransformer
from models.vqgan import VQGAN


def uniform_noise(generators: Sequence[torch.Generator] | None, shape: tuple[int, ...],
                  device: torch.device) -> torch.Tensor:
    """Uniform (0, 1) noise of `shape` (B, ...); row i is drawn from generators[i] so that a sample's
    randomness does not depend on the batch it is in."""
    if generators is None:
        u = torch.rand(shape, device=device)
    else:
        u = torch.stack([torch.rand(shape[1:], generator=g) for g in generators]).to(device)
    return u.clamp(1e-20, 1 - 1e-7)


def sample_tokens(logits: torch.Tensor, temperature: float, generators: Sequence[torch.Generator] | None,
                  top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per position from softmax(logits / temperature), by inverse CDF with per-sample
    noise (the argmax when temperature is 0), and the distribution it was drawn from (one-hot for
    the argmax): logits (B, N, vocab) -> (token ids (B, N), probs (B, N, vocab - 1)). The last id,
    the mask token, is never drawn. With `top_p` < 1, nucleus sampling (Holtzman et al., 2020): only
    the most likely tokens whose probabilities first reach `top_p` in sum (at least the top one)
    keep their share, renormalized, so the long tail of unlikely codes is never drawn."""
    logits = logits[..., :-1]
    if temperature <= 0:
        tokens = logits.argmax(-1)
        return tokens, F.one_hot(tokens, logits.shape[-1]).float()
    probs = F.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        ranked, order = probs.sort(-1, descending=True)
        ranked = ranked * ((ranked.cumsum(-1) - ranked) < top_p)  # the mass before a token is under top_p
        probs = torch.zeros_like(probs).scatter(-1, order, ranked)
        probs = probs / probs.sum(-1, keepdim=True)
    u = uniform_noise(generators, (*logits.shape[:2], 1), logits.device)
    return (probs.cumsum(-1) < u).sum(-1).clamp(max=logits.shape[-1] - 1), probs


def mask_least_confident(confidence: torch.Tensor, unknown: torch.Tensor, n_masked: torch.Tensor) -> torch.Tensor:
    """The new mask (B, N): per sample, the `n_masked` (B, 1) positions of lowest confidence among
    those that were `unknown`; known positions are never masked again."""
    confidence = torch.where(unknown, confidence, torch.inf)
    ranks = confidence.argsort(dim=1).argsort(dim=1)  # 0 = least confident
    return ranks < n_masked


@dataclass
class DecodeHistory:
    """What iterative decoding did, step by step, each tensor (B, N) on the CPU.
    masks[0] is the input mask, masks[t+1] the mask after step t; tokens[t] is step t's result with
    every still-masked position filled by that step's choice (what a sweet spot of t+1 returns); with
    the "mean" readout, probs[t] (B, N, num_codebook_vectors) is what a sweet spot of t+1 decodes."""
    masks: list[torch.Tensor] = field(default_factory=list)
    tokens: list[torch.Tensor] = field(default_factory=list)
    probs: list[torch.Tensor] = field(default_factory=list)

    def readout(self, t: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tokens, probs or None) of step t, for MaskGit.decode_tokens."""
        return self.tokens[t], self.probs[t] if self.probs else None


PRECISIONS = ("fp32", "bf16")  # how the transformer's matrix products run at inference (MaskGit.precision)


def default_precision(device: torch.device | str) -> str:
    """bf16 on CUDA GPUs with native bf16; fp32 elsewhere: older GPUs and CPUs without AVX512-BF16
    or AMX emulate bf16 matrix products (3.0x slower on this project's AVX2 machine, BENCHMARKS.md)."""
    return "bf16" if native_bf16(device) else "fp32"


READOUTS = ("sample", "mean")  # what the final image decodes in the hole: the sampled tokens, or their mean


class Decoded(NamedTuple):
    """What MaskGit.inpaint returns: tokens (B, N); the step history (return_history); and with the
    "mean" readout, for each position filled, the distribution (B, N, num_codebook_vectors) its
    token was sampled from (zero rows elsewhere)."""
    tokens: torch.Tensor
    history: DecodeHistory | None
    probs: torch.Tensor | None


class MaskGit(nn.Module):
    def __init__(self, cfg: dict, vqgan: VQGAN | None = None):
        """`cfg` is the checked model_param of a MaskGit config (models.config.load_maskgit_config).
        The VQGAN is built from the config (weights loaded separately) unless one is given."""
        super().__init__()
        self.vqgan = vqgan if vqgan is not None else VQGAN(cfg["vqgan"])
        self.vqgan.eval().requires_grad_(False)
        self.transformer = BidirectionalTransformer(cfg["Transformer_param"])
        self.num_image_tokens = cfg["num_image_tokens"]
        self.mask_token_id = cfg["num_codebook_vectors"]
        self.choice_temperature = cfg["choice_temperature"]
        self.mask_func = cfg["gamma_type"]
        self.gamma = gamma_func(self.mask_func)
        self.precision = "fp32"  # of predict: a name in PRECISIONS (set_precision)

    def set_precision(self, precision: str) -> MaskGit:
        """Run the transformer's inference in fp32 or under bf16 autocast (PRECISIONS); the VQGAN stays fp32."""
        if precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self.precision = precision
        return self

    @classmethod
    def from_pretrained(cls, path: str | Path = DEFAULT_MODEL, vqgan: str | Path | None = None,
                        device: torch.device | str = "cpu", precision: str | None = None) -> MaskGit:
        """An exported transformer folder (default: the shipped one) with its VQGAN: the folder it
        names, or `vqgan` (an exported folder or a torch file such as the lab's VQGAN.pt). A VQGAN
        whose weights are not the ones the transformer was trained on is refused. Eval mode, with
        `precision` (default: default_precision of the device)."""
        if not isinstance(path, (str, os.PathLike)):
            raise UserError(f"from_pretrained takes the path of an exported model folder, not {path!r}")
        device = resolve_device(device)
        path = Path(path)
        if not path.exists():
            raise UserError(f"model not found: {path}")
        if not path.is_dir():
            raise UserError(f"{path} is a file, not an exported model folder; for a plain .pt transformer use "
                            "load_maskgit with its config")
        cfg = maskgit_config(path)
        vqgan = Path(vqgan) if vqgan is not None else vqgan_path_of(path)
        if vqgan is None:
            raise UserError(f"{path} names no VQGAN folder; pass the VQGAN it was trained on (--vqgan)")
        model = cls(cfg)
        expected = read_description(path, "maskgit").get("vqgan", {}).get("digest")
        _load_vqgan(model, vqgan, cfg["vqgan"], expected, path)
        load_state(model.transformer, read_model_weights(path, "maskgit"), path)
        return model.to(device).eval().set_precision(precision or default_precision(device))

    def train(self, mode: bool = True) -> MaskGit:
        super().train(mode)
        self.vqgan.eval()  # stage 1 stays frozen
        return self

    @torch.no_grad()
    def encode_to_z(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) normalized images -> (z_q (B, C, h, w), token ids (B, h*w))."""
        z_q, indices, _ = self.vqgan.encode(x)
        return z_q, indices.view(z_q.shape[0], -1)

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor, probs: torch.Tensor | None = None, known: torch.Tensor | None = None,
                      hole: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) token ids -> (B, 3, H, W) normalized images. With `probs` (B, N, num_codebook_vectors),
        a position whose row is not all zero decodes the code vector its distribution expects instead
        of its token's: the "mean" readout, the latent a squared-error estimate would choose. `known`
        and `hole` are for a known-pixel decoder (VQGAN.decode)."""
        if probs is None:
            return self.vqgan.decode_indices(tokens, known, hole)
        codebook = self.vqgan.codebook.vectors  # (K, C)
        latents = torch.where(probs.any(-1, keepdim=True), probs.to(codebook.dtype) @ codebook,
                              codebook[tokens])  # (B, N, C)
        side = self.vqgan.latent_resolution
        return self.vqgan.decode(latents.view(len(tokens), side, side, -1).permute(0, 3, 1, 2), known, hole)

    def random_mask(self, batch: int, device: torch.device, generator: torch.Generator | None = None,
                    within: torch.Tensor | None = None) -> torch.Tensor:
        """MVTM masks (B, N) bool: per sample r ~ U(0,1), ceil(gamma(r) * n) random tokens (at least 1)
        of the n tokens of `within` (B, N) bool (default: the whole image). Masking part of a hole
        is the state iterative decoding leaves after its first steps."""
        n = self.num_image_tokens
        within = torch.ones(batch, n, dtype=torch.bool) if within is None else within.cpu()
        r = torch.rand(batch, generator=generator)
        ratios = torch.tensor([self.gamma(float(v)) for v in r])
        region = within.sum(1)  # (B,)
        n_masked = torch.minimum(torch.ceil(ratios * region).long().clamp(min=1), region)  # (B,)
        scores = torch.rand(batch, n, generator=generator).masked_fill(~within, 2.0)  # outside: ranked last
        ranks = scores.argsort(dim=1).argsort(dim=1)  # random permutation ranks
        return (ranks < n_masked[:, None]).to(device)

    def forward(self, z_indices: torch.Tensor, generator: torch.Generator | None = None,
                within: torch.Tensor | None = None, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training step input: token ids (B, N) -> (logits (B, N, vocab), targets (B, N), mask (B, N)).
        `within` (B, N) bool restricts each sample's mask to a region (see random_mask). `context`
        (B, N), when given, is what the transformer sees outside that region instead of the targets:
        the tokens of the image with its hole pre-filled, as decoding encodes them."""
        mask = self.random_mask(z_indices.shape[0], z_indices.device, generator, within)
        shown = z_indices if context is None or within is None else torch.where(within.to(mask.device), z_indices,
                                                                                 context)
        return self.transformer(self.masked(shown, mask)), z_indices, mask

    def masked(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`tokens` (B, N) with the mask token wherever `mask` (B, N) is True."""
        return torch.where(mask, torch.full_like(tokens, self.mask_token_id), tokens)

    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        """fp32 logits (B, N, vocab) of the transformer at self.precision, with the mask token never a
        prediction. In fp32 an autocast the caller entered still applies (training's validation)."""
        bf16 = self.precision == "bf16"
        with torch.autocast(tokens.device.type, torch.bfloat16) if bf16 else nullcontext():
            logits = self.transformer(tokens)
        logits = logits.float()
        logits[..., self.mask_token_id] = -torch.inf
        return logits

    @torch.no_grad()
    def inpaint(self, z_indices: torch.Tensor, token_mask: torch.Tensor, *, total_iter: int,
                sample_temperature: float, top_p: float, readout: str, scheduler: str, sweet_spot: int | None = None,
                mask_func: str | None = None, choice_temperature: float | None = None,
                generators: Sequence[torch.Generator] | None = None, return_history: bool = False) -> Decoded:
        """Iterative decoding (MaskGIT, section 3.2): fill the tokens of `z_indices` (B, N) where
        `token_mask` (B, N) is True, in `total_iter` steps T; known tokens never change.

        The decoding settings have no defaults here: maskgit_inpaint.Decoding owns them.
        `mask_func` and `choice_temperature` default to the config's; `sample_temperature` 0 takes
        the argmax; `top_p` < 1 samples from the nucleus (sample_tokens). With `sweet_spot` S < T the
        loop stops after S steps and fills what is still masked with that step's choices. `generators`
        (one per sample) make a sample's result independent of its batch. `scheduler` "halton" reveals
        tokens in a fixed Halton order instead of by confidence (see models.schedules). `readout` "mean"
        also returns the distribution each token was sampled from, for decode_tokens (with
        `sample_temperature` 0: the argmax, one-hot).
        """
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; valid: {', '.join(SCHEDULERS)}")
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; valid: {', '.join(READOUTS)}")
        mask_func = mask_func or self.mask_func
        choice_temperature = self.choice_temperature if choice_temperature is None else choice_temperature
        steps = total_iter if sweet_spot is None else max(1, min(sweet_spot, total_iter))
        unknown = token_mask.bool()  # (B, N), True = still masked
        # how many tokens stay masked after each step: ceil(gamma(t/T) N) in the paper, see masked_counts
        n_masked = masked_counts(unknown.sum(1), total_iter, mask_func).to(z_indices.device)  # (B, T)
        tokens = self.masked(z_indices, unknown)
        history = DecodeHistory(masks=[unknown.cpu()]) if return_history else None
        probs = None
        if readout == "mean":
            probs = torch.zeros(*unknown.shape, self.mask_token_id, device=z_indices.device)
        for t in range(steps):
            # 1. Predict: the probabilities of every token at every masked location, in parallel.
            logits = self.predict(tokens)
            # 2. Sample: a token at each masked location; its predicted probability is its confidence.
            drawn, drawn_from = sample_tokens(logits, sample_temperature, generators, top_p)
            sampled = torch.where(unknown, drawn, tokens)
            if history is not None:
                history.tokens.append(sampled.cpu())
            if probs is not None:  # this step's distributions where still masked: a committed token keeps its own
                probs = torch.where(unknown[..., None], drawn_from, probs)
                if history is not None:
                    history.probs.append(probs.cpu())
            if t == steps - 1:  # the last step (T, or the sweet spot) keeps every sampled token
                break
            if scheduler == "halton":  # Halton-MaskGIT: keep what comes first in the Halton order
                confidence = -halton_ranks(math.isqrt(unknown.shape[1])).to(unknown.device).float().expand_as(unknown)
            else:
                confidence = F.log_softmax(logits, dim=-1).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)  # (B, N)
                # Gumbel noise, annealed to 0 over the T steps, lets less likely tokens survive early on.
                gumbel = -torch.log(-torch.log(uniform_noise(generators, unknown.shape, unknown.device)))
                confidence = confidence + choice_temperature * (1 - (t + 1) / total_iter) * gumbel
            # 3. Mask schedule and 4. Mask: re-mask the n least confident of the sampled tokens.
            unknown = mask_least_confident(confidence, unknown, n_masked[:, t:t + 1])
            tokens = self.masked(sampled, unknown)
            if history is not None:
                history.masks.append(unknown.cpu())
        if history is not None:
            history.masks.append(torch.zeros_like(unknown).cpu())
        return Decoded(sampled, history, probs)


# ----------------------------------------------------------------------------- training

def masked_token_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, label_smoothing: float = 0.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy per masked position (M,) and whether its top prediction is right (M,), in fp32.
    The mask token (the last logit) is never a target, so it is left out of the softmax."""
    picked = logits[mask][:, :-1].float()  # (M, num_codebook_vectors)
    targets = targets[mask]
    losses = F.cross_entropy(picked, targets, label_smoothing=label_smoothing, reduction="none")
    return losses, picked.argmax(-1) == targets


@torch.no_grad()
def encode_images(model: MaskGit, dataset: Sequence[torch.Tensor], flip: bool, batch_size: int, num_workers: int,
                  device: torch.device, desc: str, colour_variants: int = 0) -> torch.Tensor:
    """Token ids of every normalized image in each of its training views (training_views): (N, views,
    h*w) int16 on the CPU. Encoding runs in fp32 so that the tokens do not depend on the device's autocast."""
    dtype = torch.int16 if model.mask_token_id <= torch.iinfo(torch.int16).max else torch.int32
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, generator=torch.Generator())
    mean, std = (torch.tensor(model.vqgan.cfg[k], device=device).view(1, 3, 1, 1) for k in ("mean", "std"))
    n_views, own_views = training_views(colour_variants, flip), training_views(0, flip)
    chunks = []
    for images in progress_bar(loader, desc=desc, unit="batch"):
        images = images.to(device)
        pixels = images * std + mean if n_views > own_views else None  # pixel values, for the colour variants
        views = []
        for v in range(n_views):
            picks = torch.full((len(images),), v)
            if v < own_views:  # the image's own colours: no round trip to pixel values
                views.append(view_pixels(images, picks, flip))
            else:
                views.append((view_pixels(pixels, picks, flip) - mean) / std)
        chunks.append(torch.stack([model.encode_to_z(v)[1] for v in views], dim=1).to(dtype).cpu())
    return torch.cat(chunks)


def _load_vqgan(model: MaskGit, path: str | Path, vq_cfg: dict, expected_digest: str | None = None,
               transformer: str | Path | None = None) -> None:
    """Load the VQGAN weights at `path` into model.vqgan; an exported VQGAN must carry the config
    `vq_cfg`, but for a known-pixel decoder (its codes are the same; model.vqgan is rebuilt with
    it), and with `expected_digest` its weights must be the ones `transformer` was trained on, or a
    known-pixel fit of them."""
    state = read_vqgan_weights(path)
    if expected_digest is not None:
        checked_vqgan_digest(path, state, expected_digest, transformer)
    own_cfg = vqgan_config(path) if is_exported(path) else vq_cfg
    if {**own_cfg, "known_pixels": False} != {**vq_cfg, "known_pixels": False}:
        raise UserError(f"the VQGAN {path} was exported with another config than the one the model asks for "
                        f"({transformer or 'the MaskGit config'}): compare its config.json with it")
    if own_cfg != model.vqgan.cfg:
        model.vqgan = VQGAN(own_cfg).eval().requires_grad_(False)
    load_state(model.vqgan, state, path)


def load_maskgit(config: dict | str | Path, transformer_ckpt: str | Path | None = None,
                 vqgan_ckpt: str | Path | None = None, device: torch.device | str = "cpu") -> MaskGit:
    """Build a MaskGit from its checked config (or the config file's path), load the frozen VQGAN
    weights (the config's VQ_CKPT_path unless `vqgan_ckpt` is given: an exported folder or a torch
    file) and, when given, the transformer weights. Eval mode, on `device`. For an exported
    transformer folder use MaskGit.from_pretrained."""
    cfg = config if isinstance(config, dict) else load_maskgit_config(config)
    model = MaskGit(cfg)
    vqgan_ckpt = vqgan_ckpt or cfg["VQ_Configs"]["VQ_CKPT_path"]
    if not vqgan_ckpt:
        raise UserError("the MaskGit config has no VQ_Configs.VQ_CKPT_path for the stage-1 VQGAN weights")
    _load_vqgan(model, vqgan_ckpt, cfg["vqgan"])
    if transformer_ckpt is not None:
        load_weights(model.transformer, transformer_ckpt, key="model")
    return model.to(device).eval()
