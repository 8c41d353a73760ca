"""Inpainting with MaskGIT: fill the holes of a test set, or of one image, by iterative parallel
decoding, and score the results against the ground truth.

    python inpainting.py                                   # default dataset and shipped checkpoints
    python inpainting.py --total-iter 12 --sweet-spot 8 --mask-func linear --save-history
    python inpainting.py --image photo.jpg --mask-kind center --output-dir outputs/one
    python inpainting.py --image photo.jpg --mask hole.png --mask-hole-white --fit crop
    python inpainting.py --baseline ns         # OpenCV Navier-Stokes (or telea, harmonic, nearest, mean-fill)

Outputs in --output-dir, with the lab's names: test_results/image_000.png, ... (one per input, in
input order, at the model's size), inpainted/<input name>.png (at the input's size, known pixels
kept exactly), with --save-history steps/test_{i}.png (a labelled figure of every step),
mask_scheduling/test_{i}.png and imga/test_{i}.png (the lab's unlabelled strips), overview.png, and
metrics.json when ground truth is given (--gt-path; default: test_gt.csv beside the masked images).

From Python, `inpaint(image, mask)` fills one image (numpy or PIL, any size) and returns the image
and, on request, every step; the functions below are also the building blocks of scripts/sweep.py
and app.py.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from common import UserError, check_minimum, check_output_dir, resolve_device, resolve_path, run_cli
from data import (
    FITS,
    MASK_KINDS,
    InpaintingDataset,
    apply_mask,
    generate_mask,
    load_ground_truth,
    normalize,
    pixel_to_token_mask,
    read_hole,
    read_image,
    restore_size,
    save_png,
    to_uint8_image,
)
from data.images import fit_pil, to_rgb
from data.masks import MaskSource, check_hole_kept, fit_hole, seeded_rng, unfit_hole, warn_if_inverted
from models.config import load_maskgit_config
from models.maskgit import PRECISIONS, READOUTS, Decoded, DecodeHistory, MaskGit, default_precision, load_maskgit
from models.pretrained import is_exported, maskgit_config
from models.schedules import GAMMA_FUNCTIONS, SCHEDULERS
from scoring import BASELINES, compute_metrics, fill_baseline, harmonic_fill, nearest_known

DEFAULT_CONFIG = "configs/small/MaskGit.yml"  # for a plain .pt transformer given without --MaskGitConfig
DEFAULT_TRANSFORMER = "checkpoints/transformer_small"
DEFAULT_MASKED = "datasets/twemoji/masked_image"
DEFAULT_MASKS = "datasets/twemoji/mask64"
BATCH_SIZE = {"cuda": 64, "cpu": 16}
# The defaults of Decoding were chosen on the val holes (first 201 val images, README "Results"),
# with the shipped weights: one step (T = 1) with the mean readout at sample temperature 0.7 gave
# hole PSNR 14.05 dB against 13.85 at 0.5, 13.89 at 1.0 and 13.09 for T = 8.
SAMPLE_TEMPERATURE = 0.7
OVERVIEW_IMAGES = 16
# what the VQGAN encoder sees in the hole: the input as given (gray), or each hole pixel's nearest
# known pixel, so that the known tokens next to the hole are encoded from something like the image
ENCODE_FILLS = ("gray", "nearest")
BLENDS = ("poisson", "none")  # how a pasted decode meets the known pixels: poisson_blend, or as it is
OUTPUTS = ("test_results", "inpainted", "steps", "mask_scheduling", "imga", "overview.png",
           "metrics.json")  # what a run writes
ImageSource = str | os.PathLike | Image.Image | np.ndarray


# ----------------------------------------------------------------------------- settings

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


def default_batch_size(device: torch.device) -> int:
    return BATCH_SIZE["cuda" if device.type == "cuda" else "cpu"]


# ----------------------------------------------------------------------------- inputs

def load_config(path: str | os.PathLike) -> dict:
    """The checked MaskGit config (with its VQGAN config as cfg["vqgan"])."""
    return load_maskgit_config(resolve_path(path))


def model_config(transformer: str | os.PathLike, config: str | os.PathLike | None = None) -> dict:
    """The config of a transformer: an exported folder's own (then `config` must not be given), or
    for a plain .pt the MaskGit YAML `config` (default: the small one)."""
    path = resolve_path(transformer)
    if is_exported(path):
        if config is not None:
            raise UserError(f"{transformer} is an exported model that carries its config; --MaskGitConfig goes "
                            "with a plain .pt transformer")
        return maskgit_config(path)
    return load_config(config or DEFAULT_CONFIG)


def load_model(config: dict | str | os.PathLike, transformer_ckpt: str | os.PathLike, device: torch.device,
               vqgan: str | os.PathLike | None = None, precision: str | None = None) -> MaskGit:
    """MaskGit in eval mode: an exported transformer folder with its VQGAN (MaskGit.from_pretrained),
    or a plain .pt transformer with `config` (checked config or its file) and the config's VQGAN.
    `vqgan` replaces the VQGAN either names; `precision` is the transformer's (PRECISIONS; default:
    default_precision of the device)."""
    ckpt = resolve_path(transformer_ckpt)
    if not ckpt.exists():
        raise UserError(f"transformer checkpoint not found: {ckpt} (pass --load-transformer-ckpt-path)")
    vqgan = None if vqgan is None else resolve_path(vqgan)
    if is_exported(ckpt):
        return MaskGit.from_pretrained(ckpt, vqgan, device, precision)
    model = load_maskgit(config if isinstance(config, dict) else load_config(config), ckpt, vqgan, device=device)
    return model.set_precision(precision or default_precision(device))


def open_dataset(masked_dir: str | os.PathLike, mask_dir: str | os.PathLike, cfg: dict, partial: float = 1.0,
                 fit: str = "resize", hole_white: bool = False) -> Dataset:
    """The lab's masked_image/ + mask64/ folders as (image, hole, index) items; with `partial` < 1
    only the first ceil(partial * N) pairs. Images of another size are brought to the model's by `fit`."""
    if not 0 < partial <= 1:
        raise UserError(f"--partial must be in (0, 1], got {partial}")
    vq = cfg["vqgan"]
    dataset = InpaintingDataset(resolve_path(masked_dir), resolve_path(mask_dir), vq["mean"], vq["std"],
                                size=vq["img_resolution"], fit=fit, hole_white=hole_white)
    count = math.ceil(partial * len(dataset))
    return dataset if count == len(dataset) else Subset(dataset, range(count))


