"""How a decode meets the known pixels: Laplace's equation on the hole (harmonic_fill), Poisson
blending of the decode into the known pixels, and the nearest-known-pixel fill the encoder sees."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from maskgit_inpaint.settings import Decoding


def harmonic_fill(values: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`values` (H, W, C) float with the pixels of `hole` (H, W) replaced by the harmonic function
    that equals `values` on the known pixels next to the hole: each hole pixel is the mean of its
    4 neighbours (fewer at the image border, where the slope across the border is zero). Used by
    the `harmonic` baseline and by Poisson blending (poisson_blend)."""
    import scipy.sparse
    import scipy.sparse.linalg

    height, width = hole.shape
    ys, xs = np.nonzero(hole)
    index = np.full(hole.shape, -1)
    index[ys, xs] = np.arange(len(ys))
    degree = np.zeros(len(ys))
    rhs = np.zeros((len(ys), values.shape[-1]))   # (P, C): the known neighbours' values
    rows, cols = [], []                            # -1 entries: neighbour pairs inside the hole
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        degree += inside
        pixel, ny, nx = np.nonzero(inside)[0], ny[inside], nx[inside]
        in_hole = hole[ny, nx]
        rows.append(pixel[in_hole])
        cols.append(index[ny[in_hole], nx[in_hole]])
        np.add.at(rhs, pixel[~in_hole], values[ny[~in_hole], nx[~in_hole]])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    laplacian = scipy.sparse.csc_matrix((np.full(len(rows), -1.0), (rows, cols)), shape=(len(ys), len(ys)))
    laplacian = laplacian + scipy.sparse.diags(degree, format="csc")
    filled = values.astype(np.float64, copy=True)
    filled[ys, xs] = scipy.sparse.linalg.spsolve(laplacian, rhs).reshape(len(ys), -1)
    return filled


def nearest_known(hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel of `hole` (H, W) bool, the (rows, cols) of the nearest known pixel (itself
    when known), by the Euclidean distance transform."""
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(hole, return_distances=False, return_indices=True)


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


def paste_known(decoded: torch.Tensor, images: torch.Tensor, holes: torch.Tensor, decoding: Decoding) -> torch.Tensor:
    """The decode (B, 3, H, W) with the known pixels of `images` pasted back where `holes` is False,
    its hole first Poisson-blended when decoding.blend says so; as it is without decoding.paste."""
    decoded = decoded.float()
    if not decoding.paste:
        return decoded
    if decoding.blend == "poisson":
        decoded = poisson_blend(decoded, images, holes)
    return torch.where(holes, decoded, images)
