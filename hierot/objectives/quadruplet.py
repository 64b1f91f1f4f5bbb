"""``quadruplet``: a quadruplet margin loss on L2-normalised features beside cross-entropy
(HierarchyCPCC's ``QuadrupletLoss``, after Zhang et al.'s hierarchical triplets)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hierot.errors import require_number
from hierot.hierarchy import Hierarchy
from hierot.objectives.registry import Objective, register_objective


def check_quadruplet(hierarchy: Hierarchy | None, m1: float, m2: float, lambda_s: float) -> None:
    require_number(m2, "quadruplet: m2", 0)
    require_number(m1, "quadruplet: m1", 0)
    if not m1 > m2 > 0:
        raise ValueError(f"quadruplet: the margins need m1 > m2 > 0, got m1={m1}, m2={m2}")
    if not require_number(lambda_s, "quadruplet: lambda_s", 0) <= 1:
        raise ValueError(f"quadruplet: lambda_s must lie in [0, 1], got {lambda_s}")


def quadruplet_loss(
    z: torch.Tensor, y: torch.Tensor, parent: torch.Tensor, m1: float, m2: float
) -> torch.Tensor:
    """The quadruplet term on features ``z`` (B, d) with class ids ``y`` (B,) and
    ``parent`` (K,) the parent concept of every class; 0 when no anchor forms a hard
    quadruplet.

    Every sample i is an anchor: its positive is the first other sample of its class in
    batch order; its same-parent negative p- the nearest sample of a sibling class and its
    negative n the nearest sample under another parent (in squared Euclidean distance, the
    reference's hard mining). An anchor counts when all three exist and both
    ``relu(d(i, +) - d(i, p-) + m1 - m2)`` and ``relu(d(i, p-) - d(i, n) + m2)`` are > 0;
    the loss is their sum over counted anchors / (2 x their number).
    """
    b = y.numel()
    with torch.no_grad():
        sq = (z * z).sum(1)
        dist = (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp_min(0)
        same = y[:, None] == y[None, :]
        other = ~torch.eye(b, dtype=torch.bool, device=z.device)
        pos_mask = same & other
        g = parent[y]
        same_parent = g[:, None] == g[None, :]
        sib_mask = same_parent & ~same
        neg_mask = ~same_parent
        has = pos_mask.any(1) & sib_mask.any(1) & neg_mask.any(1)
        positive = pos_mask.int().argmax(1)  # the first True in batch order
        inf = torch.tensor(float("inf"), dtype=dist.dtype, device=z.device)
        sibling = torch.where(sib_mask, dist, inf).argmin(1)
        negative = torch.where(neg_mask, dist, inf).argmin(1)
    d_pos = (z - z[positive]).pow(2).sum(1)
    d_sib = (z - z[sibling]).pow(2).sum(1)
    d_neg = (z - z[negative]).pow(2).sum(1)
    inner = F.relu(d_pos - d_sib + m1 - m2)
    outer = F.relu(d_sib - d_neg + m2)
    counted = has & (inner > 0) & (outer > 0)
    n = counted.sum()
    total = torch.where(counted, inner + outer, 0).sum()  # a mask, not an index: no wait
    return torch.where(n > 0, total / (2 * n.clamp_min(1)), total * 0)


@register_objective("quadruplet", check=check_quadruplet)
class Quadruplet(Objective):
    """``(1 - lambda_s) * quadruplet(normalize(z)) + lambda_s * CE(logits, y)``; under DDP
    the quadruplets are mined over the global batch, the cross-entropy stays each process's.

    The quadruplet's coarse label is each class's parent in the tree (the reference's
    ``coarse_map`` on its two-level trees).

    Args:
        m1, m2: the margins, m1 > m2 > 0 (HierarchyCPCC: 0.25, 0.15).
        lambda_s: the weight of cross-entropy (HierarchyCPCC: 0.8).
    """

    # the quadruplets are mined over the global batch under DDP
    batch_wide = True

    def __init__(
        self,
        hierarchy: Hierarchy,
        num_features: int,
        m1: float = 0.25,
        m2: float = 0.15,
        lambda_s: float = 0.8,
    ) -> None:
        super().__init__()
        check_quadruplet(hierarchy, m1, m2, lambda_s)
        self.m1, self.m2, self.lambda_s = float(m1), float(m2), float(lambda_s)
        self.register_buffer("parent", hierarchy.parent_map(), persistent=False)

    def sample_loss(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lambda_s * F.cross_entropy(logits, y)

    def batch_loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        quad = quadruplet_loss(F.normalize(z, dim=-1), y, self.parent, self.m1, self.m2)
        return (1 - self.lambda_s) * quad
