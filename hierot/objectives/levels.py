"""What the objectives share about the tree's levels: per-level weights, and
log-probabilities of a class's ancestors from the fine logits."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from hierot.errors import is_number
from hierot.hierarchy import Hierarchy
from hierot.hierarchy.labels import label_depths, label_level_maps


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
        if not is_number(w) or not 0 <= w < math.inf:
            raise ValueError(f"{name}: weights must be finite numbers >= 0, got {list(weights)!r}")
    if hierarchy is not None and len(weights) != hierarchy.depth:
        raise ValueError(
            f"{name}: weights has {len(weights)} values but the tree has {hierarchy.depth} "
            f"levels (one weight per level, the top level first and the classes last)"
        )
    return [float(w) for w in weights]


class AncestorLogProbs(nn.Module):
    """``forward(logits, y) -> (B, D)``: ``log P(ancestor of y at level l)`` for the levels
    ``1 .. depth``, where P of a concept is the summed softmax probability of the classes
    under it (the last level: the class itself).

    Each term is a logsumexp over the ancestor's classes minus the logsumexp of all: never
    the log of a sum that underflowed. The classes of every concept are a padded row of a
    table built once, so a sample gathers only its own ancestor's logits: O(B (K + sum_l
    S_l)) work for S_l the largest concept of level l, not O(D B K).

    With ``inner_labels`` ``y`` may be any label (``hierot.hierarchy.labels``): a label at
    an inner node of level d has its ancestors at the levels ``1 .. d`` (itself at d), and
    below d the node itself (``log P`` of level d repeated), as a class shallower than the
    deepest level is its own concept below its depth.
    """

    def __init__(self, hierarchy: Hierarchy, inner_labels: bool = False) -> None:
        super().__init__()
        self.levels = len(hierarchy.levels)
        self.inner_labels = inner_labels
        maps = hierarchy.label_maps()
        if inner_labels:  # a label above a level: any concept, replaced in forward
            maps = {lvl: m.clamp_min(0) for lvl, m in label_level_maps(hierarchy).items()}
            self.register_buffer("depth", label_depths(hierarchy), persistent=False)
        for i, label_to_level in enumerate(maps.values()):
            fine_to_level = label_to_level[: hierarchy.num_classes]
            groups = int(fine_to_level.max()) + 1
            counts = torch.bincount(fine_to_level, minlength=groups)
            order = torch.argsort(fine_to_level, stable=True)  # classes grouped by concept
            starts = torch.cumsum(counts, 0) - counts
            slot = torch.arange(len(order)) - starts[fine_to_level[order]]
            members = torch.zeros(groups, int(counts.max()), dtype=torch.long)
            members[fine_to_level[order], slot] = order
            mask = torch.arange(members.shape[1])[None, :] < counts[:, None]
            self.register_buffer(f"map{i}", label_to_level, persistent=False)
            self.register_buffer(f"members{i}", members, persistent=False)
            self.register_buffer(f"mask{i}", mask, persistent=False)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = torch.logsumexp(logits, dim=1)  # (B,)
        out = []
        for i in range(self.levels):
            mine = getattr(self, f"map{i}")[y]  # (B,) each sample's concept at this level
            columns = getattr(self, f"members{i}")[mine]  # (B, S) its classes, padded
            inside = getattr(self, f"mask{i}")[mine]
            picked = logits.gather(1, columns).masked_fill(~inside, float("-inf"))
            out.append(torch.logsumexp(picked, dim=1) - total)
        log_p = torch.stack(out, dim=1)
        if not self.inner_labels:
            return log_p
        # below a label's own level, its own level's value
        levels = torch.arange(self.levels, device=y.device)
        below = torch.minimum(levels[None, :], self.depth[y][:, None] - 1)
        return log_p.gather(1, below)
