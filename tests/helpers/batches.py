"""Feature batches for the distance, CPCC and objective tests."""

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


def objective_batch(
    tree, size: int = 40, dim: int = 6, seed: int = 0, scale: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(z, logits, y)`` for an objective on ``tree``: every class once, then random ones;
    float64 features and logits with gradients."""
    g = torch.Generator().manual_seed(seed)
    k = tree.num_classes
    y = torch.cat([torch.arange(k), torch.randint(0, k, (size - k,), generator=g)])
    z = torch.randn(size, dim, generator=g, dtype=torch.float64).requires_grad_()
    logits = (scale * torch.randn(size, k, generator=g, dtype=torch.float64)).requires_grad_()
    return z, logits, y
