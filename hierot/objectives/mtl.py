"""``mtl``: one linear head per level of the tree and the weighted sum of their
cross-entropies (HierarchyCPCC's ``MTL``, which has a coarse and a fine head, generalised to
every level)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hierot.hierarchy import Hierarchy
from hierot.hierarchy.labels import label_level_maps
from hierot.objectives.levels import level_weights
from hierot.objectives.registry import Objective, register_objective


def check_mtl(hierarchy: Hierarchy | None, weights: Sequence[float] | None) -> None:
    level_weights(hierarchy, weights, "mtl")


@register_objective("mtl", check=check_mtl)
class MultiTaskLevels(Objective):
    """``sum_l w_l CE(head_l(z), y_l)`` over the levels ``1 .. depth``: the model's own
    head is the fine level's, and this adds one ``Linear(d, |level l|)`` for each level
    above it (``heads[l - 1]``).

    A label at an inner node of level d (``use_inner_labels``) has a term at the levels
    ``1 .. d`` only, its ancestor at each (itself at d); the batch's loss stays the mean
    over its samples of their sums, ``sum_b sum_{l <= d_b} w_l CE_l(b) / B``, which is the
    one above when every label is a class.

    Args:
        weights: one weight per level, the top level first and the classes last; None for
            all 1 (HierarchyCPCC sums the two cross-entropies unweighted).
    """

    inner_labels = True

    def __init__(
        self, hierarchy: Hierarchy, num_features: int, weights: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        self.weights = level_weights(hierarchy, weights, "mtl")
        # (depth - 1, K): the levels above the classes; level_map numbers each level's
        # concepts 0 .. n - 1
        maps = torch.stack(list(hierarchy.label_maps().values()))[:-1]
        self.register_buffer("maps", maps, persistent=False)
        self.heads = nn.ModuleList(nn.Linear(num_features, int(m.max()) + 1) for m in maps)
        self.num_classes = hierarchy.num_classes
        self.inner = False  # whether ``maps`` has a column per label, -1 above a node

    def use_inner_labels(self, hierarchy: Hierarchy) -> None:
        """``maps`` gets a column per label (``label_level_maps``): an inner node's
        concept at each level, -1 (ignored) below the node."""
        maps = torch.stack(list(label_level_maps(hierarchy).values()))[:-1]
        self.maps = maps.to(self.maps.device)
        self.inner = True

    def level_logits(self, z: torch.Tensor) -> dict[int, torch.Tensor]:
        """``{level: (B, concepts) logits}`` of each level head on features ``z``, for the
        levels ``1 .. depth - 1`` (concept indices as ``Hierarchy.level_map``): what
        ``hierot.evaluate``'s ``acc_<level>_head`` and ``acc_path`` read."""
        return {level: head(z) for level, head in enumerate(self.heads, start=1)}

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.inner:
            return self._inner_forward(z, logits, y)
        loss = self.weights[-1] * F.cross_entropy(logits, y)
        for w, head, fine_to_level in zip(self.weights, self.heads, self.maps, strict=False):
            loss = loss + w * F.cross_entropy(head(z), fine_to_level[y])
        return loss

    def _inner_forward(
        self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Labels at any node: -1 targets (a level below the node, the classes for an
        inner label) add nothing; every term is divided by the batch size."""
        n = y.numel()
        fine = torch.where(y < self.num_classes, y, -1)
        loss = self.weights[-1] * F.cross_entropy(logits, fine, ignore_index=-1, reduction="sum")
        for w, head, label_to_level in zip(self.weights, self.heads, self.maps, strict=False):
            target = label_to_level[y]
            loss = loss + w * F.cross_entropy(head(z), target, ignore_index=-1, reduction="sum")
        return loss / n
