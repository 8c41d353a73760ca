"""PyTorch datasets for the lab's folders (or the Twemoji build): plain image folders for training,
masked image + mask pairs for inpainting, and the conversions between pixels, tokens and files."""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from common import UserError
from data.ground_truth import list_images
from data.images import check_sizes, read_image
from data.masks import check_hole_kept, fit_hole, read_hole, warn_if_inverted
from data.names import pair_files

Stats = float | Sequence[float]  # per-channel mean or std: one value or three


def _channel_tensor(values: Stats, name: str) -> torch.Tensor:
    """Mean or std as a (3, 1, 1) float tensor that broadcasts over (..., 3, H, W)."""
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(3)
    if t.numel() != 3:
        raise UserError(f"{name} needs 1 or 3 values (R, G, B), got {t.numel()}")
    if name == "std" and (t <= 0).any():
        raise UserError(f"std values must be positive, got {t.tolist()}")
    return t.reshape(3, 1, 1).clone()


def normalize(images: np.ndarray | torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """uint8 (..., H, W, 3) images -> float (..., 3, H, W) tensor (x / 255 - mean) / std."""
    x = torch.as_tensor(images).movedim(-1, -3).float() / 255
    return (x - _channel_tensor(mean, "mean")) / _channel_tensor(std, "std")


def denormalize(x: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """Normalized (..., 3, H, W) tensor -> the same shape in [0, 1] (clamped)."""
    mean, std = _channel_tensor(mean, "mean").to(x.device), _channel_tensor(std, "std").to(x.device)
    return (x.float() * std + mean).clamp(0, 1)


def to_uint8_image(x: torch.Tensor, mean: Stats, std: Stats) -> np.ndarray:
    """Normalized (B, 3, H, W) or (3, H, W) tensor -> uint8 numpy (B, H, W, 3) or (H, W, 3), ready to save."""
    pixels = (denormalize(x.detach(), mean, std) * 255).round().to(torch.uint8)
    return pixels.movedim(-3, -1).cpu().numpy()


def pixel_to_token_mask(hole: torch.Tensor, latent_size: int, above: float = 0.0) -> torch.Tensor:
    """Pixel hole mask (B, 1, H, W) or (H, W), True = hole -> token mask (B, L*L) or (L*L,) with
    L = latent_size, in row-major token order. A token is masked when more than `above` of its patch
    of (H / L) x (W / L) pixels is hole; with 0, when any hole pixel falls in it, so no token mixes
    known and unknown content."""
    squeeze = hole.dim() == 2
    if squeeze:
        hole = hole[None, None]
    if hole.dim() != 4 or hole.shape[1] != 1:
        raise ValueError(f"hole mask must be (B, 1, H, W) or (H, W), got {tuple(hole.shape)}")
    b, _, h, w = hole.shape
    if h % latent_size or w % latent_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of the latent size {latent_size}")
    ph, pw = h // latent_size, w // latent_size
    patches = hole.bool().reshape(b, latent_size, ph, latent_size, pw)  # (B, L, ph, L, pw)
    tokens = patches.float().mean(dim=(2, 4)) > above  # (B, L, L): share of hole pixels per patch
    tokens = tokens.reshape(b, latent_size * latent_size)  # (B, L*L)
    return tokens[0] if squeeze else tokens


# the channel orders of stage-2 training's colour variants (train_param `colour_variants: N` takes the
# first N): a permutation of R, G and B keeps white, black and grays and gives every hue another (a
# yellow face turns cyan or magenta), so the transformer sees the same shapes in colours it lacks
COLOUR_ORDERS = ((1, 2, 0), (2, 0, 1), (0, 2, 1), (2, 1, 0), (1, 0, 2))


def training_views(colour_variants: int, flip: bool) -> int:
    """How many views of each training image the token cache holds: the image and its colour
    variants, each also mirrored when `flip`: view v is colour variant v // 2 (0: the image's own
    colours), mirrored when v is odd; without `flip`, colour variant v (see view_pixels)."""
    return (1 + colour_variants) * (2 if flip else 1)


def view_pixels(pixels: torch.Tensor, views: torch.Tensor, flip: bool) -> torch.Tensor:
    """Images (B, 3, H, W), as pixel values (not normalized), in views `views` (B,) of
    training_views(..., flip): channels reordered by COLOUR_ORDERS, then mirrored."""
    mirrors = training_views(0, flip)  # the views of each colour: the image, and its mirror image with `flip`
    colour, mirrored = views // mirrors, views % mirrors
    orders = torch.tensor(((0, 1, 2), *COLOUR_ORDERS), device=pixels.device)[colour.to(pixels.device)]  # (B, 3)
    reordered = pixels.gather(1, orders[:, :, None, None].expand_as(pixels))
    return torch.where(mirrored.to(pixels.device).view(-1, 1, 1, 1) == 1, reordered.flip(-1), reordered)


class ImageFolderDataset(Dataset):
    """Images of a folder, or of several one after the other (each in data.names.natural_order; PNG,
    JPG, WEBP, BMP; any mode -> RGB, transparency on white) as normalized (3, size, size) float tensors, optionally
    flipped at random for training. Every file is checked up front: unreadable -> UserError naming
    it; other sizes -> resized with one warning, or a UserError when strict."""

    def __init__(
        self,
        root: str | os.PathLike | Sequence[str | os.PathLike],
        mean: Stats,
        std: Stats,
        flip: bool = False,
        size: int = 64,
        strict: bool = False,
        fit: str = "resize",
    ) -> None:
        self.files = []
        for folder in [root] if isinstance(root, (str, os.PathLike)) else root:
            files = list_images(folder)
            check_sizes(files, size, strict, folder, fit)
            self.files += files
        self.mean, self.std = mean, std
        self.flip, self.size, self.fit = flip, size, fit

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        x = normalize(read_image(self.files[index], "RGB", self.size, self.fit), self.mean, self.std)  # (3, H, W)
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x


class InpaintingDataset(Dataset):
    """Masked images paired with masks (the lab's masked_image/ and mask64/) by name or by the
    numbers in the names, else in order with a warning (data.names.pair_files).
    Item i: (image (3, size, size) normalized, hole (1, size, size) bool with True = hole, i).
    Masks are read by data.masks.read_hole's rules (`hole_white`: white marks the hole), with a
    warning for masks that look inverted. A mask that is all hole is an error; an all-known mask
    gives a warning and an empty hole, so that image comes back unchanged."""

    def __init__(
        self,
        masked_dir: str | os.PathLike,
        mask_dir: str | os.PathLike,
        mean: Stats,
        std: Stats,
        size: int = 64,
        strict: bool = False,
        fit: str = "resize",
        hole_white: bool = False,
    ) -> None:
        self.images = ImageFolderDataset(masked_dir, mean, std, size=size, strict=strict, fit=fit)
        mask_files = list_images(mask_dir)
        if len(mask_files) != len(self.images):
            raise UserError(
                f"{len(self.images)} masked images in {masked_dir} but {len(mask_files)} masks in {mask_dir};"
                " each image needs its mask, so the counts must match"
            )
        self.mask_files = pair_files(self.images.files, mask_files, "mask", mask_dir)
        check_sizes(self.mask_files, size, strict, mask_dir, fit)
        holes = []
        for f in self.mask_files:
            hole = read_hole(f, hole_white=hole_white)  # at the mask's own size
            check_hole_kept(hole, fit, f.name)
            holes.append(fit_hole(hole, (size, size), fit))
        holes = np.stack(holes)  # (N, H, W)
        all_hole = holes.all(axis=(1, 2))
        if all_hole.any():
            raise UserError(f"mask {self.mask_files[int(all_hole.argmax())]} is entirely hole (all black): "
                            "there is nothing known to inpaint from")
        warn_if_inverted(holes, [f.name for f in self.mask_files], hole_white)
        all_known = ~holes.any(axis=(1, 2))
        if all_known.any():
            warnings.warn(
                f"{int(all_known.sum())} of {len(holes)} masks in {mask_dir} are entirely known (all white), "
                f"e.g. {self.mask_files[int(all_known.argmax())].name}; those images are returned unchanged",
                stacklevel=2,
            )
        self.holes = torch.from_numpy(holes).unsqueeze(1)  # (N, 1, H, W) bool

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.images[index], self.holes[index], index
