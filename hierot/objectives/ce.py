"""``ce``: cross-entropy on the fine labels (the default objective)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hierot.hierarchy import Hierarchy
from hierot.objectives.inner import LabelMembers, node_log_probs
from hierot.objectives.registry import Objective, register_objective


@register_objective("ce")
class CrossEntropy(Objective):
    """``CE(logits, y)``, the mean over the batch. A label at an inner node (training data
    labelled only to a genus, say) gives ``-log sum_{k under the node} p_k``, the
    cross-entropy of the node's marginal, which is CE itself at a class."""

    inner_labels = True

    def __init__(self, hierarchy: Hierarchy, num_features: int) -> None:
        super().__init__()
        self.members: LabelMembers | None = None

    def use_inner_labels(self, hierarchy: Hierarchy) -> None:
        self.members = LabelMembers(hierarchy)

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.members is None:  # class labels only: torch's own, as without inner labels
            return F.cross_entropy(logits, y)
        return -node_log_probs(logits, self.members(y)).mean()
