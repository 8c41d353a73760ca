"""The Frechet distance between two Gaussians, exactly, also for singular covariances."""
from __future__ import annotations

import numpy as np
import torch

from common import UserError


def pivoted_cholesky(sigma: torch.Tensor) -> torch.Tensor:
    """A (d, r) factor F of a singular covariance, sigma = F F^T: Cholesky with diagonal pivoting,
    stopped at the numerical rank r (largest remaining diagonal <= d * eps * max diagonal, as
    LAPACK's pstrf). Costs O(d r^2)."""
    d = len(sigma)
    diag = sigma.diagonal().clone()  # diagonal of sigma - F F^T
    tol = d * torch.finfo(sigma.dtype).eps * diag.max()
    factor = torch.zeros_like(sigma)
    rank = 0
    while rank < d:
        p = int(torch.argmax(diag))
        if diag[p] <= tol:
            break
        column = (sigma[:, p] - factor[:, :rank] @ factor[p, :rank]) / diag[p].sqrt()
        factor[:, rank] = column
        diag -= column * column
        diag[p] = 0
        rank += 1
    return factor[:, :rank]


def lower_congruence(sigma: torch.Tensor, lower: torch.Tensor, block: int = 256) -> torch.Tensor:
    """The lower triangle of L^T sigma L for a lower-triangular L (the rest is not filled), by blocks
    that skip L's zeros: about a third of the work of two full matmuls."""
    product = torch.empty_like(sigma)
    for j in range(0, len(lower), block):  # sigma L: columns j.. of L are zero above row j
        product[:, j:j + block] = sigma[:, j:] @ lower[j:, j:j + block]
    out = torch.zeros_like(sigma)
    for i in range(0, len(lower), block):  # rows i.. of L^T (sigma L), up to the diagonal block
        out[i:i + block, :i + block] = lower[i:, i:i + block].T @ product[i:, :i + block]
    return out


def frechet_distance(
    mu1: np.ndarray | torch.Tensor,
    sigma1: np.ndarray | torch.Tensor,
    mu2: np.ndarray | torch.Tensor,
    sigma2: np.ndarray | torch.Tensor,
    device: str | torch.device = "cpu",
) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1^(1/2) S2 S1^(1/2))), in float64 on `device`.

    For any factor F with S1 = F F^T, F^T S2 F is symmetric PSD with the same nonzero eigenvalues as
    S1^(1/2) S2 S1^(1/2) (and as S1 S2), so the trace term is the sum of the square roots of its
    eigenvalues (eigvalsh, negative rounding noise clamped to 0): no iteration, nothing that can fail
    to converge. F is the Cholesky factor of S1; on well-conditioned covariances the result equals
    the scipy.linalg.sqrtm formula to ~1e-12 relative.

    Singular S1 (fewer images than dims, constant features), where Cholesky fails: F comes from
    `pivoted_cholesky` with as many columns as S1's numerical rank, so F^T S2 F is small and the
    result is the distance between the two degenerate Gaussians, with no epsilon added to the
    diagonals (to ~1e-12 relative of an exact SVD of the samples in the tests). scipy's sqrtm is
    less accurate there (~1e-7) and can return complex values; pytorch-fid then takes the real part
    or retries with 1e-6 added to the diagonals.
    """
    mu1, sigma1, mu2, sigma2 = (
        torch.as_tensor(a, dtype=torch.float64, device=device) for a in (mu1, sigma1, mu2, sigma2)
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise UserError(f"statistics do not match: mu {tuple(mu1.shape)} vs {tuple(mu2.shape)}, "
                        f"sigma {tuple(sigma1.shape)} vs {tuple(sigma2.shape)}")
    if not all(torch.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)):
        raise UserError("statistics contain NaN or infinite values")
    factor, info = torch.linalg.cholesky_ex(sigma1)
    if info.item() == 0:
        product = lower_congruence(sigma2, factor)  # eigvalsh reads only the lower triangle
    else:
        factor = pivoted_cholesky(sigma1)
        product = factor.T @ sigma2 @ factor
    eigenvalues = torch.linalg.eigvalsh(product).clamp(min=0)
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * eigenvalues.sqrt().sum())
