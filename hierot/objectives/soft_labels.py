"""``soft_labels``: KL divergence to soft targets that spread each label's mass over the
classes near it in the tree (Bertinetto et al., CVPR 2020, ``make_all_soft_labels``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hierot.errors import require_number
from hierot.hierarchy import Hierarchy
from hierot.hierarchy.labels import label_lca_heights
from hierot.objectives.registry import Objective, register_objective


def check_soft_labels(hierarchy: Hierarchy | None, beta: float) -> None:
    if not math.isfinite(require_number(beta, "soft_labels: beta", 0)):
        raise ValueError(f"soft_labels: beta must be finite, got {beta!r}")


def soft_label_matrix(
    hierarchy: Hierarchy, beta: float, inner_labels: bool = False
) -> torch.Tensor:
    """``(K, K)``: row y is q(. | y) = softmax over i of ``-beta * h(i, y) / h_max``, h the
    height of the lowest common ancestor (``Hierarchy.lca_heights``), h_max its largest
    value over the pairs of classes. With ``inner_labels`` ``(N, K)``: a row for every
    label (``hierot.hierarchy.labels``), h the height of the lowest common ancestor of the
    class and the label's node (the node's own height for the classes under it), h_max
    still over the pairs of classes."""
    h_classes = hierarchy.lca_heights(torch.float64)
    h = label_lca_heights(hierarchy, torch.float64) if inner_labels else h_classes
    h_max = float(h_classes.max())
    scaled = h / h_max if h_max > 0 else h
    return torch.softmax(-beta * scaled, dim=1).float()


@register_objective("soft_labels", check=check_soft_labels)
class SoftLabels(Objective):
    """``mean_b KL(q(. | y_b) || softmax(logits_b))``.

    Args:
        beta: hardness: the larger, the closer q is to the one-hot label (HierarchyCPCC
            uses 10; Bertinetto et al. sweep 4-30).
    """

    inner_labels = True

    def __init__(self, hierarchy: Hierarchy, num_features: int, beta: float = 10.0) -> None:
        super().__init__()
        check_soft_labels(hierarchy, beta)
        self.beta = beta
        self.register_buffer("targets", soft_label_matrix(hierarchy, beta), persistent=False)

    def use_inner_labels(self, hierarchy: Hierarchy) -> None:
        targets = soft_label_matrix(hierarchy, self.beta, inner_labels=True)
        self.targets = targets.to(self.targets)

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        q = self.targets.to(logits.dtype)[y]
        # xlogy: 0 log 0 = 0 where a large beta underflows q to 0
        return (torch.xlogy(q, q) - q * F.log_softmax(logits, dim=1)).sum(1).mean()
