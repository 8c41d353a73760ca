"""How predictable a VQGAN's tokens are: codebook use, how many codes flat regions take, and how
stable the codes of known pixels stay when a hole appears (what stage 2 is asked to work from).

    python training_vqgan.py --config configs/small/VQGAN_local.yml --evaluate datasets/twemoji/test \
        --weights checkpoints/vqgan_local
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_cdt

from data import denormalize, pixel_to_token_mask
from data.masks import HOLE_GRAY, dataset_mask
from maskgit_inpaint.blending import nearest_filled
from models import VQGAN

DISTANCES = (1, 2, 3, 4)  # token rings around a hole; the last bucket is "4 or more"
FILLS = ("gray", "nearest")  # what the encoder sees in the hole: the lab's gray, or decoding's default pre-fill
FLAT_RANGE = 2 / 255  # a patch is flat when every channel spans at most this (pixels in [0, 1])
WHITE_LEVEL = 250 / 255  # ... and plain white when every pixel of it is at least this bright


def patch_view(images: torch.Tensor, latent_size: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, L, L, 3, H/L * W/L): each token's patch of pixels."""
    b, c, h, w = images.shape
    ph, pw = h // latent_size, w // latent_size
    return images.reshape(b, c, latent_size, ph, latent_size, pw).permute(0, 2, 4, 1, 3, 5).reshape(
        b, latent_size, latent_size, c, ph * pw)


def flat_patches(images: torch.Tensor, latent_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which token patches of `images` (B, 3, H, W) in [0, 1] are flat (one colour) and which plain
    white: two (B, L, L) bool masks."""
    patches = patch_view(images, latent_size)  # (B, L, L, 3, P)
    flat = (patches.amax(-1) - patches.amin(-1)).amax(-1) <= FLAT_RANGE
    white = patches.amin(-1).amin(-1) >= WHITE_LEVEL
    return flat, white


def code_share_summary(counts: torch.Tensor, total_tokens: int) -> dict[str, float]:
    """Per-code counts (K,) of a kind of patch -> its share of all tokens, how many codes it takes
    and the share of its tokens the most common code covers."""
    n = int(counts.sum())
    return {"share": n / max(total_tokens, 1), "codes": int((counts > 0).sum()),
            "top_code_share": int(counts.max()) / n if n else 0.0}


def ring_distance(token_hole: np.ndarray) -> np.ndarray:
    """(L, L) bool hole tokens -> (L, L) chessboard distance of each token to the nearest hole token
    (0 in the hole; 1 next to it, diagonals included)."""
    if not token_hole.any():
        return np.full(token_hole.shape, np.iinfo(np.int32).max, dtype=np.int64)
    return distance_transform_cdt(~token_hole, metric="chessboard").astype(np.int64)


def hole_inputs(images: torch.Tensor, holes: torch.Tensor, fill: str, mean: list[float], std: list[float]
                ) -> torch.Tensor:
    """Normalized images (B, 3, H, W) with the pixels of `holes` (B, 1, H, W) as the encoder sees them:
    the lab's gray or the nearest known pixel (inpainting's default pre-fill)."""
    if fill == "nearest":
        return nearest_filled(images, holes)
    gray = torch.tensor([(HOLE_GRAY / 255 - m) / s for m, s in zip(mean, std)], dtype=images.dtype)
    return torch.where(holes, gray.view(1, 3, 1, 1).to(images.device), images)


class StabilityCounter:
    """Accumulates, per fill and ring distance, how many known tokens there are and how many of them
    changed code between the clean image and the image with its hole."""

    def __init__(self) -> None:
        self.total = np.zeros(len(DISTANCES), dtype=np.int64)
        self.changed = {fill: np.zeros(len(DISTANCES), dtype=np.int64) for fill in FILLS}

    def add(self, clean: np.ndarray, holed: dict[str, np.ndarray], token_holes: np.ndarray) -> None:
        """`clean` (B, L, L) codes, `holed` fill -> (B, L, L) codes, `token_holes` (B, L, L) bool."""
        for b, hole in enumerate(token_holes):
            bucket = np.minimum(ring_distance(hole), DISTANCES[-1]) - 1  # -1 in the hole
            known = bucket >= 0
            self.total += np.bincount(bucket[known], minlength=len(DISTANCES))
            for fill, codes in holed.items():
                diff = known & (codes[b] != clean[b])
                self.changed[fill] += np.bincount(bucket[diff], minlength=len(DISTANCES))

    def shares(self) -> dict[str, list[float]]:
        """fill -> share of known tokens whose code changed, by ring distance 1, 2, 3, 4+."""
        return {fill: (changed / np.maximum(self.total, 1)).tolist() for fill, changed in self.changed.items()}


@torch.no_grad()
def token_report(vqgan: VQGAN, loader, names: list[str], mean: list[float], std: list[float],
                 device: torch.device, mask_seed: int = 0) -> dict:
    """Flat-patch codes and code stability of `vqgan` on the images of `loader` (normalized batches,
    in the order of `names`), each given the default dataset's hole for its name (data.masks)."""
    vqgan.eval()
    latent, k = vqgan.latent_resolution, vqgan.codebook.num_codebook_vectors
    stability, start = StabilityCounter(), 0
    flat_counts, white_counts, total_tokens = torch.zeros(k, dtype=torch.long), torch.zeros(k, dtype=torch.long), 0
    for images in loader:
        images = images.to(device)
        batch_names = names[start:start + len(images)]
        start += len(images)
        holes = torch.from_numpy(np.stack([dataset_mask(n, images.shape[-1], mask_seed) < 128 for n in batch_names]))
        holes = holes[:, None].to(device)  # (B, 1, H, W) bool
        clean = vqgan.encode(images)[1].view(len(images), latent, latent).cpu()
        holed = {fill: vqgan.encode(hole_inputs(images, holes, fill, mean, std))[1].view_as(clean).cpu().numpy()
                 for fill in FILLS}
        token_holes = pixel_to_token_mask(holes.cpu(), latent).view(len(images), latent, latent).numpy()
        stability.add(clean.numpy(), holed, token_holes)
        flat, white = flat_patches(denormalize(images, mean, std).clamp(0, 1).cpu(), latent)
        flat_counts += torch.bincount(clean[flat], minlength=k)
        white_counts += torch.bincount(clean[white], minlength=k)
        total_tokens += clean.numel()
    return {"flat": code_share_summary(flat_counts, total_tokens),
            "white": code_share_summary(white_counts, total_tokens),
            "stability_changed": stability.shares(), "stability_tokens": stability.total.tolist()}


def format_report(report: dict) -> str:
    """The report as a few lines for the terminal and the model card."""
    lines = [f"flat patches: {report['flat']['share']:.1%} of tokens, {report['flat']['codes']} codes; "
             f"plain white: {report['white']['share']:.1%} of tokens, {report['white']['codes']} codes, the most "
             f"common covering {report['white']['top_code_share']:.1%} of them",
             "known tokens whose code changes when the hole appears, by distance from it (tokens): "
             + " / ".join(["1", "2", "3", "4+"])]
    for fill, shares in report["stability_changed"].items():
        lines.append(f"  {fill:>7} hole: " + " / ".join(f"{s:.1%}" for s in shares))
    return "\n".join(lines)
