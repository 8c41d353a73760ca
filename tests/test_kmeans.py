"""k-means (models/kmeans.py) on cases with a known answer."""
from __future__ import annotations

import pytest
import torch

from models.kmeans import kmeans, kmeans_plus_plus, lloyd, nearest


def blobs(centers: torch.Tensor, per_cluster: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points around each of `centers` (K, C), shuffled, and the index of the center of each."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centers)).repeat_interleave(per_cluster)
    points = centers[labels] + spread * torch.randn(len(labels), centers.shape[1], generator=g)
    order = torch.randperm(len(labels), generator=g)
    return points[order], labels[order]


def test_well_separated_clusters_are_found_exactly():
    g = torch.Generator().manual_seed(0)
    centers = 20 * torch.randn(6, 8, generator=g)
    points, labels = blobs(centers, 50, 0.5, seed=1)
    fit = kmeans(points, 6, seed=3, sample=100, chunk=37)  # seeds from a subsample, distances in odd chunks
    assigned, _ = nearest(points, fit.centroids)
    # one centroid per cluster, at its points' mean: the partition is the true one
    match = nearest(centers, fit.centroids)[0]
    assert sorted(match.tolist()) == list(range(6))
    assert torch.equal(assigned, match[labels])
    means = torch.stack([points[labels == c].mean(0) for c in range(6)])
    torch.testing.assert_close(fit.centroids[match], means, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(fit.inertia), (points - means[labels]).pow(2).sum(), rtol=1e-4, atol=0)
    assert fit.iterations < 30  # converged before the cap


def test_lloyd_moves_centroids_to_means_and_reseeds_an_empty_one():
    """Three tight groups on a line, started from two centroids between them and one far away that no
    point is nearest to: without re-seeding two groups would share a centroid."""
    points = torch.tensor([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2], [20.0], [20.1], [20.2]])
    fit = lloyd(points, torch.tensor([[5.0], [15.0], [1000.0]]), chunk=4)
    assert sorted(round(c, 4) for c in fit.centroids.flatten().tolist()) == [0.1, 10.1, 20.1]
    assert fit.inertia == pytest.approx(3 * 0.02, abs=1e-4)


def test_one_lloyd_step_is_the_mean_of_the_nearest_points():
    points = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [9.0, 9.0], [11.0, 9.0]])
    fit = lloyd(points, torch.tensor([[1.0, 1.0], [10.0, 10.0]]), max_iter=1)
    torch.testing.assert_close(fit.centroids, torch.tensor([[2 / 3, 2 / 3], [10.0, 9.0]]))
    assert fit.iterations == 1


def test_lloyd_iterates_until_the_assignment_settles():
    """From these seeds the optimum takes three moves: [0, 5.4], [1, 8], [1.5, 10.5]."""
    points = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0], [11.0]])
    fit = lloyd(points, torch.tensor([[0.0], [1.0]]))
    torch.testing.assert_close(fit.centroids, torch.tensor([[1.5], [10.5]]))
    assert 3 <= fit.iterations < 30  # stopped by convergence, not by the cap


def test_kmeans_plus_plus_seeds_are_distinct_points_and_the_fit_is_seeded():
    points, _ = blobs(10 * torch.eye(4), 20, 0.1, seed=0)
    seeds = kmeans_plus_plus(points, 4, torch.Generator().manual_seed(0))
    # squared-distance weighting almost surely picks one seed per blob
    assert sorted(nearest(seeds, 10 * torch.eye(4))[0].tolist()) == [0, 1, 2, 3]
    assert torch.equal(kmeans(points, 3, seed=5).centroids, kmeans(points, 3, seed=5).centroids)
    with pytest.raises(ValueError, match="cannot find 100 clusters in 80 points"):
        kmeans(points, 100)
