"""``l2`` and ``l1``: Euclidean and Manhattan distances between class means (``l1`` is
HierarchyCPCC's ``cpcc_metric=l1``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from hierot.distances.batch import ClassBatch, PairMemory
from hierot.distances.registry import register_distance


def means_memory(dim: int, itemsize: int, options: Mapping[str, object]) -> PairMemory:
    # a chunk's block of distances (at most ~2 entries per pair) and the pair indices
    return PairMemory(pair=4 * itemsize + 160)


def mean_distances(batch: ClassBatch, p: float) -> torch.Tensor:
    """``||mean(Z_a) - mean(Z_b)||_p`` for every pair of ``batch``; (P,)."""
    means = batch.class_means
    if batch.num_pairs == batch.total_pairs:
        # pdist returns exactly the triu_indices(k, k, 1) order and is ~20x faster than
        # gathering a (P, d) tensor of mean differences.
        return torch.nn.functional.pdist(means, p=p)
    # A chunk is a run of pairs in triu order: rows a0..a1 against the classes after a0.
    # One cdist block and a gather read each mean once; gathering (P, d) mean differences
    # would move P x d numbers (``scripts/bench_scale.py`` times this path).
    a0, a1 = batch.span_rows()
    centred = means - means.mean(0, keepdim=True)  # keeps the GEMM's cancellation small
    block = torch.cdist(centred[a0 : a1 + 1], centred[a0 + 1 :], p=p)
    return block.flatten()[(batch.pair_a - a0) * block.shape[1] + (batch.pair_b - a0 - 1)]


@register_distance("l2", memory=means_memory)
def l2_distance(batch: ClassBatch) -> torch.Tensor:
    """Euclidean distance between class means; (P,)."""
    return mean_distances(batch, 2.0)


@register_distance("l1", memory=means_memory)
def l1_distance(batch: ClassBatch) -> torch.Tensor:
    """Manhattan (l1) distance between class means; (P,)."""
    return mean_distances(batch, 1.0)
