"""A whole run: every (image, hole, index) item of a dataset filled batch by batch, by MaskGIT or a
baseline, with the outputs, the token accuracy and the early sweet spots collected."""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common import progress_bar
from data import normalize, save_png, to_uint8_image
from maskgit_inpaint.baselines import fill_baseline
from maskgit_inpaint.blending import paste_known
from maskgit_inpaint.decoding import decode_holes, decode_step, decode_steps
from maskgit_inpaint.figures import save_history_pictures
from maskgit_inpaint.preparation import painted
from maskgit_inpaint.settings import Decoding
from models.maskgit import MaskGit


@dataclass
class Result:
    """What a run produced, in input order; token counts are 0 without ground truth or model."""
    indices: np.ndarray   # (N,) index of each image in the input order
    inputs: np.ndarray    # (N, H, W, 3) uint8 inputs, hole painted gray
    outputs: np.ndarray   # (N, H, W, 3) uint8 inpainted images
    holes: np.ndarray     # (N, H, W) bool, True = hole
    token_hits: int       # masked tokens predicted equal to the ground truth's VQGAN tokens
    token_count: int      # masked tokens compared
    seconds: float
    # with `early_spots`: for each sweet spot S, what a run stopped after S steps gives (outputs, token hits)
    early: dict[int, tuple[np.ndarray, int]] = field(default_factory=dict)

    def at_sweet_spot(self, spot: int) -> Result:
        """This run's result had it stopped after `spot` steps (one of the `early_spots` it was run with)."""
        outputs, hits = self.early[spot]
        return replace(self, outputs=outputs, token_hits=hits, early={})

    @property
    def images_per_second(self) -> float:
        return len(self.indices) / max(self.seconds, 1e-9)


def run_inpainting(dataset: Dataset, model: MaskGit | None, decoding: Decoding, mean: Sequence[float],
                   std: Sequence[float], device: torch.device, batch_size: int, num_workers: int = 0,
                   out_dir: str | os.PathLike | None = None, save_history: bool = False,
                   gt: np.ndarray | None = None, progress: bool = True, early_spots: Sequence[int] = ()) -> Result:
    """Fill the holes of every (image, hole, index) item of `dataset`, batch by batch.

    With `out_dir`, writes test_results/image_{i:03d}.png (and with `save_history` the per-step
    pictures). With ground truth `gt` (indexed by the items' index), counts how many masked tokens
    match the ground truth's own VQGAN tokens. `model` may be None for a baseline. `early_spots`
    (sweet spots up to decoding.sweet_spot) also collects what stopping after each of them gives,
    for free: a run stopped after S steps is the first S steps of this one (Result.at_sweet_spot).
    """
    if decoding.method == "maskgit" and model is None:
        raise ValueError("MaskGIT decoding needs a model")
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        for folder in ["test_results"] + (["steps", "mask_scheduling", "imga"] if save_history else []):
            (out_dir / folder).mkdir(parents=True, exist_ok=True)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=device.type == "cuda")
    collected: dict[str, list] = {"indices": [], "inputs": [], "outputs": [], "holes": []}
    hits = count = 0
    early_outputs: dict[int, list[np.ndarray]] = {spot: [] for spot in early_spots}
    early_hits = dict.fromkeys(early_spots, 0)
    start = time.perf_counter()
    for images, holes, indices in progress_bar(loader, desc="inpainting", unit="batch", enabled=progress):
        images = images.to(device, non_blocking=True)  # (B, 3, H, W) normalized
        holes = holes.to(device, non_blocking=True)    # (B, 1, H, W) bool
        histories = None
        if decoding.method != "maskgit":
            outputs_u8 = fill_baseline(decoding.method, to_uint8_image(images, mean, std), holes[:, 0].cpu().numpy())
        else:
            outputs, tokens, token_mask, histories = decode_holes(model, images, holes, indices, decoding,
                                                                  save_history or bool(early_spots))
            gt_tokens = None
            if gt is not None:
                _, gt_tokens = model.encode_to_z(normalize(gt[indices.numpy()], mean, std).to(device))
                hits += int((tokens == gt_tokens)[token_mask].sum())
                count += int(token_mask.sum())
            for spot in early_spots:
                stopped = decode_step(model, histories, spot - 1, images, holes, decoding)  # (B, 3, H, W)
                early_outputs[spot].append(to_uint8_image(paste_known(stopped, images, holes, decoding), mean, std))
                if gt_tokens is not None:
                    early_hits[spot] += int((histories[0].tokens[spot - 1].to(device) == gt_tokens)[token_mask].sum())
            outputs_u8 = to_uint8_image(outputs, mean, std)  # (B, H, W, 3)
        if out_dir is not None:
            for i, pixels in zip(indices.tolist(), outputs_u8):
                save_png(pixels, out_dir / "test_results" / f"image_{i:03d}.png")
            if save_history:
                save_history_pictures(out_dir, indices.tolist(),
                                      decode_steps(model, histories, images, holes, decoding, mean, std), gt)
        collected["indices"].append(indices.numpy())
        collected["holes"].append(holes[:, 0].cpu().numpy())
        collected["inputs"].append(painted(to_uint8_image(images, mean, std), collected["holes"][-1]))
        collected["outputs"].append(outputs_u8)
    seconds = time.perf_counter() - start
    arrays = {key: np.concatenate(values) for key, values in collected.items()}
    early = {spot: (np.concatenate(early_outputs[spot]), early_hits[spot]) for spot in early_spots}
    return Result(**arrays, token_hits=hits, token_count=count, seconds=seconds, early=early)
