"""``fastft``: Fast FlowTree, the Euclidean cost of the greedy coupling in batch order."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from hierot.distances.batch import ClassBatch, PairMemory
from hierot.distances.coupling import monotone_coupling
from hierot.distances.registry import register_distance


def fastft_memory(dim: int, itemsize: int, options: Mapping[str, object]) -> PairMemory:
    # ~40 long/float temporaries per coupling entry (the coupling's index arithmetic, the
    # sparse pattern and its sort), plus the class pair's own indices.
    return PairMemory(coupling=320 + 8 * itemsize, pair=64)


@register_distance("fastft", memory=fastft_memory)
def fastft_distance(batch: ClassBatch) -> torch.Tensor:
    """``sum_rs P_rs ||z_r - z_s||`` with P the north-west-corner coupling of the two classes'
    uniform distributions, samples in batch order; (P,). The plan has no gradient (it depends
    only on the class counts), so the gradient is the envelope gradient."""
    pa, pb = batch.pair_a, batch.pair_b
    pair, r, s, mass = monotone_coupling(batch.counts[pa], batch.counts[pb], batch.z.dtype)
    i = batch.members[pa[pair], r]
    j = batch.members[pb[pair], s]
    cost = batch.pair_sample_distances(i, j)
    out = torch.zeros(batch.num_pairs, dtype=cost.dtype, device=cost.device)
    return out.index_add(0, pair, mass * cost)
