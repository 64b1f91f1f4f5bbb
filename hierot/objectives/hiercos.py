"""``hiercos``: Hier-COS (Sani & Anand, 2025; ``Depanshu-Sani/Hier-COS``,
``util/hiercos_construction.py``): one dimension per node of the tree, a class scored by the
norm of the model's vector projected on the subspace of its path's nodes, trained with
``HierCOS_Loss``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hierot.errors import require_number
from hierot.hierarchy import Hierarchy
from hierot.objectives.nodes import NodeSpace, node_coordinates
from hierot.objectives.registry import Objective, register_objective


def check_hiercos(hierarchy: Hierarchy | None, alpha: float) -> None:
    if not math.isfinite(require_number(alpha, "hiercos: alpha", 0)):
        raise ValueError(f"hiercos: alpha must be finite, got {alpha!r}")


def path_targets(table: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``(K, depth)``: the target distribution over every class's path (``table``, padded
    with ``num_nodes``), the node at level i of a path of n nodes exp(2 / (n - i + 1)) over
    their sum (the reference's ``node_prob_distribution``: the leaf gets the most)."""
    real = table < num_nodes
    n = real.sum(1, keepdim=True)
    level = torch.arange(1, table.shape[1] + 1)[None, :]
    weights = torch.where(real, torch.exp(2.0 / (n - level + 1).clamp_min(1)), 0.0)
    return weights.double() / weights.double().sum(1, keepdim=True)


@register_objective("hiercos", check=check_hiercos)
class HierCOS(Objective):
    """``KL(t_y || softmax(|x|)) + alpha * aux``, x the model's vector with one coordinate
    per node below the root (the head's logits for the classes, and ``inner``, a
    ``Linear(d, N - K)``, for the inner nodes); the score of class k is ``||P_k x||``, P_k
    the projection on the span of its path's nodes (ancestors below the root and the class
    itself).

    Hier-COS builds each P_k as a dense N x N matrix from an orthonormal basis and fixes
    that basis to the identity, so ``||P_k x||^2`` is the sum of x_v^2 over the path: a sum
    along the path (``NodeSpace.path_sums``), O(B N) where the matrices take O(B K N^2).
    Its network ends in a fixed random orthonormal layer after a learnt one, together a
    linear map, here the heads.

    t_y spreads the label's mass over its path's nodes (``path_targets``). ``aux`` sums over
    the levels l of the tree: for the samples whose class reaches level l, the mean of
    ``|onehot(ancestor at l) - |x_l| / ||x_l|| |_1`` over level l's nodes; for the others,
    the mean of ``sum |x_l|`` (their coordinates at a level below their class pushed to 0).

    Where the reference differs: it skips a level's first term when no sample of the batch
    has an ancestor of index > 0 there (``level_labels > 0``, for ``>= 0``), which drops
    the top level whenever a batch's samples all fall under its first node, and always on
    a tree with one top node; here every level counts. The means are over the samples of a
    process's share of the batch, as the reference's.

    Args:
        alpha: weight of the auxiliary term (Hier-COS: 0.05 on CIFAR-100, 0.1 on FGVC
            Aircraft, 0.001 on iNaturalist-19, 1e-5 on tieredImageNet).
    """

    def __init__(self, hierarchy: Hierarchy, num_features: int, alpha: float = 0.05) -> None:
        super().__init__()
        check_hiercos(hierarchy, alpha)
        self.alpha = float(alpha)
        self.nodes = NodeSpace(hierarchy)
        inner = self.nodes.num_inner
        self.inner = nn.Linear(num_features, inner) if inner else None
        table = self.nodes.path_table(hierarchy)
        targets = path_targets(table, self.nodes.num_nodes)
        entropy = torch.xlogy(targets, targets).sum(1)  # sum t log t of every class
        self.register_buffer("paths", table, persistent=False)
        self.register_buffer("targets", targets.float(), persistent=False)
        self.register_buffer("entropy", entropy.float(), persistent=False)
        # each class's ancestor at every level, as an index among the level's nodes (-1
        # below a shallower class)
        for level in range(1, self.nodes.levels + 1):
            ids = self.nodes.level_ids(level)
            local = torch.full((self.nodes.num_nodes + 1,), -1, dtype=torch.long)
            local[ids] = torch.arange(len(ids))
            self.register_buffer(f"labels{level}", local[table[:, level - 1]], persistent=False)

    def coordinates(self, z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``(B, N)``: the vector x, one coordinate per node below the root."""
        return node_coordinates(logits, self.inner, z)

    def class_scores(self, z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        x = self.coordinates(z, logits)
        return self.nodes.path_sums(x.square()).clamp_min(0).sqrt()

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = self.coordinates(z, logits).abs()
        log_p = F.log_softmax(a, dim=1)
        padded = torch.cat([log_p, log_p.new_zeros(log_p.shape[0], 1)], 1)
        cross = (self.targets.to(a.dtype)[y] * padded.gather(1, self.paths[y])).sum(1)
        loss = (self.entropy.to(a.dtype)[y] - cross).mean()  # KLDivLoss(batchmean)
        aux = a.new_zeros(())
        for level in range(1, self.nodes.levels + 1):
            p = a[:, self.nodes.level_ids(level)]
            label = getattr(self, f"labels{level}")[y]
            reached = label >= 0
            # scatter, not F.one_hot, which reads the labels' range on the host
            onehot = torch.zeros_like(p).scatter_(1, label.clamp_min(0)[:, None], 1.0)
            miss = (onehot - F.normalize(p, dim=1)).abs().sum(1)
            aux = aux + (miss * reached).sum() / reached.sum().clamp_min(1)
            below = ~reached
            aux = aux + (p.sum(1) * below).sum() / below.sum().clamp_min(1)
        return loss + self.alpha * aux
