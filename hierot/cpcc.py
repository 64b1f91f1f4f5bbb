"""CPCC: correlation between class distances in feature space and in the label tree."""

from __future__ import annotations

import torch
from torch import nn

from hierot.distances import check_options, class_distances
from hierot.hierarchy import Hierarchy


def pearson(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson correlation of two (P,) vectors, and whether it is defined.

    Undefined (returned as a 0 that still carries a zero, finite gradient) when P < 3 or
    either vector is constant to within rounding of its dtype.
    """
    if x.numel() < 3:
        return x.sum() * 0, torch.tensor(False, device=x.device)
    t = t.to(x.dtype)
    xc = x - x.mean()
    tc = t - t.mean()
    tiny = torch.finfo(x.dtype).tiny
    eps = 64 * torch.finfo(x.dtype).eps
    spread_x = torch.linalg.vector_norm(xc)
    spread_t = torch.linalg.vector_norm(tc)
    # A spread at rounding level is noise: distances of identical features, say.
    valid = (spread_x > eps * x.abs().max() + tiny) & (spread_t > eps * t.abs().max() + tiny)
    r = (xc * tc).sum() / (spread_x * spread_t).clamp_min(tiny)
    return torch.where(valid, r, r * 0), valid


def present_tree_distances(
    classes: torch.Tensor, tree_dist: torch.Tensor, num_pairs: int
) -> torch.Tensor:
    k = classes.numel()
    if k and int(classes[-1]) >= tree_dist.shape[0]:
        raise ValueError(
            f"label {int(classes[-1])} is outside the hierarchy's {tree_dist.shape[0]} classes"
        )
    if k and int(classes[0]) < 0:
        raise ValueError(f"label {int(classes[0])} is negative")
    a, b = torch.triu_indices(k, k, 1, device=classes.device)
    t = tree_dist.to(classes.device)[classes[a], classes[b]]
    assert t.numel() == num_pairs
    return t


def cpcc_with_validity(
    z: torch.Tensor,
    y: torch.Tensor,
    tree_dist: torch.Tensor,
    method: str = "l2",
    **options: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cpcc, valid)``; see ``cpcc``. ``valid`` is a bool 0-dim tensor."""
    if tree_dist.dim() != 2 or tree_dist.shape[0] != tree_dist.shape[1]:
        raise ValueError(f"tree distances must be (K, K), got shape {tuple(tree_dist.shape)}")
    classes, dist = class_distances(z, y, method, **options)
    t = present_tree_distances(classes, tree_dist, dist.numel())
    return pearson(dist, t)


def cpcc(
    z: torch.Tensor,
    y: torch.Tensor,
    tree_dist: torch.Tensor,
    method: str = "l2",
    **options: object,
) -> torch.Tensor:
    """Pearson correlation between class distances and tree distances of the classes present.

    Args:
        z: (B, d) features; y: (B,) labels in ``0..K-1``.
        tree_dist: (K, K) tree distances (``Hierarchy.tree_distances()``).
        method, options: the class distance (``hierot.distances.class_distances``).
    Returns:
        0-dim tensor with gradient. On a degenerate batch (fewer than 3 classes, constant
        class or tree distances) the correlation is undefined: 0 with a zero gradient.
    """
    return cpcc_with_validity(z, y, tree_dist, method, **options)[0]


class CPCCLoss(nn.Module):
    """``1 - CPCC`` of a batch; exactly 0 (with zero gradient) on degenerate batches, so such
    a batch adds nothing to training.

    Args:
        hierarchy: the label tree (its leaves are the class ids).
        method: class distance name; options: its keyword options (e.g. ``reg=0.5``).
    """

    def __init__(self, hierarchy: Hierarchy, method: str = "l2", **options: object) -> None:
        super().__init__()
        check_options(method, options)
        self.method = method
        self.options = dict(options)
        # Derived from the hierarchy, so it is not saved in checkpoints.
        self.register_buffer("tree_dist", hierarchy.tree_distances(), persistent=False)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r, valid = cpcc_with_validity(z, y, self.tree_dist, self.method, **self.options)
        return torch.where(valid, 1 - r, r * 0)

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"method={self.method!r}{opts}"
