"""Feature batches for the distance and CPCC tests."""

from __future__ import annotations

import torch


def multimodal_batch(
    num_classes: int = 6,
    per_class: tuple[int, int] = (3, 14),
    dim: int = 5,
    modes: int = 2,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features where every class is a mixture of ``modes`` separated Gaussian blobs, with
    unequal class sizes, labels shuffled so that classes interleave in batch order."""
    g = torch.Generator().manual_seed(seed)
    zs, ys = [], []
    for c in range(num_classes):
        n = int(torch.randint(per_class[0], per_class[1] + 1, (1,), generator=g))
        centers = 3 * torch.randn(modes, dim, generator=g, dtype=torch.float64)
        which = torch.arange(n) % modes
        zs.append(centers[which] + 0.3 * torch.randn(n, dim, generator=g, dtype=torch.float64))
        ys.append(torch.full((n,), 2 * c + 1))  # sparse labels: not 0..k-1
    z, y = torch.cat(zs), torch.cat(ys)
    perm = torch.randperm(len(y), generator=g)
    return z[perm].to(dtype), y[perm]


def class_pairs(z: torch.Tensor, y: torch.Tensor):
    """(a, b, Z_a, Z_b) for present classes a < b in triu order, samples in batch order."""
    classes = torch.unique(y)
    k = len(classes)
    for a, b in zip(*torch.triu_indices(k, k, 1).tolist()):
        yield a, b, z[y == classes[a]], z[y == classes[b]]
