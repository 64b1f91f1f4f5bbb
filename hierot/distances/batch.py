"""A batch grouped by class: padded member tables and the class pairs to compare."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from hierot.distances.pairwise import euclidean_distances


@dataclass(frozen=True)
class ClassBatch:
    """Features grouped by class, the shared input of every class-distance function.

    Shapes:
        z: (B, d) features in the compute dtype (float32 or float64).
        inverse: (B,) position of each sample's class in ``classes``.
        classes, counts: (k,) sorted labels present and their sample counts.
        members: (k, N) batch indices of each class in batch order, 0 where ``mask`` is False.
        mask: (k, N) real entries of ``members``.
        pair_a, pair_b: (P,) class positions of the pairs a < b in
            ``torch.triu_indices(k, k, 1)`` order, P = k (k - 1) / 2.
    """

    z: torch.Tensor
    inverse: torch.Tensor
    classes: torch.Tensor
    counts: torch.Tensor
    members: torch.Tensor
    mask: torch.Tensor
    pair_a: torch.Tensor
    pair_b: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return self.pair_a.numel()

    @cached_property
    def sample_distances(self) -> torch.Tensor:
        """(B, B) Euclidean distances between samples, with gradient."""
        return euclidean_distances(self.z)

    def pair_cost_matrices(self) -> torch.Tensor:
        """(P, N, N) ground costs between the samples of each pair's classes, with gradient,
        0 on padding (rows beyond ``counts[pair_a]``, columns beyond ``counts[pair_b]``)."""
        ma, mb = self.members[self.pair_a], self.members[self.pair_b]
        valid = self.mask[self.pair_a][:, :, None] & self.mask[self.pair_b][:, None, :]
        cost = self.sample_distances[ma[:, :, None], mb[:, None, :]]
        return torch.where(valid, cost, torch.zeros((), dtype=cost.dtype, device=cost.device))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (half, bfloat16, float32) runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def group_by_class(z: torch.Tensor, y: torch.Tensor) -> ClassBatch:
    """Group the rows of ``z`` (B, d) by the integer labels ``y`` (B,)."""
    if z.dim() != 2:
        raise ValueError(f"features must be (batch, dim), got shape {tuple(z.shape)}")
    if y.dim() != 1 or y.shape[0] != z.shape[0]:
        raise ValueError(
            f"labels must be ({z.shape[0]},) to match the features, got shape {tuple(y.shape)}"
        )
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {y.dtype}")
    if not z.dtype.is_floating_point:
        raise ValueError(f"features must be floating point, got {z.dtype}")
    z = z.to(compute_dtype(z.dtype))
    y = y.to(device=z.device, dtype=torch.long)
    classes, inverse, counts = torch.unique(y, sorted=True, return_inverse=True, return_counts=True)
    k = classes.numel()
    n_max = int(counts.max()) if k else 0
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(y.numel(), device=z.device) - starts[inverse[order]]
    members = torch.zeros(k, n_max, dtype=torch.long, device=z.device)
    members[inverse[order], rank] = order
    mask = torch.arange(n_max, device=z.device) < counts[:, None]
    pair_a, pair_b = torch.triu_indices(k, k, 1, device=z.device)
    return ClassBatch(z, inverse, classes, counts, members, mask, pair_a, pair_b)
