"""Slow, obviously correct per-pair references for the batched kernels."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import ot
import torch


def north_west_corner(a: list, b: list, spent: float = 0) -> np.ndarray:
    """North-west-corner plan of the masses ``a`` and ``b`` (equal totals; Fractions are
    exact), a loop; a side's sample is used up once at most ``spent`` of it is left."""
    a, b = list(a), list(b)
    plan = np.zeros((len(a), len(b)))
    i = j = 0
    while i < len(a) and j < len(b):
        m = min(a[i], b[j])
        plan[i, j] += float(m)
        a[i] -= m
        b[j] -= m
        if a[i] <= spent:
            i += 1
        if b[j] <= spent:
            j += 1
    return plan


def greedy_plan(n_a: int, n_b: int) -> np.ndarray:
    """North-west-corner plan of uniform weights, in exact fractions."""
    return north_west_corner([Fraction(1, n_a)] * n_a, [Fraction(1, n_b)] * n_b)


def uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def euclidean(za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    """Ground cost by explicit differences (no matmul trick), with gradient."""
    return torch.linalg.vector_norm(za[:, None, :] - zb[None, :, :], dim=2)


def plan_for(method: str, za: np.ndarray, zb: np.ndarray, reg: float = 1.0) -> np.ndarray:
    m = ot.dist(za, zb, metric="euclidean")
    if method == "emd":
        return ot.emd(uniform(len(za)), uniform(len(zb)), m)
    if method == "sinkhorn":
        return ot.sinkhorn(
            uniform(len(za)), uniform(len(zb)), m, reg, numItermax=100_000, stopThr=1e-13
        )
    if method == "fastft":
        return greedy_plan(len(za), len(zb))
    raise ValueError(method)


def reference_distance(
    method: str, za: torch.Tensor, zb: torch.Tensor, projections=None, reg: float = 1.0
) -> float:
    """One POT call (or loop) per pair, the way the authors' code computes it."""
    a, b = za.double().numpy(), zb.double().numpy()
    if method == "l2":
        return float(np.linalg.norm(a.mean(0) - b.mean(0)))
    if method == "l1":  # HierarchyCPCC: F.pdist(class means, p=1.0)
        return float(np.abs(a.mean(0) - b.mean(0)).sum())
    if method == "hyperbolic":  # HypStructure's poincare_mean of the two classes
        from helpers.hyp_references import (
            BALL_EPS,
            poincare_expmap0,
            poincare_mean,
            poincare_pairwise_distance,
        )

        # at float32's radius, which hierot keeps in every dtype
        eps = BALL_EPS[torch.float32]
        centres = [poincare_mean(poincare_expmap0(x.double(), eps), dim=0) for x in (za, zb)]
        return float(poincare_pairwise_distance(torch.stack(centres))[0, 1])
    if method == "emd":
        return float(ot.emd2(uniform(len(a)), uniform(len(b)), ot.dist(a, b, metric="euclidean")))
    if method == "swd":
        return float(ot.sliced_wasserstein_distance(a, b, projections=projections, p=2))
    plan = plan_for(method, a, b, reg)
    return float((plan * ot.dist(a, b, metric="euclidean")).sum())


def authors_weights(z: torch.Tensor, far: bool) -> torch.Tensor:
    """uiuctml/OTCPCC loss.py compute_weights (far) / compute_inverse_weights (near) for
    one class's samples ``z``."""
    centroid = z.mean(dim=0)
    dists = torch.norm(z - centroid, dim=1)
    return torch.softmax(dists if far else -dists, dim=0)


def greedy_plan_weighted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """North-west-corner plan of weights ``a`` and ``b`` (each summing to 1), in float64;
    what rounding leaves (<= 1e-15) is no sample's mass."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return north_west_corner(list(a / a.sum()), list(b / b.sum()), spent=1e-15)


def authors_fft_plan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The plan of uiuctml/OTCPCC emd_methods.fft (its coupling, filled from both ends)."""
    a, b = a.astype(np.float64).copy(), b.astype(np.float64).copy()
    n, m = len(a), len(b)
    plan = np.zeros((n, m))
    half_n = n // 2
    i = j = 0
    while i < half_n and j < m:
        v = min(a[i], b[j])
        plan[i, j] += v
        plan[n - i - 1, m - j - 1] += v
        a[i] -= v
        b[j] -= v
        if a[i] == 0:
            i += 1
        if b[j] == 0:
            j += 1
    if n % 2 == 1:
        i = half_n
        while j < m:
            v = min(a[i], b[j])
            plan[i, j] += v
            a[i] -= v
            b[j] -= v
            if a[i] == 0:
                break
            if b[j] == 0:
                j += 1
    return plan