def read_rgb(image: ImageSource) -> np.ndarray:
    """An image file, PIL image or uint8 array (H, W), (H, W, 3) or (H, W, 4) -> uint8 (H, W, 3)
    (transparency composited on white)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise UserError(f"an image array must be uint8 (H, W), (H, W, 3) or (H, W, 4); got {image.dtype} "
                            f"{image.shape}")
        return np.asarray(to_rgb(Image.fromarray(image)))
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image))
    path = Path(image)
    if not path.is_file():
        raise UserError(f"image not found: {image}")
    return read_image(path, "RGB")


@dataclass
class Prepared:
    """One user image ready for the model, and what is needed to give the result back at its size."""
    original: np.ndarray  # (H, W, 3) uint8, the input at its own size
    hole: np.ndarray      # (H, W) bool, True = hole
    pixels: np.ndarray    # (s, s, 3) uint8: what the model sees, hole painted gray
    model_hole: np.ndarray  # (s, s) bool
    clean: np.ndarray | None  # (s, s, 3) uint8 ground truth when the hole was generated (mask_kind)


def prepare_image(image: ImageSource, mask: MaskSource | None, size: int, *, fit: str = "resize",
                  hole_white: bool = False, mask_kind: str | None = None, seed: int = 0,
                  name: str = "the image") -> Prepared:
    """Bring one image of any size and its hole to the model's size: the mask by data.masks.read_hole's
    rules (or, with `mask_kind`, a generated one, seeded like `python -m data.masks`), the image
    resized or centre-cropped (`fit`) with a one-line notice. Bad input is one UserError."""
    if fit not in FITS:
        raise UserError(f"unknown fit {fit!r}; valid: {', '.join(FITS)}")
    original = read_rgb(image)
    height, width = original.shape[:2]
    pixels = np.asarray(fit_pil(Image.fromarray(original), (size, size), fit))
    clean = None
    if mask is None:
        if mask_kind not in MASK_KINDS:
            raise UserError(f"unknown --mask-kind {mask_kind!r}; valid: {', '.join(MASK_KINDS)}")
        model_hole = generate_mask(mask_kind, size, seeded_rng(seed, Path(name).stem)) < 128
        hole, clean = unfit_hole(model_hole, (width, height), fit), pixels
    else:
        hole = read_hole(mask, hole_white=hole_white)
        if hole.shape != (height, width):
            warnings.warn(f"the mask is {hole.shape[1]}x{hole.shape[0]} but {name} is {width}x{height}; "
                          "resizing the mask to the image", stacklevel=2)
            hole = np.asarray(Image.fromarray(hole).resize((width, height), Image.NEAREST))
        model_hole = fit_hole(hole, (size, size), fit)
    if model_hole.all():
        raise UserError("the mask is entirely hole: there is nothing known to inpaint from")
    if mask is not None:
        warn_if_inverted(hole[None], ["the mask"], hole_white)
    check_hole_kept(hole, fit, name)
    if not hole.any():
        warnings.warn("the mask has no hole (all known): the image comes back unchanged", stacklevel=2)
    if (width, height) != (size, size):
        how = "resized" if fit == "resize" else "centre-cropped and resized"
        warnings.warn(f"{name} is {width}x{height}: {how} to {size}x{size} for the model; the result is also "
                      f"given at {width}x{height}", stacklevel=2)
    return Prepared(original, hole, apply_mask(pixels, np.where(model_hole, 0, 255)), model_hole, clean)


def open_ground_truth(path: str | os.PathLike, count: int, size: int) -> np.ndarray:
    """Ground truth for `count` inputs: a lab CSV, a folder or (one input) an image file -> (N, H, W, 3) uint8."""
    path = resolve_path(path)
    if path.is_file() and path.suffix.lower() != ".csv":
        gt = read_image(path, "RGB", size)[None]
    else:
        gt = load_ground_truth(path, size)
    if len(gt) != count:
        raise UserError(f"{path} holds {len(gt)} ground-truth images but there are {count} inputs")
    if gt.shape[1:3] != (size, size):
        raise UserError(f"{path}: ground-truth images are {gt.shape[2]}x{gt.shape[1]}, not {size}x{size}")
    return gt


# ----------------------------------------------------------------------------- decoding

def make_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image seeded from (seed, image index), so that an image's result does
    not depend on the batch size or on the other images of its batch."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + int(i)) for i in indices]


def fill_tokens(model: MaskGit, z: torch.Tensor, token_mask: torch.Tensor, indices: Sequence[int],
                decoding: Decoding, steps: int, history: bool = False) -> Decoded:
    """Run the first `steps` steps of the schedule on tokens z (B, N) (MaskGit.inpaint)."""
    return model.inpaint(z, token_mask, total_iter=decoding.total_iter, sweet_spot=steps,
                         mask_func=decoding.mask_func, choice_temperature=decoding.choice_temperature,
                         sample_temperature=decoding.sample_temperature, scheduler=decoding.scheduler,
                         generators=make_generators(decoding.seed, indices), return_history=history,
                         readout=decoding.readout)


def _paste(decoded: torch.Tensor, images: torch.Tensor, holes: torch.Tensor, decoding: Decoding) -> torch.Tensor:
    """The decode (B, 3, H, W) with the known pixels of `images` pasted back where `holes` is False,
    its hole first Poisson-blended when decoding.blend says so; as it is without decoding.paste."""
    decoded = decoded.float()
    if not decoding.paste:
        return decoded
    if decoding.blend == "poisson":
        decoded = poisson_blend(decoded, images, holes)
    return torch.where(holes, decoded, images)


def poisson_blend(decoded: torch.Tensor, images: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
    """Poisson blending (Perez et al., 2003) of the decode (B, 3, H, W) into the known pixels of
    `images`: in each hole (B, 1, H, W) the decode keeps its gradients but meets the known pixels
    at the hole's edge, so the VQGAN's colour error there does not leave a seam. The correction is
    the harmonic function that equals known - decoded on the known pixels next to the hole."""
    blended = decoded.clone()
    for b, hole in enumerate(holes[:, 0].cpu().numpy()):
        if hole.any() and not hole.all():
            error = (images[b] - decoded[b]).permute(1, 2, 0).double().cpu().numpy()  # (H, W, 3)
            correction = torch.from_numpy(harmonic_fill(error, hole)).permute(2, 0, 1).to(decoded)
            blended[b] = torch.where(holes[b], decoded[b] + correction, decoded[b])
    return blended


def nearest_filled(images: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
    """`images` (B, C, H, W) with every pixel of `holes` (B, 1, H, W) replaced by its nearest known pixel."""
    filled = images.clone()
    for b, hole in enumerate(holes[:, 0].cpu().numpy()):
        if hole.any() and not hole.all():
            rows, cols = (torch.from_numpy(i).to(images.device) for i in nearest_known(hole))
            filled[b] = images[b][:, rows, cols]
    return filled


def decode_holes(model: MaskGit, images: torch.Tensor, holes: torch.Tensor, indices: Sequence[int],
                 decoding: Decoding, history: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[DecodeHistory] | None]:
    """MaskGIT on a batch, the one decode path of the CLI, the sweep, inpaint() and the page:
    normalized images (B, 3, H, W) and holes (B, 1, H, W) bool -> (the decode with the known pixels
    pasted back as decoding.paste says, normalized; tokens (B, N); token mask (B, N); the step
    history of each view). With decoding.flip_average the mirror image is decoded too and the two
    decodes averaged (mirrored back); the tokens and token mask are then those of the image itself."""
    views = [(images, holes)] + ([(images.flip(-1), holes.flip(-1))] if decoding.flip_average else [])
    token_masks, results = [], []
    for view, hole in views:
        token_masks.append(pixel_to_token_mask(hole, model.vqgan.latent_resolution, decoding.ring))  # (B, N)
        _, z = model.encode_to_z(view if decoding.encode_fill == "gray" else nearest_filled(view, hole))  # (B, N)
        results.append(fill_tokens(model, z, token_masks[-1], indices, decoding, decoding.sweet_spot, history))
    decoded = mean_of_views([model.decode_tokens(r.tokens, r.probs) for r in results])
    steps = [r.history for r in results] if history else None
    return _paste(decoded, images, holes, decoding), results[0].tokens, token_masks[0], steps


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


def decode_step(model: MaskGit, histories: Sequence[DecodeHistory], t: int, device: torch.device) -> torch.Tensor:
    """The image (B, 3, H, W) a sweet spot of t+1 gives, with the run's readout and views (decode_holes)."""
    decodes = []
    for history in histories:
        tokens, probs = history.readout(t)
        decodes.append(model.decode_tokens(tokens.to(device), None if probs is None else probs.to(device)))
    return mean_of_views(decodes)


