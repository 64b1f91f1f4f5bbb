"""``sinkhorn``: transport cost of the entropic OT plan, log-domain, all pairs at once."""

from __future__ import annotations

import math

import torch

from hierot.distances.batch import ClassBatch
from hierot.distances.registry import register_distance


def sinkhorn_plans(
    cost: torch.Tensor,
    valid_a: torch.Tensor,
    valid_b: torch.Tensor,
    reg: float,
    max_iter: int = 1000,
    tol: float = 1e-6,
    check_every: int = 10,
) -> torch.Tensor:
    """Log-domain Sinkhorn on a stack of padded problems, uniform weights on the real entries.

    Args:
        cost: (P, N, M) cost matrices; padded entries are ignored.
        valid_a: (P, N), valid_b: (P, M) masks of the real samples (at least one per row).
        reg: absolute entropic regularization.
        max_iter: iteration cap; tol: stop once every pair's column marginal is within ``tol``
            in L1 (checked every ``check_every`` iterations).
    Returns:
        (P, N, M) plans, exactly 0 on padding.
    """
    if not reg > 0:
        raise ValueError(f"sinkhorn: reg must be > 0, got {reg}")
    neg_inf = torch.tensor(-math.inf, dtype=cost.dtype, device=cost.device)
    n_a = valid_a.sum(1, keepdim=True).to(cost.dtype)
    n_b = valid_b.sum(1, keepdim=True).to(cost.dtype)
    log_a = torch.where(valid_a, -torch.log(n_a), neg_inf)
    log_b = torch.where(valid_b, -torch.log(n_b), neg_inf)
    kernel = -cost / reg
    # Potentials start at -inf on padding, so padded rows/columns never enter a
    # log-sum-exp over real entries and no -inf - -inf NaN can appear.
    u = torch.where(valid_a, torch.zeros_like(log_a), neg_inf)
    v = torch.where(valid_b, torch.zeros_like(log_b), neg_inf)
    b = valid_b.to(cost.dtype) / n_b
    for it in range(1, max_iter + 1):
        v = log_b - torch.logsumexp(kernel + u[:, :, None], dim=1)
        u = log_a - torch.logsumexp(kernel + v[:, None, :], dim=2)
        if it % check_every == 0 or it == max_iter:
            col = torch.exp(kernel + u[:, :, None] + v[:, None, :]).sum(1)
            if float((col - b).abs().sum(1).max()) < tol:
                break
    return torch.exp(kernel + u[:, :, None] + v[:, None, :])


@register_distance("sinkhorn")
def sinkhorn_distance(
    batch: ClassBatch,
    reg: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> torch.Tensor:
    """``<P, M>`` with P the entropic plan for absolute ``reg`` (entropy term not added); (P,).
    Envelope gradient: P is computed without gradient, M with it."""
    cost = batch.pair_cost_matrices()
    with torch.no_grad():
        plans = sinkhorn_plans(
            cost.detach(),
            batch.mask[batch.pair_a],
            batch.mask[batch.pair_b],
            reg=reg,
            max_iter=max_iter,
            tol=tol,
        )
    return (plans * cost).sum(dim=(1, 2))
