"""Pictures of a run: the labelled figure of every decoding step, the lab's unlabelled strips and
the overview page."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from data import save_png
from maskgit_inpaint.decoding import Step

OVERVIEW_IMAGES = 16


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
    # constrained layout keeps room for the title above the step labels (tight_layout ignores a suptitle)
    fig = Figure(figsize=(1.25 * columns + 0.4, 3.1 + 0.25 * bool(title)), dpi=100, layout="constrained")
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
