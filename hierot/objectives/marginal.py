"""``marginal``: cross-entropy on the classes plus, at every coarser level, the negative log
of the summed fine probabilities of the true ancestor (HierarchyCPCC's ``sumloss``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hierot.hierarchy import Hierarchy
from hierot.hierarchy.labels import label_level_maps
from hierot.objectives.levels import AncestorLogProbs, level_weights
from hierot.objectives.registry import Objective, register_objective


def check_marginal(hierarchy: Hierarchy | None, weights: Sequence[float] | None) -> None:
    level_weights(hierarchy, weights, "marginal")


@register_objective("marginal", check=check_marginal)
class MarginalLevels(Objective):
    """``-mean_b sum_l w_l log P(ancestor_l(y_b))``, P the softmax of the fine logits summed
    under each concept; the last level is the classes themselves (plain CE).

    HierarchyCPCC takes ``log`` of the summed probabilities, which is ``-inf`` once every
    class under the true ancestor underflows (a sum below 1e-38 in float32): here each term
    is a logsumexp, finite for any logits.

    A label at an inner node of level d (``use_inner_labels``) has the terms of the levels
    ``1 .. d`` only, its ancestor at each (itself at d).

    Args:
        weights: one weight per level, the top level first and the classes last; None for
            all 1 (HierarchyCPCC: fine + coarse, unweighted).
    """

    inner_labels = True

    def __init__(
        self, hierarchy: Hierarchy, num_features: int, weights: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        self.register_buffer(
            "weights",
            torch.tensor(level_weights(hierarchy, weights, "marginal"), dtype=torch.float64),
            persistent=False,
        )
        self.log_probs = AncestorLogProbs(hierarchy)
        self.register_buffer("counted", None, persistent=False)  # set by use_inner_labels

    def use_inner_labels(self, hierarchy: Hierarchy) -> None:
        """(N, D) ``counted``: the levels each label has a term at (an inner node: its own
        and those above; a class: every level, as before)."""
        device = self.weights.device
        self.log_probs = AncestorLogProbs(hierarchy, inner_labels=True).to(device)
        maps = torch.stack(list(label_level_maps(hierarchy).values()), dim=1)
        self.counted = (maps >= 0).to(device)

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        log_p = self.log_probs(logits, y)  # (B, L)
        weights = self.weights.to(log_p.dtype)
        if self.counted is not None:  # no term below an inner label's level
            weights = weights * self.counted[y]
        return -(log_p * weights).sum(1).mean()