def decode_steps(model: MaskGit, histories: Sequence[DecodeHistory], images: torch.Tensor, holes: torch.Tensor,
                 decoding: Decoding, mean: Sequence[float], std: Sequence[float]) -> list[list[Step]]:
    """Per image of the batch, its Steps: the input (hole gray), then the image after each step (the
    token masks are those of the image itself, not of its mirror image)."""
    frames = [to_uint8_image(_paste(decode_step(model, histories, t, images.device), images, holes, decoding),
                             mean, std) for t in range(len(histories[0].tokens))]  # S x (B, H, W, 3)
    frames.insert(0, painted(to_uint8_image(images, mean, std), holes[:, 0].cpu().numpy()))
    masks = torch.stack(histories[0].masks, 1).numpy()  # (B, S+1, N)
    side = math.isqrt(masks.shape[-1])
    return [[Step(t, int(masks[b, t].sum()), masks[b, t].reshape(side, side), frames[t][b])
             for t in range(masks.shape[1])] for b in range(masks.shape[0])]


def painted(pixels: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """uint8 images (..., H, W, 3) with their `holes` (..., H, W) bool painted gray, as shown to people."""
    return apply_mask(pixels, np.where(holes, 0, 255))


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


def tile(images: np.ndarray, columns: int, pad: int = 2, value: int = 128) -> np.ndarray:
    """uint8 (K, H, W, 3) -> one uint8 picture, `columns` images per row, `pad` pixels of `value`
    around each (torchvision's make_grid layout, without importing torchvision for it)."""
    k, h, w, c = images.shape
    rows = math.ceil(k / columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), value, dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = pad + (i // columns) * (h + pad), pad + (i % columns) * (w + pad)
        out[top:top + h, left:left + w] = image
    return out


def token_mask_picture(step: Step, size: tuple[int, int]) -> np.ndarray:
    """A step's token mask as a uint8 (H, W, 3) picture of `size` (H, W): masked black, known white."""
    known = Image.fromarray(np.where(step.token_mask, 0, 255).astype(np.uint8))
    return np.repeat(np.asarray(known.resize(size[::-1], Image.NEAREST))[..., None], 3, axis=2)


def steps_figure(steps: Sequence[Step], gt: np.ndarray | None = None, title: str = "") -> np.ndarray:
    """One labelled picture of decoding, uint8 (H, W, 3): a column per step ("step t: k tokens
    masked"), the token mask above the image, and the ground truth last when given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = len(steps) + (gt is not None)
    fig = Figure(figsize=(1.25 * columns + 0.4, 3.1 + 0.25 * bool(title)), dpi=100)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(2, columns, squeeze=False)
    size = steps[0].image.shape[:2]
    for column, step in enumerate(steps):
        axes[0, column].imshow(token_mask_picture(step, size), interpolation="nearest")
        axes[1, column].imshow(step.image, interpolation="nearest")
        axes[0, column].set_title(f"step {step.step}:\n{step.masked} tokens masked", fontsize=7)
    if gt is not None:
        axes[1, -1].imshow(gt, interpolation="nearest")
        axes[0, -1].set_title("ground truth", fontsize=7)
        axes[0, -1].set_axis_off()
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("0.75")
    axes[0, 0].set_ylabel("token mask", fontsize=7)
    axes[1, 0].set_ylabel("image", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.3)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_history_pictures(out_dir: Path, indices: Sequence[int], steps: Sequence[Sequence[Step]],
                          gt: np.ndarray | None = None, title: str = "") -> None:
    """For each image i: steps/test_{i}.png, the labelled figure of its steps (steps_figure, with
    its ground truth row of `gt` when given), and the lab's unlabelled strips: mask_scheduling/test_{i}.png,
    the token mask before and after every step (holes black, scaled to the image size), and
    imga/test_{i}.png, the masked input and then the image after each step."""
    for i, image_steps in zip(indices, steps):
        size = image_steps[0].image.shape[:2]
        save_png(steps_figure(image_steps, None if gt is None else gt[i], title), out_dir / "steps" / f"test_{i}.png")
        save_png(tile(np.stack([token_mask_picture(s, size) for s in image_steps]), len(image_steps)),
                 out_dir / "mask_scheduling" / f"test_{i}.png")
        save_png(tile(np.stack([s.image for s in image_steps]), len(image_steps)), out_dir / "imga" / f"test_{i}.png")


def save_results(out_dir: Path, result: Result) -> None:
    """test_results/image_{i:03d}.png for every image of a finished run."""
    (out_dir / "test_results").mkdir(parents=True, exist_ok=True)
    for i, pixels in zip(result.indices.tolist(), result.outputs):
        save_png(pixels, out_dir / "test_results" / f"image_{i:03d}.png")


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
    for images, holes, indices in tqdm(loader, desc="inpainting", unit="batch", disable=not progress):
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
                early_outputs[spot].append(to_uint8_image(
                    _paste(decode_step(model, histories, spot - 1, device), images, holes, decoding), mean, std))
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


# ----------------------------------------------------------------------------- one image, from Python

@dataclass
class Inpainted:
    """inpaint()'s answer."""
    image: np.ndarray        # (H, W, 3) uint8 at the input's size; with paste, the input's known pixels exactly
    model_image: np.ndarray  # (s, s, 3) uint8: the result at the model's size
    model_input: np.ndarray  # (s, s, 3) uint8: what the model was given, hole painted gray
    steps: list[Step]        # with return_steps: the input, then every step (see steps_figure)

    def pil(self) -> Image.Image:
        """The result at the input's size as a PIL image."""
        return Image.fromarray(self.image)


def inpaint(image: ImageSource, mask: MaskSource, model: MaskGit | None = None, *,
            total_iter: int = Decoding.total_iter, sweet_spot: int | None = None, mask_func: str | None = None,
            choice_temperature: float | None = None, sample_temperature: float = Decoding.sample_temperature,
            seed: int = 0, paste: bool = True, fit: str = "resize", hole_white: bool = False,
            return_steps: bool = False, readout: str = Decoding.readout,
            flip_average: bool = Decoding.flip_average, blend: str = Decoding.blend) -> Inpainted:
    """Fill the hole of one image (a file, PIL image or uint8 array of any size) with MaskGIT.

    `mask` marks the hole (data.masks.read_hole: a bool array True = hole, a black-hole mask, white
    with `hole_white`, or a painted RGBA layer). `model` defaults to the shipped one
    (MaskGit.from_pretrained()). The image is resized (`fit` "resize") or centre-cropped ("crop") to
    the model's size, decoded in `total_iter` steps stopped after `sweet_spot` with the `readout`
    (READOUTS), averaged with its mirror image's decode with `flip_average`, blended into the known
    pixels as `blend` says (BLENDS) and given back at its own size; `return_steps` adds every step. Same settings, same
    result as inpainting.py --image. Bad input raises one UserError."""
    model = model if model is not None else MaskGit.from_pretrained()
    check_temperatures(choice_temperature, sample_temperature)
    mask_func = mask_func or model.mask_func
    if readout not in READOUTS:
        raise UserError(f"unknown readout {readout!r}; valid: {', '.join(READOUTS)}")
    if blend not in BLENDS:
        raise UserError(f"unknown blend {blend!r}; valid: {', '.join(BLENDS)}")
    decoding = Decoding("maskgit", total_iter, check_decoding(total_iter, sweet_spot, mask_func), mask_func,
                        choice_temperature, sample_temperature, seed, paste, readout=readout,
                        flip_average=flip_average, blend=blend)
    vq = model.vqgan.cfg
    name = Path(image).name if isinstance(image, (str, os.PathLike)) else "the image"
    prepared = prepare_image(image, mask, vq["img_resolution"], fit=fit, hole_white=hole_white, name=name)
    device = next(model.parameters()).device
    images = normalize(prepared.pixels, vq["mean"], vq["std"])[None].to(device)
    holes = torch.from_numpy(prepared.model_hole)[None, None].to(device)
    outputs, _, _, histories = decode_holes(model, images, holes, [0], decoding, return_steps)
    output = to_uint8_image(outputs, vq["mean"], vq["std"])[0]
    steps = decode_steps(model, histories, images, holes, decoding, vq["mean"], vq["std"])[0] if return_steps else []
    return Inpainted(restore_size(prepared.original, prepared.hole, output, fit, paste), output, prepared.pixels,
                     steps)


# ----------------------------------------------------------------------------- metrics and pictures

def result_metrics(result: Result, gt: np.ndarray) -> dict:
    """compute_metrics of a run against the ground truth (indexed like the inputs), plus masked-token
    accuracy (MaskGIT only) and speed."""
    metrics = compute_metrics(result.outputs, gt[result.indices], result.holes)
    if result.token_count:
        metrics["masked_token_accuracy"] = result.token_hits / result.token_count
    metrics["images_per_second"] = result.images_per_second
    return metrics


def save_overview(path: str | os.PathLike, inputs: np.ndarray, outputs: np.ndarray, gt: np.ndarray | None = None,
                  title: str = "") -> None:
    """One page: input | inpainted | ground truth (when given) for 16 images spread evenly over the
    set (sorted file names group look-alikes, such as the flags), 4 per row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(OVERVIEW_IMAGES, len(inputs))
    picks = np.linspace(0, len(inputs) - 1, n).round().astype(int)
    columns = [inputs[picks], outputs[picks]] + ([gt[picks]] if gt is not None else [])
    cells = np.stack([tile(np.stack(triplet), len(columns), pad=1, value=160) for triplet in zip(*columns)])
    grid = tile(cells, columns=min(4, n), pad=8, value=255)
    height, width = grid.shape[:2]
    fig, ax = plt.subplots(figsize=(2 * width / 100, 2 * height / 100 + 0.5), dpi=100)
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    label = "input | inpainted" + (" | ground truth" if gt is not None else "")
    ax.set_title(f"{label}   ({n} of {len(inputs)}, evenly spaced){'   ' + title if title else ''}", fontsize=9)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def clear_outputs(out_dir: Path) -> int:
    """Delete what an earlier run wrote in `out_dir`, and only that (files named as this script names
    them): its lab-named images, so that a smaller run does not leave stale ones for FID to pick up,
    and its metrics.json, which a run without ground truth would otherwise leave behind. Returns how
    many files were removed."""
    patterns = {"test_results": r"image_\d{3,}\.png", "steps": r"test_\d+\.png", "mask_scheduling": r"test_\d+\.png",
                "imga": r"test_\d+\.png"}
    stale = [f for folder, pattern in patterns.items() for f in out_dir.glob(f"{folder}/*.png")
             if re.fullmatch(pattern, f.name)]
    stale += [f for f in [out_dir / "metrics.json"] if f.is_file()]
    for file in stale:
        file.unlink()
    return len(stale)


# ----------------------------------------------------------------------------- command line

class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors: one line and exit code 2, like every bad input."""

    def error(self, message: str):
        raise UserError(message)


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared with scripts/sweep.py: model, data, device and sampling."""
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--cpu-fallback", action="store_true", help="use the CPU when the CUDA device asked for is missing")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"images per batch (default: {BATCH_SIZE['cuda']} on CUDA, {BATCH_SIZE['cpu']} on the CPU)")
    p.add_argument("--partial", type=float, default=1.0, help="fraction of the test set to use (the first ones)")
    p.add_argument("--num_workers", "--num-workers", dest="num_workers", type=int,
                   default=min(4, (os.cpu_count() or 2) // 2), help="data loading processes")
    p.add_argument("--load-transformer-ckpt-path", default=DEFAULT_TRANSFORMER,
                   help="transformer: an exported folder, which carries its config and names its VQGAN, or a plain "
                        ".pt (the lab's) with --MaskGitConfig (default: %(default)s)")
    p.add_argument("--MaskGitConfig", default=None,
                   help=f"with a plain .pt transformer: its MaskGit YAML config, which names the VQGAN files "
                        f"(default: {DEFAULT_CONFIG})")
    p.add_argument("--vqgan", "--vqgan-ckpt", dest="vqgan", default=None,
                   help="VQGAN weights (exported folder or .pt, e.g. the lab's VQGAN.pt; default: the one the "
                        "transformer names); one the transformer was not trained on is refused")
    p.add_argument("--test-maskedimage-path", default=DEFAULT_MASKED,
                   help="masked images, hole painted gray (default: %(default)s)")
    p.add_argument("--test-mask-path", default=DEFAULT_MASKS,
                   help="masks paired by sorted name, black = hole (default: %(default)s)")
    p.add_argument("--gt-path", help="ground truth for metrics: folder, lab CSV or (with --image) an image file "
                   "(default: test_gt.csv beside the masked images, if there)")
    p.add_argument("--fit", choices=FITS, default="resize",
                   help="images of another size than the model's: resize them, or take their centre square "
                        "(default: %(default)s); results are also written at the input's size in inpainted/")
    p.add_argument("--mask-hole-white", action="store_true",
                   help="white marks the hole in the masks (diffusers, LaMa; default: black = hole, the lab's); "
                        "masks with transparency are read by their alpha: opaque = hole")
    p.add_argument("--random-seed", type=int, default=0, help="each image's randomness comes from (seed, index)")
    p.add_argument("--choice-temperature", type=float, default=None,
                   help="Gumbel noise on the confidence when choosing tokens to keep (default: the config's)")
    p.add_argument("--sample-temperature", type=float, default=SAMPLE_TEMPERATURE,
                   help="token sampling temperature (0 = argmax) (default: %(default)s)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=Decoding.scheduler,
                   help="which tokens each step keeps: the most confident (MaskGIT) or the next ones in a 2-D "
                        "Halton order (Halton-MaskGIT) (default: %(default)s)")
    p.add_argument("--ring", type=int, default=Decoding.ring,
                   help="also regenerate this many rings of known tokens around the hole, whose encoding saw the "
                        "gray hole (known pixels are still pasted back) (default: %(default)s)")
    p.add_argument("--readout", choices=READOUTS, default=Decoding.readout,
                   help="what the hole decodes: the sampled tokens, or for each the code vector its predicted "
                        "distribution expects (smoother, closer in PSNR) (default: %(default)s)")
    p.add_argument("--encode-fill", choices=ENCODE_FILLS, default=Decoding.encode_fill,
                   help="what the VQGAN encoder sees in the hole: the gray of the input, or the nearest known "
                        "pixel, so the known tokens around the hole look less like a gray edge (default: %(default)s)")
    p.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=Decoding.flip_average,
                   help="also fill the mirror image and average the two results, mirrored back (twice the work; "
                        "smoother, closer in PSNR) (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="the transformer's matrix products: fp32, or bf16 autocast, faster on GPUs and on CPUs with "
                        "AVX512-BF16 or AMX, slower where bf16 is emulated (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--blend", choices=BLENDS, default=Decoding.blend,
                   help="how the decoded hole meets the pasted known pixels: Poisson blending (the decode's "
                        "gradients, no colour seam at the hole's edge) or none (default: %(default)s)")
    p.add_argument("--no-paste", action="store_true",
                   help="write the raw VQGAN decode (what the lab scored) instead of pasting the known pixels back "
                        "(nothing is blended)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_temperatures(choice_temperature: float | None, sample_temperature: float) -> None:
    if sample_temperature < 0:
        raise UserError(f"--sample-temperature must be >= 0 (0 = argmax), got {sample_temperature}")
    if choice_temperature is not None and choice_temperature < 0:
        raise UserError(f"--choice-temperature must be >= 0, got {choice_temperature}")


def check_common_arguments(args: argparse.Namespace) -> None:
    """Ranges of the flags of add_common_arguments."""
    check_minimum(args, 1, "--batch-size")
    check_minimum(args, 0, "--num_workers")
    check_temperatures(args.choice_temperature, args.sample_temperature)
    if args.ring < 0:
        raise UserError(f"--ring must be at least 0, got {args.ring}")


def default_gt_path(args: argparse.Namespace) -> Path | None:
    """--gt-path, else test_gt.csv beside the masked-image folder (the dataset's), else None."""
    if args.gt_path is not None:
        return resolve_path(args.gt_path)
    beside = resolve_path(args.test_maskedimage_path).parent / "test_gt.csv"
    return beside if beside.is_file() else None


def input_paths(args: argparse.Namespace) -> list[Path]:
    """The files and folders a run reads images from, found as the run finds them."""
    single = getattr(args, "image", None) is not None
    paths = [args.image, args.mask] if single else [args.test_maskedimage_path, args.test_mask_path]
    return [resolve_path(p) for p in [*paths, args.gt_path, args.load_transformer_ckpt_path, args.vqgan]
            if p is not None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("--total-iter", type=int, default=Decoding.total_iter,
                   help="T: steps of the mask schedule (default: %(default)s)")
    p.add_argument("--sweet-spot", type=int, default=None,
                   help="S: run the first S steps of the T-step schedule and fill what is still masked with "
                        "that step's choices (default: T)")
    p.add_argument("--mask-func", default=None,
                   help=f"mask schedule: {', '.join(GAMMA_FUNCTIONS)} (default: the config's gamma_type)")
    p.add_argument("--output-dir", default="outputs/inpainting",
                   help="where test_results/ etc. go (default: %(default)s)")
    p.add_argument("--save-history", action="store_true",
                   help="also write steps/test_{i}.png (a labelled figure of every step), mask_scheduling/test_{i}.png "
                        "and imga/test_{i}.png (slower)")
    p.add_argument("--baseline", choices=BASELINES, help="fill holes without the model, for the results table")
    p.add_argument("--image", help="single-image mode: the image to inpaint")
    p.add_argument("--mask", help="with --image: its mask (black = hole; see --mask-hole-white)")
    p.add_argument("--mask-kind", help=f"with --image (a clean one): generate a mask: {', '.join(MASK_KINDS)}")
    return p.parse_args(argv)


def save_named(out_dir: Path, names: Sequence[str], originals: Sequence[tuple[np.ndarray, np.ndarray]],
               outputs: np.ndarray, fit: str, paste: bool) -> None:
    """inpainted/<name>.png for each input: its output at the input's size (restore_size) from the
    input's (original image, hole) pair."""
    (out_dir / "inpainted").mkdir(parents=True, exist_ok=True)
    for name, (original, hole), output in zip(names, originals, outputs):
        save_png(restore_size(original, hole, output, fit, paste), out_dir / "inpainted" / f"{Path(name).stem}.png")


def folder_originals(dataset: Dataset, indices: Sequence[int], hole_white: bool) -> tuple[list[str], list]:
    """File names and (image, hole) pairs at the images' own sizes of the items `indices` of an
    open_dataset: what save_named needs."""
    pairs = dataset.dataset if isinstance(dataset, Subset) else dataset
    names, originals = [], []
    for i in indices:
        original = read_rgb(pairs.images.files[i])
        height, width = original.shape[:2]
        names.append(pairs.images.files[i].name)
        originals.append((original, read_hole(pairs.mask_files[i], (width, height), hole_white)))
    return names, originals


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_common_arguments(args)
    if args.image is None and (args.mask or args.mask_kind):
        raise UserError("--mask and --mask-kind go with --image")
    if args.image is not None and (args.mask is None) == (args.mask_kind is None):
        raise UserError("--image needs exactly one of --mask FILE or --mask-kind KIND")
    if args.baseline and args.save_history:
        raise UserError("--save-history shows MaskGIT's steps; the baseline has none")
    out_dir = check_output_dir(args.output_dir, "--output-dir", OUTPUTS, input_paths(args))
    if args.baseline and not resolve_path(args.load_transformer_ckpt_path).exists():
        cfg = load_config(args.MaskGitConfig or DEFAULT_CONFIG)  # the baseline needs only the image size
    else:
        cfg = model_config(args.load_transformer_ckpt_path, args.MaskGitConfig)
    mask_func = args.mask_func or cfg["gamma_type"]
    sweet_spot = check_decoding(args.total_iter, args.sweet_spot, mask_func)
    decoding = Decoding(args.baseline or "maskgit", args.total_iter, sweet_spot, mask_func,
                        cfg["choice_temperature"] if args.choice_temperature is None else args.choice_temperature,
                        args.sample_temperature, args.random_seed, not args.no_paste, args.scheduler, args.ring,
                        args.readout, args.encode_fill, args.flip_average, args.blend)
    device = resolve_device(args.device, args.cpu_fallback)
    vq = cfg["vqgan"]

    if args.image is not None:
        prepared = prepare_image(resolve_path(args.image), None if args.mask is None else resolve_path(args.mask),
                                 vq["img_resolution"], fit=args.fit, hole_white=args.mask_hole_white,
                                 mask_kind=args.mask_kind, seed=args.random_seed, name=Path(args.image).name)
        dataset = [(normalize(prepared.pixels, vq["mean"], vq["std"]), torch.from_numpy(prepared.model_hole)[None], 0)]
        gt = None if prepared.clean is None else prepared.clean[None]
        gt_path = None if args.gt_path is None else resolve_path(args.gt_path)
        inputs = {"image": args.image, "mask": args.mask, "mask_kind": args.mask_kind}
        total = 1
    else:
        dataset = open_dataset(args.test_maskedimage_path, args.test_mask_path, cfg, args.partial, args.fit,
                               args.mask_hole_white)
        gt, gt_path = None, default_gt_path(args)
        inputs = {"masked_images": args.test_maskedimage_path, "masks": args.test_mask_path, "partial": args.partial}
        total = len(dataset.dataset) if isinstance(dataset, Subset) else len(dataset)
    if gt_path is not None:
        gt = open_ground_truth(gt_path, total, vq["img_resolution"])

    model = None if args.baseline else load_model(cfg, args.load_transformer_ckpt_path, device, args.vqgan,
                                                  args.precision)
    removed = clear_outputs(out_dir)
    if removed:
        print(f"removed {removed} files of an earlier run from {out_dir}", file=sys.stderr)
    batch_size = args.batch_size or default_batch_size(device)
    result = run_inpainting(dataset, model, decoding, vq["mean"], vq["std"], device, batch_size, args.num_workers,
                            out_dir, args.save_history, gt, progress=not args.no_progress)
    if args.image is not None:
        names, originals = [Path(args.image).name], [(prepared.original, prepared.hole)]
    else:
        names, originals = folder_originals(dataset, result.indices.tolist(), args.mask_hole_white)
    save_named(out_dir, names, originals, result.outputs, args.fit, not args.no_paste)

    title = f"{args.baseline} baseline" if args.baseline else f"{mask_func} T={args.total_iter} S={sweet_spot}"
    save_overview(out_dir / "overview.png", result.inputs, result.outputs,
                  None if gt is None else gt[result.indices], title)
    n = len(result.indices)
    print(f"inpainted {n} image{'s' * (n != 1)} in {result.seconds:.1f} s ({result.images_per_second:.1f} images/s) "
          f"on {device}, batch size {batch_size}")
    written = ["test_results/", "inpainted/", "overview.png"]
    written += ["steps/", "mask_scheduling/", "imga/"] if args.save_history else []
    if gt is not None:
        metrics = result_metrics(result, gt)
        record = {**metrics, "images": n, "seconds": result.seconds, "settings": {
            **decoding.settings(), **inputs, "gt_path": None if gt_path is None else str(gt_path),
            "config": args.MaskGitConfig,
            "transformer_ckpt": None if args.baseline else args.load_transformer_ckpt_path,
            "vqgan_ckpt": None if args.baseline else args.vqgan or cfg.get("VQ_Configs", {}).get("VQ_CKPT_path"),
            "device": str(device), "batch_size": batch_size, "precision": model and model.precision}}
        (out_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
        written.append("metrics.json")
        accuracy = metrics.get("masked_token_accuracy")
        print(f"PSNR {metrics['psnr']:.2f} dB (hole {metrics['psnr_hole']:.2f} dB), SSIM {metrics['ssim']:.4f}, "
              f"L1 in hole {metrics['l1_hole']:.4f}"
              + ("" if accuracy is None else f", masked-token accuracy {accuracy:.1%}"))
    print(f"outputs in {out_dir}: {', '.join(written)}")
    if gt_path is not None and n > 1:
        print(f"FID: python fid/fid_score_gpu.py --predicted-path {out_dir / 'test_results'} --gt-path {gt_path}")


if __name__ == "__main__":
    run_cli(main)
