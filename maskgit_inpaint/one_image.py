"""One image from Python: `inpaint(image, mask)` fills its hole and gives it back at its own size."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import UserError
from data import normalize, restore_size, to_uint8_image
from data.masks import MaskSource
from maskgit_inpaint.decoding import Step, decode_holes, decode_steps
from maskgit_inpaint.preparation import ImageSource, prepare_image
from maskgit_inpaint.settings import BLENDS, Decoding, check_decoding, check_temperatures
from models.maskgit import READOUTS, MaskGit


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
