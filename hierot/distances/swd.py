"""``swd``: sliced Wasserstein distance, as POT's ``sliced_wasserstein_distance`` defines it."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from hierot.distances.batch import ClassBatch, PairMemory
from hierot.distances.coupling import monotone_coupling
from hierot.distances.registry import register_distance


def random_projections(
    dim: int,
    n_projections: int,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(dim, n_projections) unit directions, Gaussian then normalized; ``seed=None`` draws
    from torch's global generator (so ``torch.manual_seed`` makes training reproducible)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    theta = torch.randn(dim, n_projections, generator=gen, dtype=torch.float64)
    theta = theta / torch.linalg.vector_norm(theta, dim=0, keepdim=True)
    return theta.to(dtype=dtype, device=device)


def swd_memory(dim: int, itemsize: int, options: Mapping[str, object]) -> PairMemory:
    projections = options.get("projections")
    directions = projections.shape[1] if projections is not None else options["n_projections"]
    # per coupling entry: the two gathered projections, their gap and its power
    return PairMemory(coupling=4 * int(directions) * itemsize + 160, pair=64)


def _sorted_projections(
    batch: ClassBatch, n_projections: int, projections: torch.Tensor | None, seed: int | None
) -> torch.Tensor:
    """(k, N, L) projections of each class's samples, sorted per class, padding (inf) last."""
    z = batch.z
    if projections is None:
        if n_projections < 1:
            raise ValueError(f"swd: n_projections must be >= 1, got {n_projections}")
        projections = random_projections(z.shape[1], n_projections, seed, z.dtype, z.device)
    else:
        projections = torch.as_tensor(projections).to(dtype=z.dtype, device=z.device)
        if projections.dim() != 2 or projections.shape[0] != z.shape[1]:
            raise ValueError(
                f"swd: projections must be (dim={z.shape[1]}, L), got {tuple(projections.shape)}"
            )
    proj = z @ projections  # (B, L)
    inf = torch.tensor(float("inf"), dtype=z.dtype, device=z.device)
    per_class = torch.where(batch.mask[:, :, None], proj[batch.members], inf)
    return per_class.sort(dim=1).values


@register_distance("swd", memory=swd_memory)
def swd_distance(
    batch: ClassBatch,
    n_projections: int = 50,
    projections: torch.Tensor | None = None,
    p: float = 2.0,
    seed: int | None = None,
) -> torch.Tensor:
    """``(mean_l W_p^p(<Z_a, theta_l>, <Z_b, theta_l>))^(1/p)`` for every pair; (P,).

    ``projections`` (d, L) overrides ``n_projections``/``seed``. The 1-D OT of each direction
    is the monotone coupling of the projections sorted per class, the same coupling for every
    direction (it depends only on the class counts); sorting routes the envelope gradient.
    """
    z = batch.z
    if p < 1:
        raise ValueError(f"swd: p must be >= 1, got {p}")
    # Every chunk of a batch must use the same directions: drawn and sorted once per batch.
    if "swd" not in batch._cache:
        batch._cache["swd"] = _sorted_projections(batch, n_projections, projections, seed)
    ordered = batch._cache["swd"]
    pa, pb = batch.pair_a, batch.pair_b
    pair, r, s, mass = monotone_coupling(
        batch.counts[pa], batch.counts[pb], z.dtype, batch.pair_sizes()
    )
    gap = (ordered[pa[pair], r] - ordered[pb[pair], s]).abs()  # (M, L)
    cost = mass[:, None] * gap**p
    wpp = torch.zeros(batch.num_pairs, cost.shape[1], dtype=z.dtype, device=z.device)
    mean = wpp.index_add(0, pair, cost).mean(dim=1)
    # x**(1/p) has an infinite slope at 0 (identical sets): give it a zero gradient there.
    positive = mean > 0
    safe = torch.where(positive, mean, torch.ones_like(mean))
    return torch.where(positive, safe ** (1.0 / p), torch.zeros_like(mean))
