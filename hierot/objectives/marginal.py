"""``marginal``: cross-entropy on the classes plus, at every coarser level, the negative log
of the summed fine probabilities of the true ancestor (HierarchyCPCC's ``sumloss``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hierot.hierarchy import Hierarchy
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

    Args:
        weights: one weight per level, the top level first and the classes last; None for
            all 1 (HierarchyCPCC: fine + coarse, unweighted).
    """

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

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        log_p = self.log_probs(logits, y)  # (B, L)
        return -(log_p * self.weights.to(log_p.dtype)).sum(1).mean()
