"""MaskGIT on a batch of holes: encode, iteratively decode the hole's tokens, decode to pixels,
average with the mirror image's decode and paste the known pixels back; and the image after each step."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from data import pixel_to_token_mask, to_uint8_image
from maskgit_inpaint.blending import nearest_filled, paste_known
from maskgit_inpaint.preparation import painted
from maskgit_inpaint.settings import Decoding
from models.maskgit import Decoded, DecodeHistory, MaskGit


def make_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image seeded from (seed, image index), so that an image's result does
    not depend on the batch size or on the other images of its batch."""
    return [torch.Generator().manual_seed((seed * 1_000_003 + int(i)) % 2**64) for i in indices]  # any seed


def fill_tokens(model: MaskGit, z: torch.Tensor, token_mask: torch.Tensor, indices: Sequence[int],
                decoding: Decoding, steps: int, history: bool = False) -> Decoded:
    """Run the first `steps` steps of the schedule on tokens z (B, N) (MaskGit.inpaint)."""
    return model.inpaint(z, token_mask, total_iter=decoding.total_iter, sweet_spot=steps,
                         mask_func=decoding.mask_func, choice_temperature=decoding.choice_temperature,
                         sample_temperature=decoding.sample_temperature, top_p=decoding.nucleus,
                         scheduler=decoding.scheduler,
                         generators=make_generators(decoding.seed, indices), return_history=history,
                         readout=decoding.readout)


def decode_holes(model: MaskGit, images: torch.Tensor, holes: torch.Tensor, indices: Sequence[int],
                 decoding: Decoding, history: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[DecodeHistory] | None]:
    """MaskGIT on a batch, the one decode path of the CLI, the sweep, inpaint() and the page:
    normalized images (B, 3, H, W) and holes (B, 1, H, W) bool -> (the decode with the known pixels
    pasted back as decoding.paste says, normalized; tokens (B, N); token mask (B, N); the step
    history of each view). With decoding.flip_average the mirror image is decoded too and the two
    decodes averaged (mirrored back); the tokens and token mask are then those of the image itself."""
    views = views_of(images, holes, decoding)
    token_masks, results = [], []
    for view, hole in views:
        token_masks.append(pixel_to_token_mask(hole, model.vqgan.latent_resolution, decoding.hole_share))
        _, z = model.encode_to_z(view if decoding.encode_fill == "gray" else nearest_filled(view, hole))  # (B, N)
        results.append(fill_tokens(model, z, token_masks[-1], indices, decoding, decoding.steps, history))
    decoded = mean_of_views([model.decode_tokens(r.tokens, r.probs, view, hole)
                             for r, (view, hole) in zip(results, views)])
    steps = [r.history for r in results] if history else None
    return paste_known(decoded, images, holes, decoding), results[0].tokens, token_masks[0], steps


def views_of(images: torch.Tensor, holes: torch.Tensor, decoding: Decoding) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (image, hole) views decode_holes decodes: the batch's, and with decoding.flip_average its
    mirror image's."""
    return [(images, holes)] + ([(images.flip(-1), holes.flip(-1))] if decoding.flip_average else [])


def mean_of_views(decodes: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean of the decodes (B, 3, H, W) of decode_holes' views: the image's, then its mirror
    image's, which is mirrored back first."""
    return torch.stack([d.flip(-1) if mirrored else d for mirrored, d in enumerate(decodes)]).mean(0)


@dataclass
class Step:
    """Where decoding stands after step `step` (step 0: the input)."""
    step: int
    masked: int              # tokens still masked
    token_mask: np.ndarray   # (L, L) bool, True = masked
    image: np.ndarray        # (H, W, 3) uint8: the masked input (step 0), then every masked token filled

    @property
    def label(self) -> str:
        return f"step {self.step}: {self.masked} tokens masked"


def decode_step(model: MaskGit, histories: Sequence[DecodeHistory], t: int, images: torch.Tensor, holes: torch.Tensor,
                decoding: Decoding) -> torch.Tensor:
    """The image (B, 3, H, W) a sweet spot of t+1 gives, with the run's readout and views (decode_holes)."""
    decodes = []
    for history, (view, hole) in zip(histories, views_of(images, holes, decoding)):
        tokens, probs = history.readout(t)
        probs = None if probs is None else probs.to(images.device)
        decodes.append(model.decode_tokens(tokens.to(images.device), probs, view, hole))
    return mean_of_views(decodes)


def decode_steps(model: MaskGit, histories: Sequence[DecodeHistory], images: torch.Tensor, holes: torch.Tensor,
                 decoding: Decoding, mean: Sequence[float], std: Sequence[float]) -> list[list[Step]]:
    """Per image of the batch, its Steps: the input (hole gray), then the image after each step (the
    token masks are those of the image itself, not of its mirror image)."""
    frames = [to_uint8_image(paste_known(decode_step(model, histories, t, images, holes, decoding), images, holes,
                                         decoding), mean, std)
              for t in range(len(histories[0].tokens))]  # S x (B, H, W, 3)
    frames.insert(0, painted(to_uint8_image(images, mean, std), holes[:, 0].cpu().numpy()))
    masks = torch.stack(histories[0].masks, 1).numpy()  # (B, S+1, N)
    side = math.isqrt(masks.shape[-1])
    return [[Step(t, int(masks[b, t].sum()), masks[b, t].reshape(side, side), frames[t][b])
             for t in range(masks.shape[1])] for b in range(masks.shape[0])]
