"""Inpainting masks in the lab's convention: a uint8 square where 255 (white) is known and 0 (black)
is the hole. Generators for free-form strokes, boxes, a center box, an outpainting border and half
images, plus a CLI that writes one mask per image for users who bring images but no masks:

    python -m data.masks --kind freeform --images DIR --out DIR [--seed 0] [--masked-out DIR]
    python -m data.masks --kind dataset --images datasets/twemoji/val --seed 1 \
        --out outputs/val_holes/mask64 --masked-out outputs/val_holes/masked_image   # the val holes of training
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from common import UserError, check_destination, check_output_dir, check_seed, run_cli
from data.ground_truth import list_images
from data.images import READ_ERRORS, fit_box, has_alpha, image_size, read_image, save_png, to_8bit

MASK_KINDS = ("freeform", "box", "center", "border", "half")
WRITE_KINDS = (*MASK_KINDS, "dataset")  # what `python -m data.masks --kind` takes
KNOWN, HOLE = 255, 0
HOLE_GRAY = 128  # value of hole pixels in a masked image
HOLE_RANGE = (0.1, 0.5)  # default spread of the hole area, as a fraction of the image
INVERTED_SHARE = 0.6  # a mask whose hole covers more than this looks inverted (the masks here stay below)


def seeded_rng(seed: int, name: str) -> np.random.Generator:
    """A generator that depends only on (seed, name), so a file's mask does not depend on which
    other files are processed or in what order (Python's hash() is randomized per process)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def hole_fraction(mask: np.ndarray) -> float:
    """Fraction of hole pixels (value < 128) in a uint8 mask."""
    return float((mask < 128).mean())


def _freeform(size: int, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """Random brush strokes (polylines with round joints) until the hole covers a random target
    fraction in [lo, hi]; a stroke that would push the hole past hi is discarded."""
    target = rng.uniform(lo, hi)
    canvas = Image.new("L", (size, size), KNOWN)
    for _ in range(200):  # each stroke covers at most ~15% of the image: the target is met long before
        candidate = canvas.copy()
        draw = ImageDraw.Draw(candidate)
        width = int(rng.integers(max(2, size // 20), max(3, size // 8) + 1))
        x, y = rng.uniform(0, size, 2)
        for _ in range(int(rng.integers(1, 6))):
            angle = rng.uniform(0, 2 * math.pi)
            length = rng.uniform(0.1, 0.25) * size
            nx = float(np.clip(x + length * math.cos(angle), 0, size - 1))
            ny = float(np.clip(y + length * math.sin(angle), 0, size - 1))
            draw.line([(x, y), (nx, ny)], fill=HOLE, width=width)
            r = width / 2
            draw.ellipse([nx - r, ny - r, nx + r, ny + r], fill=HOLE)
            x, y = nx, ny
        fraction = hole_fraction(np.asarray(candidate))
        if fraction <= hi:
            canvas = candidate
            if fraction >= target:
                break
    return np.asarray(canvas, dtype=np.uint8).copy()


def _box_sides(size: int, rng: np.random.Generator, lo: float, hi: float, aspect: float) -> tuple[int, int]:
    """Integer (height, width) of a box whose area fraction is a random target in [lo, hi]."""
    area = rng.uniform(lo, hi) * size * size
    h = int(np.clip(round(math.sqrt(area / aspect)), 1, size))
    w_min, w_max = math.ceil(lo * size * size / h), math.floor(hi * size * size / h)
    w = int(np.clip(round(area / h), w_min, min(w_max, size)))
    return h, w


def generate_mask(
    kind: str,
    size: int = 64,
    rng: np.random.Generator | int | None = None,
    hole_range: tuple[float, float] = HOLE_RANGE,
) -> np.ndarray:
    """One (size, size) uint8 mask, 255 = known, 0 = hole. The hole area is drawn from `hole_range`
    (fractions of the image), except "half", which is always one half. `rng` may be a seed."""
    if kind not in MASK_KINDS:
        raise UserError(f"unknown mask kind {kind!r}; valid kinds: {', '.join(MASK_KINDS)}")
    rng = np.random.default_rng(rng)
    lo, hi = hole_range
    if kind == "freeform":
        return _freeform(size, rng, lo, hi)
    mask = np.full((size, size), KNOWN, dtype=np.uint8)
    if kind == "box":
        h, w = _box_sides(size, rng, lo, hi, aspect=rng.uniform(0.5, 2.0))
        top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        mask[top : top + h, left : left + w] = HOLE
    elif kind == "center":
        h, w = _box_sides(size, rng, lo, hi, aspect=1.0)
        top, left = (size - h) // 2, (size - w) // 2
        mask[top : top + h, left : left + w] = HOLE
    elif kind == "border":
        # the known part is a centered box covering 1 - (hole fraction) of the image
        h, w = _box_sides(size, rng, 1 - hi, 1 - lo, aspect=1.0)
        top, left = (size - h) // 2, (size - w) // 2
        mask[:] = HOLE
        mask[top : top + h, left : left + w] = KNOWN
    else:  # half: left, right, top or bottom
        side = rng.integers(4)
        half = size // 2
        region = [np.s_[:, :half], np.s_[:, half:], np.s_[:half, :], np.s_[half:, :]][side]
        mask[region] = HOLE
    return mask


DATASET_FREEFORM_SHARE = 0.75  # masks of the default dataset: free-form strokes, otherwise one box


def dataset_mask(name: str, size: int = 64, seed: int = 0) -> np.ndarray:
    """The default dataset's mask for the image called `name` (its stem): strokes or a box, seeded by
    (seed, name). data.prepare makes the test masks this way with the dataset seed."""
    rng = seeded_rng(seed, name)
    return generate_mask("freeform" if rng.random() < DATASET_FREEFORM_SHARE else "box", size, rng)


TRAINING_HOLE_KINDS = {"freeform": 0.65, "box": 0.25, "center": 0.04, "border": 0.03, "half": 0.03}
TRAINING_HOLE_RANGE = (0.05, 0.6)  # wider than the test masks' spread, so no one hole size is learned


def pixel_hole_bank(count: int, size: int, seed: int = 0, kinds: dict[str, float] = TRAINING_HOLE_KINDS,
                    hole_range: tuple[float, float] = TRAINING_HOLE_RANGE) -> np.ndarray:
    """`count` generated holes (count, size, size) bool, True = hole. Kinds are drawn with the
    probabilities `kinds`. Stage-2 training masks tokens inside such holes, the shape of what it must
    fill at test time."""
    rng = np.random.default_rng(seed)
    names, weights = list(kinds), np.array(list(kinds.values()), dtype=np.float64)
    bank = np.empty((count, size, size), dtype=bool)
    for i in range(count):
        bank[i] = generate_mask(str(rng.choice(names, p=weights / weights.sum())), size, rng, hole_range) < 128
    return bank


# ----------------------------------------------------------------------------- reading a user's mask

MaskSource = str | os.PathLike | Image.Image | np.ndarray


def _mask_array(mask: MaskSource) -> np.ndarray:
    """A mask file, PIL image or array as a uint8 (H, W) gray or (H, W, 4) RGBA array, or a bool (H, W)."""
    if isinstance(mask, np.ndarray):
        if mask.dtype == bool and mask.ndim == 2:
            return mask
        if mask.size and mask.min() >= 0 and mask.max() <= 1 and (mask.dtype != np.uint8 or mask.max() == 1):
            raise UserError("a mask array of values in [0, 1] is ambiguous (is 1 the hole?): pass a bool array, "
                            "True = hole (e.g. mask > 0.5 when 1 marks the hole), or a uint8 mask, black = hole")
        if mask.ndim == 2 or (mask.ndim == 3 and mask.shape[2] in (3, 4)):
            return mask.astype(np.uint8) if mask.dtype != np.uint8 else mask
        raise UserError(f"a mask array must be (H, W) or (H, W, 3 or 4), got shape {mask.shape}")
    if isinstance(mask, Image.Image):
        im = to_8bit(mask)
        return np.asarray(im.convert("RGBA") if has_alpha(im) else im.convert("L"))
    try:
        with Image.open(mask) as im:
            return _mask_array(ImageOps.exif_transpose(im))  # turned like its image (read_image)
    except FileNotFoundError:
        raise UserError(f"mask not found: {mask}") from None
    except READ_ERRORS as err:
        raise UserError(f"cannot read image {mask}: {err}") from None


def read_hole(mask: MaskSource, size: tuple[int, int] | None = None, hole_white: bool = False,
              fit: str = "resize") -> np.ndarray:
    """A user's mask -> bool (H, W), True = hole, by these rules:

    - a bool array is the hole itself;
    - a mask with transparency (RGBA, LA, a PNG's transparent colour, an (H, W, 4) array) that has
      transparent pixels: its opaque pixels (alpha >= 128) are the hole, as painted on a layer;
    - otherwise gray levels (RGB as luminance): black (< 128) is the hole, the lab's convention,
      or white (>= 128) with `hole_white` (diffusers', LaMa's).

    With `size` (width, height) the hole is brought to that size through `fit_box`: a pixel there is
    hole when any hole pixel falls in it, so a downscaled hole still covers every hole pixel."""
    array = _mask_array(mask)
    if array.dtype == bool:
        hole = array
    elif array.ndim == 3 and array.shape[2] == 4 and (array[..., 3] < 128).any():
        hole = array[..., 3] >= 128
    else:
        gray = array if array.ndim == 2 else np.asarray(Image.fromarray(array[..., :3]).convert("L"))
        hole = gray >= 128 if hole_white else gray < 128
    return hole if size is None else fit_hole(hole, size, fit)


def check_hole_kept(hole: np.ndarray, fit: str, name: str) -> None:
    """Refuse a hole (H, W) that `fit` would cut off: "crop" keeps only the centre square."""
    left, top, right, bottom = fit_box(hole.shape[1], hole.shape[0], fit)
    if hole[top:bottom, left:right].sum() != hole.sum():
        raise UserError(f"the hole reaches outside the centre square that --fit crop keeps of {name}; "
                        "use --fit resize")


def fit_hole(hole: np.ndarray, size: tuple[int, int], fit: str = "resize") -> np.ndarray:
    """A bool hole (H, W) brought to `size` (width, height) through fit_box: hole wherever any hole
    pixel falls (box filter, > 0)."""
    height, width = hole.shape
    box = fit_box(width, height, fit)
    if (width, height) == size and box == (0, 0, width, height):
        return hole
    coverage = Image.fromarray(hole.astype(np.float32)).resize(size, Image.BOX, box=box)
    return np.asarray(coverage) > 1e-6


def unfit_hole(hole: np.ndarray, size: tuple[int, int], fit: str = "resize") -> np.ndarray:
    """A square bool hole (s, s) brought back into the fit_box of a `size` (width, height) image
    (nearest); outside the box nothing is hole."""
    width, height = size
    left, top, right, bottom = fit_box(width, height, fit)
    full = np.zeros((height, width), dtype=bool)
    full[top:bottom, left:right] = np.asarray(Image.fromarray(hole).resize((right - left, bottom - top), Image.NEAREST))
    return full


def warn_if_inverted(holes: np.ndarray, names: list[str], hole_white: bool) -> None:
    """One warning when masks (N, H, W) bool have holes that cover most of them, as inverted ones do."""
    share = holes.reshape(len(holes), -1).mean(axis=1)
    inverted = np.flatnonzero(share > INVERTED_SHARE)
    if len(inverted):
        i = int(inverted[0])
        hint = ("if black marks the hole, drop --mask-hole-white (hole_white)" if hole_white else
                "if white marks the hole, pass --mask-hole-white (hole_white=True)")
        warnings.warn(f"{len(inverted)} of {len(holes)} masks look inverted: {names[i]} marks {share[i]:.0%} of the "
                      f"image as hole; {hint}", stacklevel=3)


def apply_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The masked image the lab ships: (H, W, 3) uint8 with hole pixels set to gray."""
    masked = image.copy()
    masked[mask < 128] = HOLE_GRAY
    return masked


def _replaces_only_the_same(image: np.ndarray) -> Callable[[Path], str | None]:
    """For check_destination: an existing file may be replaced when it already holds `image`
    (a rerun with the same settings); any other file (a hand-made mask) needs --overwrite."""
    def replaceable(path: Path) -> str | None:
        try:
            same = np.array_equal(read_image(path, "L" if image.ndim == 2 else "RGB"), image)
        except UserError:
            same = False
        return None if same else "holds another image (a mask made otherwise?)"
    return replaceable


def write_masks(
    kind: str, images: str | Path, out: str | Path, seed: int = 0, masked_out: str | Path | None = None,
    overwrite: bool = False,
) -> int:
    """Write one mask per image in `images` to `out` (same stem, .png, same square size as the image).
    `kind` is a MASK_KINDS name or "dataset", the default dataset's mix (see dataset_mask). With
    `masked_out`, also write each image with its hole painted gray. An existing file of the same
    name is replaced only when it holds what this run writes, or with `overwrite`. Returns the
    number of masks."""
    if kind not in WRITE_KINDS:
        raise UserError(f"unknown mask kind {kind!r}; valid kinds: {', '.join(WRITE_KINDS)}")
    check_seed(seed, "--seed")
    files = list_images(images)
    sizes = [image_size(f) for f in files]  # check every file before writing anything
    for f, (w, h) in zip(files, sizes, strict=True):
        if w != h:
            raise UserError(f"{f} is {w}x{h}; masks are square, so resize the images to a square size first")
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):
        raise UserError(f"two images in {images} share a file stem; each needs its own mask name")
    names = [f"{stem}.png" for stem in stems]
    check_output_dir(out, "--out", names, [images])
    if masked_out is not None:
        check_output_dir(masked_out, "--masked-out", names, [images])
        if Path(masked_out).resolve() == Path(out).resolve():
            raise UserError(f"--out and --masked-out are both {out}: the masked images would overwrite the masks")
    masks = [dataset_mask(f.stem, w, seed) if kind == "dataset" else generate_mask(kind, w, seeded_rng(seed, f.stem))
             for f, (w, _) in zip(files, sizes, strict=True)]
    writes = [(Path(out) / name, "--out", mask) for name, mask in zip(names, masks, strict=True)]
    if masked_out is not None:
        writes += [(Path(masked_out) / name, "--masked-out", apply_mask(read_image(f), mask))
                   for f, name, mask in zip(files, names, masks, strict=True)]
    for path, flag, image in writes:
        check_destination(path, flag, replaceable=_replaces_only_the_same(image), overwrite=overwrite)
    for folder in (out, masked_out):
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
    for path, _, image in writes:
        save_png(image, path)
    return len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write one inpainting mask (white known, black hole) per image.")
    parser.add_argument("--kind", default="freeform", help=f"one of: {', '.join(WRITE_KINDS)} (dataset: strokes or a "
                        "box, as the default dataset's test masks)")
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--out", required=True, help="folder for the masks (created if missing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--masked-out", help="optional folder for the images with their holes painted gray")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files of the same names that hold other images (hand-made masks)")
    args = parser.parse_args()
    n = write_masks(args.kind, args.images, args.out, args.seed, args.masked_out, args.overwrite)
    print(f"wrote {n} {args.kind} masks to {args.out}")


if __name__ == "__main__":
    run_cli(main)
