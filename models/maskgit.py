"""MaskGit: a frozen VQGAN tokenizer + a BidirectionalTransformer, trained by masked visual token
modeling and used for inpainting by iterative parallel decoding (Chang et al., MaskGIT, CVPR 2022)."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.transformer import BidirectionalTransformer
from models.vqgan import VQGAN

# Mask schedules gamma(r): the share of tokens still masked after a fraction r of decoding.
# Every one maps 0 -> 1 and 1 -> 0 and is monotone decreasing on [0, 1].
GAMMA_FUNCTIONS: dict[str, Callable[[float], float]] = {
    "linear": lambda r: 1 - r,                                       # 1 - r
    "cosine": lambda r: math.cos(r * math.pi / 2),                   # cos(pi r / 2), the paper's choice
    "square": lambda r: 1 - r ** 2,                                  # 1 - r^2
    "cubic": lambda r: 1 - r ** 3,                                   # 1 - r^3
    "sqrt": lambda r: 1 - math.sqrt(r),                              # 1 - sqrt(r)
    "log": lambda r: 1 - math.log2(1 + r),                           # 1 - log2(1 + r)
    "exp": lambda r: 1 - (math.exp(r) - 1) / (math.e - 1),          # 1 - (e^r - 1) / (e - 1)
}


def gamma_func(mode: str = "cosine") -> Callable[[float], float]:
    """The mask schedule named `mode` (see GAMMA_FUNCTIONS for the formulas)."""
    if mode not in GAMMA_FUNCTIONS:
        raise ValueError(f"unknown mask schedule {mode!r}; valid: {', '.join(GAMMA_FUNCTIONS)}")
    return GAMMA_FUNCTIONS[mode]


def masked_counts(n_masked: torch.Tensor, total_iter: int, mode: str) -> torch.Tensor:
    """How many of each sample's N0 hole tokens stay masked after each step: (B,) -> (B, T).

    k_t = floor(gamma((t+1)/T) * N0), lowered where needed so that it falls by at least one per
    step while positive, and k_{T-1} = 0.
    """
    gamma = gamma_func(mode)
    counts = torch.empty(len(n_masked), total_iter, dtype=torch.long)
    previous = n_masked.long().cpu()
    for t in range(total_iter):
        k = torch.floor(gamma((t + 1) / total_iter) * n_masked.double().cpu()).long()
        k = torch.minimum(k, (previous - 1).clamp(min=0))
        counts[:, t] = previous = k if t < total_iter - 1 else torch.zeros_like(k)
    return counts


def uniform_noise(generators: Sequence[torch.Generator] | None, shape: tuple[int, ...],
                  device: torch.device) -> torch.Tensor:
    """Uniform (0, 1) noise of `shape` (B, ...); row i is drawn from generators[i] so that a sample's
    randomness does not depend on the batch it is in."""
    if generators is None:
        u = torch.rand(shape, device=device)
    else:
        u = torch.stack([torch.rand(shape[1:], generator=g) for g in generators]).to(device)
    return u.clamp(1e-20, 1 - 1e-7)


@dataclass
class DecodeHistory:
    """What iterative decoding did, step by step, each tensor (B, N) on the CPU.
    masks[0] is the input mask, masks[t+1] the mask after step t; tokens[t] is step t's result with
    every still-masked position filled by that step's choice (what a sweet spot of t+1 returns)."""
    masks: list[torch.Tensor] = field(default_factory=list)
    tokens: list[torch.Tensor] = field(default_factory=list)


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
        self.choice_temperature = cfg.get("choice_temperature", 4.5)
        self.gamma_type = cfg.get("gamma_type", "cosine")
        self.gamma = gamma_func(self.gamma_type)

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
    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N) token ids -> (B, 3, H, W) normalized images."""
        return self.vqgan.decode_indices(tokens)

    def random_mask(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """MVTM masks (B, N) bool: per sample r ~ U(0,1), ceil(gamma(r) * N) random tokens (at least 1)."""
        n = self.num_image_tokens
        r = torch.rand(batch, generator=generator)
        ratios = torch.tensor([self.gamma(float(v)) for v in r])
        n_masked = torch.ceil(ratios * n).long().clamp(1, n)  # (B,)
        ranks = torch.rand(batch, n, generator=generator).argsort(dim=1).argsort(dim=1)  # random permutation ranks
        return (ranks < n_masked[:, None]).to(device)

    def forward(self, z_indices: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training step input: token ids (B, N) -> (logits (B, N, vocab), targets (B, N), mask (B, N))."""
        mask = self.random_mask(z_indices.shape[0], z_indices.device, generator)
        inputs = torch.where(mask, torch.full_like(z_indices, self.mask_token_id), z_indices)
        return self.transformer(inputs), z_indices, mask

    @torch.no_grad()
    def inpaint(self, z_indices: torch.Tensor, token_mask: torch.Tensor, total_iter: int = 8,
                sweet_spot: int | None = None, mask_func: str | None = None,
                choice_temperature: float | None = None, sample_temperature: float = 1.0,
                generators: Sequence[torch.Generator] | None = None, return_history: bool = False,
                autocast_ctx: Callable | None = None) -> tuple[torch.Tensor, DecodeHistory | None]:
        """Iterative decoding: fill the masked tokens of `z_indices` (B, N) where `token_mask` (B, N) is True.

        Each step predicts every masked token, keeps the most confident ones and re-masks the rest
        so that k_t stay masked (see masked_counts). Known tokens never change. With `sweet_spot`
        S < T the loop stops after S steps and fills what is still masked with that step's choices.
        Returns (tokens (B, N), a DecodeHistory when `return_history`, else None).
        """
        mask_func = mask_func or self.gamma_type
        choice_temperature = self.choice_temperature if choice_temperature is None else choice_temperature
        steps = total_iter if sweet_spot is None else max(1, min(sweet_spot, total_iter))
        batch, n = z_indices.shape
        device = z_indices.device
        token_mask = token_mask.bool()
        counts = masked_counts(token_mask.sum(1), total_iter, mask_func).to(device)  # (B, T)
        tokens = torch.where(token_mask, torch.full_like(z_indices, self.mask_token_id), z_indices)
        unknown = token_mask.clone()
        history = DecodeHistory(masks=[unknown.cpu()]) if return_history else None
        for t in range(steps):
            if autocast_ctx is not None:
                with autocast_ctx():
                    logits = self.transformer(tokens)
            else:
                logits = self.transformer(tokens)
            logits = logits.float()
            logits[..., self.mask_token_id] = -torch.inf  # (B, N, vocab): never emit the mask token
            log_probs = F.log_softmax(logits, dim=-1)
            if sample_temperature > 0:
                probs = F.softmax(logits / sample_temperature, dim=-1)
                u = uniform_noise(generators, (batch, n, 1), device)
                sampled = (probs.cumsum(-1) < u).sum(-1).clamp(max=self.mask_token_id - 1)  # inverse CDF
            else:
                sampled = logits.argmax(-1)
            sampled = torch.where(unknown, sampled, tokens)  # (B, N)
            if history is not None:
                history.tokens.append(sampled.cpu())
            if t == steps - 1:
                tokens = sampled
                if history is not None:
                    history.masks.append(torch.zeros_like(unknown).cpu())
                break
            confidence = log_probs.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)  # (B, N)
            gumbel = -torch.log(-torch.log(uniform_noise(generators, (batch, n), device)))
            confidence = confidence + choice_temperature * (1 - (t + 1) / total_iter) * gumbel
            confidence = torch.where(unknown, confidence, torch.inf)  # fixed tokens are never re-masked
            ranks = confidence.argsort(dim=1).argsort(dim=1)  # 0 = least confident
            unknown = ranks < counts[:, t:t + 1]
            tokens = torch.where(unknown, torch.full_like(sampled, self.mask_token_id), sampled)
            if history is not None:
                history.masks.append(unknown.cpu())
        return tokens, history


def load_maskgit(config_path: str, transformer_ckpt: str | None = None, vqgan_ckpt: str | None = None,
                 device: torch.device | str = "cpu") -> MaskGit:
    """Build a MaskGit from its config, load the frozen VQGAN weights (config's VQ_CKPT_path unless
    `vqgan_ckpt` is given) and, when given, the transformer weights. Eval mode, on `device`."""
    from common import UserError, load_weights
    from models.config import load_maskgit_config

    cfg = load_maskgit_config(config_path)
    model = MaskGit(cfg)
    vqgan_ckpt = vqgan_ckpt or cfg["VQ_Configs"].get("VQ_CKPT_path")
    if not vqgan_ckpt:
        raise UserError(f"{config_path}: no VQ_Configs.VQ_CKPT_path for the stage-1 VQGAN weights")
    load_weights(model.vqgan, vqgan_ckpt, key="vqgan")
    if transformer_ckpt is not None:
        load_weights(model.transformer, transformer_ckpt, key="model")
    return model.to(device).eval()
