"""``yolo``: YOLO-v2's softmax cascade (Redmon & Farhadi, CVPR 2017) as making-better-mistakes
runs it (Bertinetto et al., CVPR 2020; ``better_mistakes/data/softmax_cascade.py``,
``better_mistakes/model/losses.py:YOLOLoss``): one logit per node of the tree, a softmax
over every node's children, a class's probability the product of the conditionals on its
path; the loss the weighted sum of the conditionals' cross-entropies on the label's path."""

from __future__ import annotations

import math

import torch
from torch import nn

from hierot.errors import require_number
from hierot.hierarchy import Hierarchy
from hierot.objectives.nodes import NodeSpace, node_coordinates
from hierot.objectives.registry import Objective, register_objective


def check_yolo(hierarchy: Hierarchy | None, alpha: float, normalize: bool) -> None:
    if not math.isfinite(require_number(alpha, "yolo: alpha", 0)):
        raise ValueError(f"yolo: alpha must be finite, got {alpha!r}")
    if not isinstance(normalize, bool):
        raise ValueError(f"yolo: normalize must be true or false, got {normalize!r}")


def yolo_node_weights(nodes: NodeSpace, alpha: float, normalize: bool) -> torch.Tensor:
    """``(N,)``: exp(-alpha * level) of every node below the root (making-better-mistakes'
    ``get_exponential_weighting``); with ``normalize`` divided by their sum over every node,
    the root's 1 included."""
    weights = torch.exp(-alpha * nodes.depth.double())
    return weights / (1 + weights.sum()) if normalize else weights


@register_objective("yolo", check=check_yolo)
class SoftmaxCascade(Objective):
    """``-mean_b sum_{v on the path of y_b} w(v) log P(v | parent v)``, P(v | p) the softmax
    of v's logit over p's children; the class scores are the classes' log-probabilities
    ``sum_{v on the path} log P(v | parent v)`` (their exponentials sum to 1).

    The logits of the classes are the model's head's; this adds ``inner``, one
    ``Linear(d, N - K)`` for the N - K inner nodes below the root (together one logit per
    node, as the reference's single layer). The reference also gives the root a logit, the
    only member of its softmax: its log-probability is 0 and its gradient 0, so it is left
    out. A node with one child passes its probability on unchanged: the child's logit gets
    no gradient (as in the reference).

    Args:
        alpha: w(v) = exp(-alpha * level(v)); making-better-mistakes' YOLO-v2 runs leave it
            at 0.
        normalize: divide the weights by their sum over every node of the tree (the
            reference's default: with alpha 0 each weight is 1 / |V|, the loss the YOLO-v2
            sum divided by the number of nodes, a constant that Adam, their optimizer,
            cancels but SGD does not); false here, as ``hxe``'s.
    """

    def __init__(
        self, hierarchy: Hierarchy, num_features: int, alpha: float = 0.0, normalize: bool = False
    ) -> None:
        super().__init__()
        check_yolo(hierarchy, alpha, normalize)
        self.nodes = NodeSpace(hierarchy)
        inner = self.nodes.num_inner
        self.inner = nn.Linear(num_features, inner) if inner else None
        weights = yolo_node_weights(self.nodes, float(alpha), normalize).float()
        self.register_buffer("weights", weights, persistent=False)

    def conditionals(self, z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``(B, N)``: log P(v | parent v) for every node below the root, a log-softmax
        over each node's children (shifted by the children's largest logit)."""
        s = node_coordinates(logits, self.inner, z)
        parent = self.nodes.parent_group
        index = parent.expand(s.shape[0], -1)
        with torch.no_grad():  # the shift: any value gives the same result
            top = s.new_full((s.shape[0], self.nodes.num_groups), -math.inf)
            top = top.scatter_reduce(1, index, s, reduce="amax")
        shifted = s - top[:, parent]
        sums = s.new_zeros(top.shape).index_add(1, parent, shifted.exp())
        return shifted - sums.log()[:, parent]

    def class_scores(self, z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.nodes.path_sums(self.conditionals(z, logits))

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cond = self.conditionals(z, logits)
        weighted = self.nodes.path_sums(cond * self.weights.to(cond.dtype))
        return -weighted.gather(1, y[:, None]).mean()
