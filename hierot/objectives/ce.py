"""``ce``: cross-entropy on the fine labels (the default objective)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hierot.hierarchy import Hierarchy
from hierot.objectives.registry import Objective, register_objective


@register_objective("ce")
class CrossEntropy(Objective):
    """``CE(logits, y)``, the mean over the batch."""

    def __init__(self, hierarchy: Hierarchy, num_features: int) -> None:
        super().__init__()

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)
