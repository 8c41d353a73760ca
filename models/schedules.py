"""Mask schedules: how many tokens stay masked after each step of iterative decoding (MaskGIT,
section 3.2) and, in training, how many tokens a sample masks (section 3.1).

A schedule is gamma(r): the share of tokens still masked after a fraction r of decoding. Every one
maps 0 -> 1 and 1 -> 0 and is monotone decreasing on [0, 1]. GAMMA_FUNCTIONS is the registry that
configs (`gamma_type`), the inpainting CLI (`--mask-func`) and the sweep read their names from: a
new schedule is one entry there.

The schedule says how many tokens to reveal at each step; the scheduler says which ones. SCHEDULERS:
"confidence" (MaskGIT: keep the most confident predictions) and "halton" (Halton-MaskGIT, Besnier
et al. 2025: reveal tokens in the order of a 2-D Halton sequence over the token grid, spread out
evenly whatever the model believes; see `halton_ranks`).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

GAMMA_FUNCTIONS: dict[str, Callable[[float], float]] = {
    "linear": lambda r: 1 - r,                                       # 1 - r
    "cosine": lambda r: math.cos(r * math.pi / 2),                   # cos(pi r / 2), the paper's choice
    "square": lambda r: 1 - r ** 2,                                  # 1 - r^2
    "cubic": lambda r: 1 - r ** 3,                                   # 1 - r^3
    "sqrt": lambda r: 1 - math.sqrt(r),                              # 1 - sqrt(r)
    "log": lambda r: 1 - math.log2(1 + r),                           # 1 - log2(1 + r)
    "exp": lambda r: 1 - (math.exp(r) - 1) / (math.e - 1),          # 1 - (e^r - 1) / (e - 1)
}


SCHEDULERS = ("confidence", "halton")


def radical_inverse(index: int, base: int) -> float:
    """The index-th element of the van der Corput sequence in `base`: its digits mirrored about the point."""
    value, scale = 0.0, 1.0 / base
    while index:
        index, digit = divmod(index, base)
        value += digit * scale
        scale /= base
    return value


@functools.lru_cache(maxsize=8)
def halton_ranks(side: int) -> torch.Tensor:
    """Each token's place (N,) = (side*side,), row-major, in the order a 2-D Halton sequence (bases
    2 and 3) first visits the cells of a side x side grid: 0 is revealed first. Consecutive points
    of the sequence fall far apart, so every step's tokens are spread over the whole hole. Cached
    (decoding asks at every step): do not modify the returned tensor."""
    ranks = torch.full((side * side,), -1, dtype=torch.long)
    visited, index = 0, 0
    while visited < side * side:
        x, y = radical_inverse(index, 2), radical_inverse(index, 3)
        cell = int(y * side) * side + int(x * side)
        if ranks[cell] < 0:
            ranks[cell] = visited
            visited += 1
        index += 1
    return ranks


def gamma_func(mask_func: str = "cosine") -> Callable[[float], float]:
    """The mask schedule named `mask_func` (see GAMMA_FUNCTIONS for the formulas)."""
    if mask_func not in GAMMA_FUNCTIONS:
        raise ValueError(f"unknown mask schedule {mask_func!r}; valid: {', '.join(GAMMA_FUNCTIONS)}")
    return GAMMA_FUNCTIONS[mask_func]


def masked_counts(n_masked: torch.Tensor, total_iter: int, mask_func: str) -> torch.Tensor:
    """How many of each sample's N0 hole tokens stay masked after each step: (B,) -> (B, T).

    k_t = floor(gamma((t+1)/T) * N0), lowered where needed so that it falls by at least one per
    step while positive, and k_{T-1} = 0.
    """
    gamma = gamma_func(mask_func)
    counts = torch.empty(len(n_masked), total_iter, dtype=torch.long)
    previous = n_masked.long().cpu()
    for t in range(total_iter):
        k = torch.floor(gamma((t + 1) / total_iter) * n_masked.double().cpu()).long()
        k = torch.minimum(k, (previous - 1).clamp(min=0))
        counts[:, t] = previous = k if t < total_iter - 1 else torch.zeros_like(k)
    return counts
