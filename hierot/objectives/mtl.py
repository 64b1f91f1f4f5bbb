"""``mtl``: one linear head per level of the tree and the weighted sum of their
cross-entropies (HierarchyCPCC's ``MTL``, which has a coarse and a fine head, generalised to
every level)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hierot.hierarchy import Hierarchy
from hierot.objectives.levels import level_maps, level_weights
from hierot.objectives.registry import Objective, register_objective


def check_mtl(hierarchy: Hierarchy | None, weights: Sequence[float] | None) -> None:
    level_weights(hierarchy, weights, "mtl")


@register_objective("mtl", check=check_mtl)
class MultiTaskLevels(Objective):
    """``sum_l w_l CE(head_l(z), y_l)`` over the levels ``1 .. depth``: the model's own
    head is the fine level's, and this adds one ``Linear(d, |level l|)`` for each level
    above it (``heads[l - 1]``).

    Args:
        weights: one weight per level, the top level first and the classes last; None for
            all 1 (HierarchyCPCC sums the two cross-entropies unweighted).
    """

    def __init__(
        self, hierarchy: Hierarchy, num_features: int, weights: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        self.weights = level_weights(hierarchy, weights, "mtl")
        maps = level_maps(hierarchy)
        self.register_buffer("maps", maps[:-1], persistent=False)
        sizes = [len(hierarchy.level_map(lvl)[0]) for lvl in hierarchy.levels[:-1]]
        self.heads = nn.ModuleList(nn.Linear(num_features, n) for n in sizes)

    def level_logits(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The logits of the levels above the classes, top level first."""
        return [head(z) for head in self.heads]

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.weights[-1] * F.cross_entropy(logits, y)
        for w, head, fine_to_level in zip(self.weights, self.heads, self.maps, strict=False):
            loss = loss + w * F.cross_entropy(head(z), fine_to_level[y])
        return loss
