"""What the objectives that take labels at inner nodes share (``ce``, ``hxe``,
``soft_labels``; ``Objective.inner_labels``): the classes under each label, and the
log-probability of a label's node from the fine logits. Labels: ``hierot.hierarchy.labels``."""

from __future__ import annotations

import torch
from torch import nn

from hierot.hierarchy import Hierarchy
from hierot.hierarchy.labels import depth_first


class LabelMembers(nn.Module):
    """``forward(y) -> (B, K)`` bool: the classes under each label's node (a class label:
    that class alone), from every class's depth-first place and every label's run of places
    (buffers derived from the tree, not saved): O(B K) per step, O(N + K) held."""

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__()
        position, span = depth_first(hierarchy)
        self.register_buffer("position", position, persistent=False)
        self.register_buffer("span", span, persistent=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        lo, hi = self.span[y].unbind(1)
        return (self.position >= lo[:, None]) & (self.position < hi[:, None])


def node_log_probs(logits: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """``(B,)``: ``log sum_{k under the label} softmax(logits)_k``, a logsumexp over the
    label's classes minus the logsumexp of all (never the log of a sum that underflowed);
    ``members`` is ``LabelMembers``'s (B, K) mask."""
    inside = logits.masked_fill(~members, float("-inf"))
    return torch.logsumexp(inside, dim=1) - torch.logsumexp(logits, dim=1)
