"""What the objectives share about the tree's levels: per-level label maps, per-level
weights, and log-probabilities of a class's ancestors from the fine logits."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from hierot.hierarchy import Hierarchy


def level_weights(
    hierarchy: Hierarchy | None, weights: Sequence[float] | None, name: str
) -> list[float] | None:
    """One non-negative weight per level ``1 .. depth`` (top level first, the classes last),
    all 1 when ``weights`` is None. Without ``hierarchy`` only the values are judged."""
    if weights is None:
        return None if hierarchy is None else [1.0] * hierarchy.depth
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise ValueError(f"{name}: weights must be a list of numbers, got {weights!r}")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf:
            raise ValueError(f"{name}: weights must be finite numbers >= 0, got {list(weights)!r}")
    if hierarchy is not None and len(weights) != hierarchy.depth:
        raise ValueError(
            f"{name}: weights has {len(weights)} values but the tree has {hierarchy.depth} "
            f"levels (one weight per level, the top level first and the classes last)"
        )
    return [float(w) for w in weights]


def level_maps(hierarchy: Hierarchy) -> torch.Tensor:
    """``(depth, K)`` long tensor: row ``l - 1`` maps every class to its concept at level
    ``l`` (``Hierarchy.level_map``; a leaf shallower than ``l`` is its own concept)."""
    return torch.stack([hierarchy.level_map(lvl)[1] for lvl in hierarchy.levels])


def log_ancestor_probs(logits: torch.Tensor, maps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B, L)``: ``log P(ancestor of y at level l)`` for each row of ``maps`` (L, K), where
    P of a concept is the summed softmax probability of the classes under it.

    A logsumexp over each ancestor's classes (a masked row of the logits) minus the
    logsumexp of all: never the log of a sum that underflowed. O(L B K).
    """
    total = torch.logsumexp(logits, dim=1)  # (B,)
    out = []
    for fine_to_level in maps:  # one pass per level, so the work is (B, K) at a time
        inside = fine_to_level[None, :] == fine_to_level[y][:, None]  # (B, K)
        masked = logits.masked_fill(~inside, float("-inf"))
        out.append(torch.logsumexp(masked, dim=1) - total)
    return torch.stack(out, dim=1)
