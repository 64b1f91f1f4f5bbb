"""``l2``: Euclidean distance between class means."""

from __future__ import annotations

import torch

from hierot.distances.batch import ClassBatch
from hierot.distances.registry import register_distance


@register_distance("l2")
def l2_distance(batch: ClassBatch) -> torch.Tensor:
    """``||mean(Z_a) - mean(Z_b)||_2`` for every pair; (P,)."""
    z = batch.z
    sums = torch.zeros(batch.counts.numel(), z.shape[1], dtype=z.dtype, device=z.device)
    means = sums.index_add(0, batch.inverse, z) / batch.counts[:, None].to(z.dtype)
    # pdist returns exactly the triu_indices(k, k, 1) order and is ~20x faster than
    # gathering a (P, d) tensor of mean differences.
    return torch.nn.functional.pdist(means)
