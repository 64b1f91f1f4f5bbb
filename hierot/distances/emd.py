"""``emd``: exact optimal transport cost (W1) with POT's network-simplex solver."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from hierot.distances.batch import ClassBatch, PairMemory
from hierot.distances.network_simplex import (
    INFEASIBLE,
    MAX_ITER_REACHED,
    OPTIMAL,
    UNBOUNDED,
    exact_plan,
)
from hierot.distances.registry import register_distance
from hierot.distances.weights import check_weights, pair_weights
from hierot.errors import is_integer

# Below this many cost entries a thread pool costs more than it saves.
_POOL_MIN_ENTRIES = 200_000

# What the network simplex did instead of finishing, by POT's result code.
_STOPS = {
    MAX_ITER_REACHED: "reached max_iter={max_iter}",
    INFEASIBLE: "found the problem infeasible",
    UNBOUNDED: "found the problem unbounded",
}


class UnfinishedPlans:
    """The class pairs whose network simplex did not reach the optimal plan (POT's result
    code not ``OPTIMAL``: ``max_iter`` reached, for one) since ``reset``. ``ot.emd`` warns on
    each such problem; here the first of a run gives one ``RuntimeWarning`` naming its classes
    and the limit, and ``count`` counts them all. A training run resets it when fitting
    starts and logs ``summary()`` when fitting and testing end (``hierot.logs.EpochLog``).
    The codes are host values the solver returns: counting costs no wait for a GPU."""

    count: int  # pairs since ``reset``
    max_iter: int | None  # the limit of the last of them

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Start a run: count from 0, and warn again on the next unfinished plan."""
        with self._lock:
            self.count, self.max_iter = 0, None

    def add(self, batch: ClassBatch, codes: np.ndarray, max_iter: int) -> None:
        """Record the pairs of ``batch`` whose ``codes`` (P,) are not ``OPTIMAL``."""
        stopped = np.flatnonzero(codes != OPTIMAL)
        if stopped.size == 0:
            return
        with self._lock:
            first = self.count == 0
            self.count += int(stopped.size)
            self.max_iter = max_iter
        if first:
            p = int(stopped[0])
            a, b = batch.classes[batch.pair_a[p]], batch.classes[batch.pair_b[p]]
            how = _STOPS.get(int(codes[p]), f"returned code {int(codes[p])}")
            warnings.warn(
                f"emd: the network simplex {how.format(max_iter=max_iter)} before the optimal "
                f"plan of classes {int(a)} and {int(b)}, whose distance uses that plan (warned "
                f"once per run; the run's log counts such pairs); raise emd's max_iter",
                RuntimeWarning,
                stacklevel=3,
            )

    def summary(self, since: int = 0, during: str = "") -> str | None:
        """One line with the count of pairs after the first ``since`` (``during`` says
        when), or None when there were none."""
        count = self.count - since
        if count <= 0:
            return None
        when = f" during {during}" if during else ""
        return (
            f"emd: {count} class pairs ended without the optimal plan{when} (the network "
            f"simplex's limit: max_iter={self.max_iter}); raise emd's max_iter"
        )


UNFINISHED_PLANS = UnfinishedPlans()


