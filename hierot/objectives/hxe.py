"""``hxe``: hierarchical cross-entropy (Bertinetto et al., CVPR 2020, ``HierarchicalLLLoss``
with ``get_exponential_weighting``)."""

from __future__ import annotations

import math

import torch

from hierot.errors import require_number
from hierot.hierarchy import Hierarchy
from hierot.objectives.levels import AncestorLogProbs
from hierot.objectives.registry import Objective, register_objective


def check_hxe(hierarchy: Hierarchy | None, alpha: float, normalize: bool) -> None:
    require_number(alpha, "hxe: alpha", 0)
    if not isinstance(normalize, bool):
        raise ValueError(f"hxe: normalize must be true or false, got {normalize!r}")


def hxe_level_weights(hierarchy: Hierarchy, alpha: float, normalize: bool) -> torch.Tensor:
    """``(depth,)``: lambda(C) = exp(-alpha * level(C)) for the levels ``1 .. depth``;
    with ``normalize`` divided by the sum of exp(-alpha * depth(node)) over every node of
    the tree, root and leaves included (``get_exponential_weighting``)."""
    weights = torch.tensor(
        [math.exp(-alpha * lvl) for lvl in hierarchy.levels], dtype=torch.float64
    )
    if normalize:
        total = math.fsum(math.exp(-alpha * hierarchy.node_depth(n)) for n in hierarchy.nodes)
        weights = weights / total
    return weights


@register_objective("hxe", check=check_hxe)
class HierarchicalCrossEntropy(Objective):
    """``-mean_b sum_{C on the path from y_b up to the root} lambda(C) log(P(C) / P(parent C))``,
    P(C) the summed softmax probability of the classes under C (P(root) = 1).

    Each ratio is a difference of logsumexps, so the loss stays finite where the reference
    skips a term whose probability sum underflowed to 0 (``num != 0``). On a tree whose
    leaves sit at different depths a leaf is its own concept below its depth, where the
    ratio is 1 and adds nothing, as on the reference's tree paths.

    Args:
        alpha: decay of the weights with depth (HierarchyCPCC: 0.4; Bertinetto et al.
            sweep 0.1-0.9); 0 is plain cross-entropy.
        normalize: divide the weights by their sum over the tree's nodes (Bertinetto et
            al.'s default; HierarchyCPCC sets false, the default here).
    """

    inner_labels = True

    def __init__(
        self, hierarchy: Hierarchy, num_features: int, alpha: float = 0.4, normalize: bool = False
    ) -> None:
        super().__init__()
        check_hxe(hierarchy, alpha, normalize)
        self.register_buffer(
            "weights", hxe_level_weights(hierarchy, alpha, normalize), persistent=False
        )
        self.log_probs = AncestorLogProbs(hierarchy)

    def use_inner_labels(self, hierarchy: Hierarchy) -> None:
        """A label at an inner node of level d: the terms of the path from it up to the
        root (levels 1 .. d); below d there is no term (each ratio is 1)."""
        self.log_probs = AncestorLogProbs(hierarchy, inner_labels=True).to(self.weights.device)

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        log_p = self.log_probs(logits, y)  # (B, L), level 1 first
        ratios = log_p - torch.cat([log_p[:, :1] * 0, log_p[:, :-1]], dim=1)
        return -(ratios * self.weights.to(log_p.dtype)).sum(1).mean()
