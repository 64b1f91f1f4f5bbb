"""``embedding``: hierarchy-based semantic class embeddings (Barz & Denzler, WACV 2019;
``cvjena/semantic-embeddings``, ``compute_class_embedding.py``, method ``unitsphere``) with
the cosine loss, plus a weighted cross-entropy as making-better-mistakes runs it
(``better_mistakes/model/losses.py:CosinePlusXentLoss``, ``--loss cosine-plus-xent``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hierot.errors import require_number
from hierot.hierarchy import Hierarchy
from hierot.objectives.registry import Objective, register_objective


def check_embedding(hierarchy: Hierarchy | None, xent_weight: float) -> None:
    if not math.isfinite(require_number(xent_weight, "embedding: xent_weight", 0)):
        raise ValueError(f"embedding: xent_weight must be finite, got {xent_weight!r}")


def class_embeddings(hierarchy: Hierarchy) -> torch.Tensor:
    """``(K, K)`` float64: unit rows whose inner products are the class similarities
    1 - h(i, j) / h_root, h the height of the lowest common ancestor and h_root the tree's
    height (``ClassHierarchy.max_height``, the root's). The reference places the classes
    one by one, solving for each the inner products with those before it
    (``unitsphere_embedding``): the rows of the Cholesky factor of the similarity matrix,
    which is positive definite on a tree (a sum of non-negative blocks, one per node, each
    class's own > 0)."""
    heights = hierarchy.lca_heights(torch.float64)
    similarity = 1 - heights / hierarchy.node_heights()[hierarchy.root]
    return torch.linalg.cholesky(similarity)


@register_objective("embedding", check=check_embedding)
class SemanticEmbedding(Objective):
    """``1 - mean_b cos(f_b, e_{y_b}) + xent_weight * CE(f, y)``: the head's output f (the
    model's K logits) is the embedding, e the fixed class embeddings (``class_embeddings``,
    K dimensions for K classes); the class scores are the cosines cos(f, e_k), the
    prediction the nearest embedding (making-better-mistakes ranks by cosine distance).

    The cross-entropy reads the embedding's coordinates as the classes' logits, as
    making-better-mistakes' ``CosinePlusXentLoss`` does (``cross_entropy(inputs, target)``
    on the embedding itself; Barz & Denzler's own variant puts a separate classification
    layer on the embedding): class y's cross-entropy pulls f towards the axis y, which
    lies at cosine ``e_y[y]`` (the Cholesky factor's diagonal) from e_y.

    Args:
        xent_weight: weight of the cross-entropy (making-better-mistakes: 0.1; 0: Barz &
            Denzler's cosine loss alone, making-better-mistakes' ``cosine-distance``).
    """

    def __init__(self, hierarchy: Hierarchy, num_features: int, xent_weight: float = 0.1) -> None:
        super().__init__()
        check_embedding(hierarchy, xent_weight)
        self.xent_weight = float(xent_weight)
        self.register_buffer("embeddings", class_embeddings(hierarchy).float(), persistent=False)

    def class_scores(self, z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        f = F.normalize(logits.float() if logits.dtype != torch.float64 else logits, dim=1)
        return f @ self.embeddings.to(f.dtype).T

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        f = F.normalize(logits.float() if logits.dtype != torch.float64 else logits, dim=1)
        loss = 1 - (f * self.embeddings.to(f.dtype)[y]).sum(1).mean()
        if self.xent_weight:
            loss = loss + self.xent_weight * F.cross_entropy(logits, y)
        return loss
