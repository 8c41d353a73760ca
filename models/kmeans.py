"""k-means in torch for codebooks: k-means++ seeding on a subsample, then Lloyd iterations over the
points in chunks, so that memory stays at a chunk's distances to the centroids however many points
there are (a VQGAN's training latents are millions of vectors)."""
from __future__ import annotations

from typing import NamedTuple

import torch

CHUNK = 65536  # points per distance computation: (CHUNK, K) floats at a time


class KMeans(NamedTuple):
    centroids: torch.Tensor  # (K, C)
    inertia: float           # sum of squared distances of the points to their centroids
    iterations: int          # Lloyd iterations run


def nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """For each point of x (N, C): the index of its nearest centroid (N,) and the squared distance to
    it (N,), computed `chunk` points at a time."""
    c2 = centroids.pow(2).sum(1)
    indices, distances = [], []
    for part in x.split(chunk):
        d = (part.pow(2).sum(1, keepdim=True) - 2 * part @ centroids.T + c2).clamp(min=0)  # (chunk, K)
        best, index = d.min(1)
        indices.append(index)
        distances.append(best)
    return torch.cat(indices), torch.cat(distances)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k seeds (k, C) chosen from x (N, C) by k-means++ (Arthur and Vassilvitskii 2007): the first
    uniformly, each next one with probability proportional to its squared distance to the nearest
    seed so far."""
    seeds = [int(torch.randint(len(x), (1,), generator=generator))]
    d2 = (x - x[seeds[0]]).pow(2).sum(1)
    for _ in range(k - 1):
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)  # fewer distinct points than k
        pick = int(torch.multinomial(weights.cpu(), 1, generator=generator))
        seeds.append(pick)
        d2 = torch.minimum(d2, (x - x[pick]).pow(2).sum(1))
    return x[seeds].clone()


def lloyd(x: torch.Tensor, centroids: torch.Tensor, max_iter: int = 30, tol: float = 1e-4, chunk: int = CHUNK
          ) -> KMeans:
    """Lloyd iterations from `centroids` (K, C) on x (N, C): each centroid moves to the mean of the
    points nearest to it; a centroid no point is nearest to moves onto the point farthest from its
    own centroid (one distinct point per empty centroid). Stops after `max_iter` iterations or when
    the inertia fell by less than `tol` (relative)."""
    centroids = centroids.clone().float()
    k, previous, iterations = len(centroids), float("inf"), 0
    while iterations < max_iter:
        iterations += 1
        index, d2 = nearest(x, centroids, chunk)
        counts = torch.bincount(index, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, index, x.float())
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            centroids[empty] = x[d2.topk(len(empty)).indices].float()
        inertia = d2.sum().item()
        if len(empty) == 0 and inertia >= (1 - tol) * previous:
            break
        previous = inertia
    return KMeans(centroids, nearest(x, centroids, chunk)[1].sum().item(), iterations)


def kmeans(x: torch.Tensor, k: int, seed: int = 0, max_iter: int = 30, sample: int = 100_000, chunk: int = CHUNK
           ) -> KMeans:
    """k centroids of the points x (N, C): k-means++ seeds from a seeded subsample of `sample`
    points, then lloyd() on all of them."""
    if not 1 <= k <= len(x):
        raise ValueError(f"cannot find {k} clusters in {len(x)} points")
    generator = torch.Generator().manual_seed(seed)
    subsample = x[torch.randperm(len(x), generator=generator)[:sample].to(x.device)]
    return lloyd(x, kmeans_plus_plus(subsample.float(), k, generator), max_iter, chunk=chunk)
