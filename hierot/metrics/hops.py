"""HOPS, the hierarchically ordered preference score (Sani and Anand, "Learning and
Evaluating Hierarchical Feature Representations", 2025; Hier-COS's analysis notebook).

For a sample of true class ``c`` the classes have a preference rank: 0 for the classes at
the lowest cost from ``c`` (``c`` itself), 1 for the next cost, and so on (a dense rank of
the row ``cost[c]``; the notebook ranks HAFrame similarities, a decreasing function of the
LCA height, which gives the same ranks as the LCA heights). ``expected`` is that row's ranks
sorted, ``obtained`` the ranks of the classes in the order the model ranks them. Position
``j`` weighs ``w_j``: ``2 ** -r`` for the first class of rank r, falling linearly over the
classes of that rank towards ``2 ** -(r + 1)`` (towards 0 for the deepest rank; every class of
rank 0 weighs 1). Then

    HOPS@k = clip(1 - sum_{j<k} w_j |e_j - o_j| / sum_{j<k} w_j |e_j - e_{k-1-j}|, 0, 1)

the denominator the worst order of the first k (``expected`` reversed there), and
``HOPS@1`` whether the top class has rank 0. ``HOPS`` (no k) is ``HOPS@K``; a k above the
number of classes K is K (the notebook's slices do the same). Reported: the mean over the
samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hierot.metrics.decoding import (
    DEFAULT_MEMORY_MB,
    check_decoding_inputs,
    decoded_scores,
    row_blocks,
)


def preference_ranks(cost_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ranks, expected)``, both (B, K) long: ``ranks[i, j]`` the dense rank of
    ``cost_rows[i, j]`` in its row (0 the lowest cost), ``expected[i]`` the row's ranks in
    ascending order."""
    ordered, order = cost_rows.sort(dim=1, stable=True)
    new = torch.zeros_like(order)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    expected = new.cumsum(dim=1)
    return torch.empty_like(expected).scatter_(1, order, expected), expected


def hops_weights(expected: torch.Tensor) -> torch.Tensor:
    """(B, K) float64 weights of the positions (Hier-COS's ``generate_weights`` of
    ``1 / 2 ** expected``): the positions of rank r, in order, take ``linspace(2 ** -r, next,
    n + 1)[:-1]`` for the n positions of that rank, ``next`` being ``2 ** -(r + 1)``, 0 for
    the deepest rank of the row and 1 for rank 0 (so every rank-0 position weighs 1)."""
    k = expected.shape[1]
    counts = torch.zeros_like(expected).scatter_add_(1, expected, torch.ones_like(expected))
    size = counts.gather(1, expected)
    start = (counts.cumsum(dim=1) - counts).gather(1, expected)
    offset = torch.arange(k, device=expected.device) - start
    rank = expected.double()
    value = torch.exp2(-rank)
    deepest = expected == expected[:, -1:]
    following = torch.where(
        deepest,
        torch.zeros_like(value),
        torch.where(expected > 0, torch.exp2(-rank - 1), torch.ones_like(value)),
    )
    return value + offset * ((following - value) / size)


def hops(
    logits: torch.Tensor,
    target: torch.Tensor,
    cost: torch.Tensor,
    ks: Sequence[int] = (1, 5, 20),
    decode: str = "argmax",
    decode_cost: torch.Tensor | None = None,
    parent: torch.Tensor | None = None,
    memory_mb: float = DEFAULT_MEMORY_MB,
    parent_logits: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``{"hops": ..., "hops@<k>": ...}``: the mean HOPS of the samples over all the classes
    and over the first k of each of ``ks``, the classes ranked by ``decode``
    (``decoded_scores``; ties among the scores may break otherwise than the notebook's
    reversed ``np.argsort``).

    Args:
        logits: (N, K) scores; target: (N,) true classes.
        cost: (K, K) the costs whose order the ranking should follow (LCA heights).
        decode_cost, parent, parent_logits: what ``crm`` and ``hie`` decode with
            (``decoded_scores``).
    """
    check_decoding_inputs(decode, decode_cost, parent)
    n, classes = logits.shape
    device = logits.device
    cost, target = cost.to(device), target.to(device)
    if decode_cost is not None:
        decode_cost = decode_cost.to(device=device, dtype=logits.dtype)
    if parent is not None:
        parent = parent.to(device)
    chosen = {f"hops@{k}": k for k in ks}
    chosen["hops"] = classes
    totals = {key: torch.zeros((), dtype=torch.float64, device=device) for key in chosen}
    # a block's (rows, K) tensors: about a dozen of 8 bytes
    for rows in row_blocks(n, 96 * classes, memory_mb):
        ranks, expected = preference_ranks(cost[target[rows]])
        weights = hops_weights(expected)
        other = None if parent_logits is None else parent_logits[rows].to(device)
        scores = decoded_scores(logits[rows], decode, decode_cost, parent, other)
        obtained = ranks.gather(1, scores.argsort(dim=1, descending=True, stable=True))
        done = (weights * (expected - obtained).abs()).cumsum(dim=1)
        for key, k in chosen.items():
            if k == 1:
                totals[key] += (obtained[:, 0] == 0).sum()
                continue
            j = min(k, classes)
            first = expected[:, :j]
            worst = (weights[:, :j] * (first - first.flip(1)).abs()).sum(dim=1)
            totals[key] += (1 - done[:, j - 1] / worst).clamp(0, 1).sum()
    return {key: total / max(n, 1) for key, total in totals.items()}
