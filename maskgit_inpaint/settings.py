"""Settings of a run: how the holes are filled (Decoding) and the defaults of paths and batch sizes."""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import torch

from common import UserError
from models.schedules import GAMMA_FUNCTIONS

DEFAULT_CONFIG = "configs/small/MaskGit.yml"  # for a plain .pt transformer given without --MaskGitConfig
DEFAULT_TRANSFORMER = "checkpoints/transformer_small"
DEFAULT_MASKED = "datasets/twemoji/masked_image"
DEFAULT_MASKS = "datasets/twemoji/mask64"
BATCH_SIZE = {"cuda": 64, "cpu": 16}
# Decoding's defaults are the best setting on the val holes (docs/results.md)
SAMPLE_TEMPERATURE = 0.7
# what the VQGAN encoder sees in the hole: the input as given (gray), or each hole pixel's nearest
# known pixel, so that the known tokens next to the hole are encoded from something like the image
ENCODE_FILLS = ("gray", "nearest")
BLENDS = ("poisson", "none")  # how a pasted decode meets the known pixels: poisson_blend, or as it is


@dataclass
class Decoding:
    """How the holes are filled: MaskGIT's schedule and sampling, or a baseline."""
    method: str = "maskgit"                   # "maskgit" or a name in BASELINES
    total_iter: int = 1                       # T: length of the mask schedule
    sweet_spot: int = 1                       # S <= T: steps actually run (the lab's meaning)
    mask_func: str = "cosine"                 # a name in GAMMA_FUNCTIONS
    choice_temperature: float | None = None   # None: the config's
    sample_temperature: float = SAMPLE_TEMPERATURE  # 0: argmax
    seed: int = 0
    paste: bool = True                        # paste the known pixels back over the decode
    scheduler: str = "confidence"             # which tokens each step keeps: a name in SCHEDULERS
    ring: int = 0                             # also regenerate this many rings of tokens around the hole
    readout: str = "mean"                     # what the hole decodes: the sampled tokens or their mean (READOUTS)
    encode_fill: str = "nearest"              # what the encoder sees in the hole: ENCODE_FILLS
    flip_average: bool = True                 # average the decode with the mirror image's, mirrored back
    blend: str = "poisson"                    # with paste: how the hole meets the known pixels (BLENDS)

    def settings(self) -> dict:
        """The fields that matter for this method, for metrics.json and the sweep's CSV."""
        return asdict(self) if self.method == "maskgit" else {"method": self.method, "seed": self.seed}


def check_decoding(total_iter: int, sweet_spot: int | None, mask_func: str) -> int:
    """Validate the schedule flags; returns the sweet spot, clamped to total_iter with a warning."""
    if total_iter < 1:
        raise UserError(f"--total-iter must be at least 1, got {total_iter}")
    if mask_func not in GAMMA_FUNCTIONS:
        raise UserError(f"unknown --mask-func {mask_func!r}; valid: {', '.join(GAMMA_FUNCTIONS)}")
    if sweet_spot is None:
        return total_iter
    if sweet_spot < 1:
        raise UserError(f"--sweet-spot must be at least 1, got {sweet_spot}")
    if sweet_spot > total_iter:
        print(f"warning: --sweet-spot {sweet_spot} is larger than --total-iter {total_iter}; "
              f"using {total_iter}", file=sys.stderr)
    return min(sweet_spot, total_iter)


def check_temperatures(choice_temperature: float | None, sample_temperature: float) -> None:
    if sample_temperature < 0:
        raise UserError(f"--sample-temperature must be >= 0 (0 = argmax), got {sample_temperature}")
    if choice_temperature is not None and choice_temperature < 0:
        raise UserError(f"--choice-temperature must be >= 0, got {choice_temperature}")


def default_batch_size(device: torch.device) -> int:
    return BATCH_SIZE["cuda" if device.type == "cuda" else "cpu"]