def _solve(
    cost: np.ndarray,
    n_a: np.ndarray,
    n_b: np.ndarray,
    max_iter: int,
    w_a: np.ndarray | None = None,
    w_b: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    plans = np.zeros_like(cost)
    codes = np.full(cost.shape[0], OPTIMAL, dtype=np.int64)
    for p in range(cost.shape[0]):
        na, nb = int(n_a[p]), int(n_b[p])
        if w_a is None or w_b is None:
            a = np.full(na, 1.0 / na)
            b = np.full(nb, 1.0 / nb)
        else:
            # renormalized in float64: the network simplex wants equal total masses
            a = w_a[p, :na] / w_a[p, :na].sum()
            b = w_b[p, :nb] / w_b[p, :nb].sum()
        m = np.ascontiguousarray(cost[p, :na, :nb])
        plans[p, :na, :nb], codes[p] = exact_plan(a, b, m, max_iter)
    return plans, codes


def emd_plans(
    cost: torch.Tensor,
    n_a: torch.Tensor | np.ndarray,
    n_b: torch.Tensor | np.ndarray,
    max_iter: int = 100_000,
    num_threads: int | None = None,
    weights_a: torch.Tensor | None = None,
    weights_b: torch.Tensor | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Exact OT plans of a (P, N, M) stack of padded problems over the first ``n_a[p]`` rows
    and ``n_b[p]`` columns, with uniform weights or ``weights_a`` (P, N) and ``weights_b``
    (P, M); returns ``(plans, codes)``: (P, N, M) plans on ``cost``'s device and POT's
    (P,) host result codes (``network_simplex.OPTIMAL`` where a plan is optimal).

    ``n_a``, ``n_b`` may be host arrays (``ClassBatch.pair_sizes``). Only the costs go to
    host memory (POT's network simplex runs on the CPU: a GPU waits for them); the solver
    runs in C++ without the GIL, so chunks of pairs are solved on ``num_threads`` threads
    (default: torch's intra-op thread count).
    """
    host = cost.detach().cpu().to(torch.float64).numpy()  # the host waits here, once
    na = n_a.cpu().numpy() if isinstance(n_a, torch.Tensor) else np.asarray(n_a)
    nb = n_b.cpu().numpy() if isinstance(n_b, torch.Tensor) else np.asarray(n_b)
    wa = wb = None
    if weights_a is not None and weights_b is not None:
        wa = weights_a.detach().to("cpu", torch.float64).numpy()
        wb = weights_b.detach().to("cpu", torch.float64).numpy()

    def solve(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _solve(
            host[c], na[c], nb[c], max_iter, None if wa is None else wa[c],
            None if wb is None else wb[c],
        )  # fmt: skip

    threads = num_threads or torch.get_num_threads() or os.cpu_count() or 1
    if threads > 1 and host.size >= _POOL_MIN_ENTRIES:
        chunks = np.array_split(np.arange(host.shape[0]), threads)
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(solve, chunks))
        plans = np.concatenate([plan for plan, _ in parts])
        codes = np.concatenate([code for _, code in parts])
    else:
        plans, codes = solve(np.arange(host.shape[0]))
    return torch.from_numpy(plans).to(device=cost.device, dtype=cost.dtype), codes


def emd_memory(dim: int, itemsize: int, options: Mapping[str, object]) -> PairMemory:
    # per cost entry: the cost and its product with the plan, the gather indices, the host
    # float64 copy and plan; per sample: the gathered features when no B x B matrix fits
    return PairMemory(entry=4 * itemsize + 48, sample=dim * itemsize, pair=64)


def check_emd(max_iter: object, weights: object) -> None:
    if not is_integer(max_iter) or max_iter < 1:
        raise ValueError(f"emd: max_iter must be an integer >= 1, got {max_iter!r}")
    check_weights("emd", weights)


@register_distance("emd", check=check_emd, memory=emd_memory)
def emd_distance(
    batch: ClassBatch, max_iter: int = 100_000, weights: str = "uniform"
) -> torch.Tensor:
    """Exact W1 between the classes' distributions over their samples (``weights``: see
    ``hierot.distances.weights``), ``ot.emd2`` per pair; (P,). Envelope gradient: the plan
    is a constant, ``sum(P * M)`` carries the gradient. The host waits for the devices
    once more than the other distances: for the cost matrices, which POT's solver reads on
    the CPU. A pair whose solver stops at ``max_iter`` keeps the plan it stopped at, which
    need not be optimal or even carry the whole mass: the first such pair of a run warns,
    and ``UNFINISHED_PLANS`` counts them (the run's log gives the count)."""
    cost = batch.pair_cost_matrices()
    w_a = w_b = None
    if weights != "uniform":
        w_a, w_b = pair_weights(batch, weights, cost.shape[1])
    n_a, n_b = batch.pair_sizes()
    plans, codes = emd_plans(cost, n_a, n_b, max_iter=max_iter, weights_a=w_a, weights_b=w_b)
    UNFINISHED_PLANS.add(batch, codes, max_iter)
    return (plans * cost).sum(dim=(1, 2))
