"""``fastft``: Fast FlowTree, the Euclidean cost of the greedy coupling in batch order."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from hierot.distances.batch import ClassBatch, PairMemory
from hierot.distances.coupling import monotone_coupling, weighted_monotone_coupling
from hierot.distances.registry import register_distance
from hierot.distances.weights import check_weights, pair_weights


def fastft_memory(dim: int, itemsize: int, options: Mapping[str, object]) -> PairMemory:
    # ~40 long/float temporaries per coupling entry (the coupling's index arithmetic, the
    # sparse pattern and its sort), plus the class pair's own indices; with weights, ~16
    # float64/long temporaries per padded sample of the pair (cumulative weights, their
    # sorted union, midpoints, lookups).
    sample = 128.0 if options.get("weights", "uniform") != "uniform" else 0.0
    return PairMemory(sample=sample, coupling=320 + 8 * itemsize, pair=64)


def check_fastft(weights: object) -> None:
    check_weights("fastft", weights)


@register_distance("fastft", check=check_fastft, memory=fastft_memory)
def fastft_distance(batch: ClassBatch, weights: str = "uniform") -> torch.Tensor:
    """``sum_rs P_rs ||z_r - z_s||`` with P the north-west-corner coupling of the two classes'
    distributions (``weights``: see ``hierot.distances.weights``), samples in batch order;
    (P,). The plan has no gradient (it depends only on the class counts and the detached
    weights), so the gradient is the envelope gradient.

    The authors' code fills the coupling from both ends at once, which is this coupling
    for uniform (or mirror-symmetric) weights and no coupling at all otherwise: its
    marginals are not the weights. Here any weights give the north-west-corner plan."""
    pa, pb = batch.pair_a, batch.pair_b
    if weights == "uniform":
        pair, r, s, mass = monotone_coupling(
            batch.counts[pa], batch.counts[pb], batch.z.dtype, batch.pair_sizes()
        )
    else:
        w_a, w_b = pair_weights(batch, weights, batch.pad)
        pair, r, s, mass = weighted_monotone_coupling(w_a, w_b, batch.z.dtype)
    i = batch.members[pa[pair], r]
    j = batch.members[pb[pair], s]
    cost = batch.pair_sample_distances(i, j)
    out = torch.zeros(batch.num_pairs, dtype=cost.dtype, device=cost.device)
    return out.index_add(0, pair, mass * cost)
