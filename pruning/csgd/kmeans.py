"""Seeded k-means of flattened filters, for C-SGD's clusters (docs/design.md 6.1). Plain torch, no sklearn.

k-means++ seeding from a `torch.Generator`, then Lloyd iterations until the assignment stops
changing. Every one of the ``k`` clusters is non-empty (C-SGD keeps one filter per cluster, so an
empty cluster would silently make the pruned layer narrower than its target): a cluster that loses
all its points takes the point farthest from its centre among clusters with more than one point.
Labels are renumbered by each cluster's smallest member, so the result does not depend on which
centre happened to be seeded first.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kmeans(points: Tensor, k: int, *, seed: int = 0, iterations: int = 100) -> Tensor:
    """Cluster the rows of ``points`` (n, d) into ``k`` non-empty clusters.

    Args:
        points: one row per item (a flattened filter); computed in float64 on the CPU.
        k: number of clusters, 1 <= k <= n.
        seed: seed of the k-means++ initialisation.
        iterations: at most this many Lloyd iterations.

    Returns:
        (n,) int64 labels in ``0..k-1``; cluster ``c`` is the one whose smallest member is the
        ``c``-th smallest among the clusters' smallest members (cluster 0 contains point 0).
    """
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty (n, d) matrix, got shape {tuple(points.shape)}")
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k must be between 1 and the number of points {n}, got {k}")
    x = points.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("kmeans: the points contain NaN or infinity")
    generator = torch.Generator().manual_seed(seed)
    centres = _plus_plus(x, k, generator)
    labels = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iterations):
        new = _fill_empty(x, torch.cdist(x, centres).argmin(dim=1), centres, k)
        if torch.equal(new, labels):
            break
        labels = new
        centres = _means(x, labels, k)
    return _canonical(labels, k)


def _plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: each new centre drawn with probability proportional to squared distance."""
    n = x.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest = (x - x[chosen[0]]).square().sum(dim=1)
    for _ in range(1, k):
        weights = nearest.clone()
        weights[chosen] = 0.0
        if weights.sum() <= 0:  # only duplicates of chosen points left: any unchosen one will do
            weights = torch.ones(n, dtype=x.dtype)
            weights[chosen] = 0.0
        pick = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(pick)
        nearest = torch.minimum(nearest, (x - x[pick]).square().sum(dim=1))
    return x[chosen].clone()


def _fill_empty(x: Tensor, labels: Tensor, centres: Tensor, k: int) -> Tensor:
    """Give every empty cluster the point farthest from its own centre (taken from a cluster of 2+)."""
    labels = labels.clone()
    for cluster in range(k):
        counts = torch.bincount(labels, minlength=k)
        if counts[cluster] > 0:
            continue
        distance = (x - centres[labels]).square().sum(dim=1)
        distance[counts[labels] < 2] = -1.0  # never empty another cluster
        labels[int(distance.argmax())] = cluster
    return labels


def _means(x: Tensor, labels: Tensor, k: int) -> Tensor:
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, labels, x)
    return sums / torch.bincount(labels, minlength=k).clamp_min(1).unsqueeze(1).to(x.dtype)


def _canonical(labels: Tensor, k: int) -> Tensor:
    """Renumber clusters in order of their smallest member."""
    first = torch.full((k,), labels.numel(), dtype=torch.long)
    first.scatter_reduce_(0, labels, torch.arange(labels.numel()), reduce="amin")
    rank = torch.empty(k, dtype=torch.long)
    rank[first.argsort()] = torch.arange(k)
    return rank[labels]
