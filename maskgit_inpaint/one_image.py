"""One image from Python: `inpaint(image, mask)` fills its hole and gives it back at its own size."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import UserError
from data import normalize, restore_size, to_uint8_image
from data.masks import MaskSource
from maskgit_inpaint.baselines import fill_baseline
from maskgit_inpaint.decoding import Step, decode_holes, decode_steps
from maskgit_inpaint.preparation import ImageSource, prepare_image
from maskgit_inpaint.settings import Decoding
from models.maskgit import MaskGit


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


def inpaint(image: ImageSource, mask: MaskSource, model: MaskGit | None = None, decoding: Decoding | None = None, *,
            fit: str = "resize", hole_white: bool = False, return_steps: bool = False, **options: object) -> Inpainted:
    """Fill the hole of one image (a file, PIL image or uint8 array of any size) with MaskGIT (or a
    baseline, `method`).

    `mask` marks the hole (data.masks.read_hole: a bool array True = hole, a black-hole mask, white
    with `hole_white`, or a painted RGBA layer). `model` defaults to the shipped one
    (MaskGit.from_pretrained()). The image is resized (`fit` "resize") or centre-cropped ("crop") to
    the model's size, filled as `decoding` says (default: Decoding()), with any of its fields
    replaced by the keyword `options` (total_iter=12, sweet_spot=8, readout="sample", ...: every
    decoding flag of inpainting.py), and given back at its own size; `return_steps` adds every step.
    Same settings, same result as inpainting.py --image. Bad input raises one UserError."""
    decoding = with_options(decoding or Decoding(), options)
    model = model if model is not None else MaskGit.from_pretrained()
    decoding, note = decoding.resolved(model.mask_func, model.choice_temperature, model.num_image_tokens)
    if note:
        warnings.warn(note, stacklevel=2)
    if decoding.method != "maskgit" and return_steps:
        raise UserError("return_steps shows MaskGIT's steps; a baseline has none")
    vq = model.vqgan.cfg
    name = Path(image).name if isinstance(image, (str, os.PathLike)) else "the image"
    prepared = prepare_image(image, mask, vq["img_resolution"], fit=fit, hole_white=hole_white, name=name)
    if decoding.method != "maskgit":
        output = fill_baseline(decoding.method, prepared.pixels[None], prepared.model_hole[None])[0]
        if not decoding.paste:
            output = np.where(prepared.model_hole[..., None], output, prepared.pixels)
        return Inpainted(restore_size(prepared.original, prepared.hole, output, fit, decoding.paste), output,
                         prepared.pixels, [])
    device = next(model.parameters()).device
    images = normalize(prepared.pixels, vq["mean"], vq["std"])[None].to(device)
    holes = torch.from_numpy(prepared.model_hole)[None, None].to(device)
    outputs, _, _, histories = decode_holes(model, images, holes, [0], decoding, return_steps)
    output = to_uint8_image(outputs, vq["mean"], vq["std"])[0]
    steps = decode_steps(model, histories, images, holes, decoding, vq["mean"], vq["std"])[0] if return_steps else []
    return Inpainted(restore_size(prepared.original, prepared.hole, output, fit, decoding.paste), output,
                     prepared.pixels, steps)


def with_options(decoding: Decoding, options: dict) -> Decoding:
    """`decoding` with the fields named in `options` replaced; an unknown name is a UserError."""
    unknown = sorted(set(options) - {f.name for f in fields(Decoding)})
    if unknown:
        raise UserError(f"unknown inpaint() option(s) {', '.join(unknown)}; valid: "
                        f"{', '.join(f.name for f in fields(Decoding))}")
    return replace(decoding, **options)
