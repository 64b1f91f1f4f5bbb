"""The north-west-corner (monotone) coupling of two uniform distributions, for many pairs."""

from __future__ import annotations

import numpy as np
import torch


def _ranges(counts: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For counts (P,) summing to ``total``: ``(owner, i)`` listing ``i = 0..counts[p]-1``
    for every ``p``."""
    owner = torch.repeat_interleave(
        torch.arange(counts.numel(), device=counts.device), counts, output_size=total
    )
    first = torch.cumsum(counts, 0) - counts
    return owner, torch.arange(total, device=counts.device) - first[owner]


def _compact(keep: torch.Tensor, total: int, *values: torch.Tensor) -> list[torch.Tensor]:
    """``[v[keep] for v in values]`` for a mask known to hold ``total`` True entries, by a
    scatter (a boolean index waits for the device to count them)."""
    slot = torch.where(keep, torch.cumsum(keep, 0) - 1, total)  # the rest to a spare slot
    return [v.new_empty(total + 1).scatter_(0, slot, v)[:total] for v in values]


def monotone_coupling(
    n_a: torch.Tensor,
    n_b: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    sizes: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy coupling of uniform weights ``1/n_a`` and ``1/n_b`` for every pair at once.

    Sample ``r`` of side a covers ``[r/n_a, (r+1)/n_a)`` and sample ``s`` of side b covers
    ``[s/n_b, (s+1)/n_b)``; the plan entry ``P[r, s]`` is the length of their overlap. The
    union of both sides' breakpoints cuts ``[0, 1)`` into ``n_a + n_b - gcd(n_a, n_b)``
    segments, each one ``(r, s)`` entry. Scaled by ``n_a * n_b`` the breakpoints are the
    integers ``r * n_b`` and ``s * n_a``; a segment starting at ``t`` has ``r = t // n_b``,
    ``s = t // n_a`` and ends at the nearer next breakpoint of either side, so no sort or
    merge is needed: O(n_a + n_b) work per pair, all pairs in a few tensor ops.

    Args:
        n_a, n_b: (P,) sample counts (>= 1) of the two sides of each pair.
        sizes: the same counts on the host (numpy), from which the output's length is known
            ahead; without them it is read from the device (a GPU then waits, twice).
    Returns:
        ``(pair, r, s, mass)``, each (M,) with M = sum(n_a + n_b - gcd(n_a, n_b)): the pair
        index, the row and column of the plan entry, and its mass (in ``dtype``). Entries
        are in no particular order.
    """
    n_a = n_a.long()
    n_b = n_b.long()
    if sizes is None:
        sizes = (n_a.cpu().numpy(), n_b.cpu().numpy())
    host_a, host_b = (np.asarray(n, dtype=np.int64) for n in sizes)
    # Segment starts: every breakpoint of side a, plus those of side b that a lacks (all
    # but the gcd(n_a, n_b) that fall on multiples of both).
    pair_a, r = _ranges(n_a, int(host_a.sum()))
    pair_b, s = _ranges(n_b, int(host_b.sum()))
    start_b = s * n_a[pair_b]
    only_b = start_b % n_b[pair_b] != 0
    pair_b, start_b = _compact(
        only_b, int((host_b - np.gcd(host_a, host_b)).sum()), pair_b, start_b
    )
    pair = torch.cat([pair_a, pair_b])
    start = torch.cat([r * n_b[pair_a], start_b])
    na, nb = n_a[pair], n_b[pair]
    r = torch.div(start, nb, rounding_mode="floor")
    s = torch.div(start, na, rounding_mode="floor")
    end = torch.minimum((r + 1) * nb, (s + 1) * na)
    mass = ((end - start).to(torch.float64) / (na * nb).to(torch.float64)).to(dtype)
    return pair, r, s, mass


def weighted_monotone_coupling(
    weights_a: torch.Tensor, weights_b: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The north-west-corner coupling of any weights, for every pair at once.

    Sample ``r`` of side a covers ``(A[r-1], A[r]]`` with ``A`` the cumulative weights (and
    so for side b); ``P[r, s]`` is the length of the overlap. The union of both sides'
    cumulative weights cuts ``[0, 1]`` into segments; each segment's midpoint is looked up
    on both sides (``searchsorted``) to find its ``(r, s)``. With uniform weights this is
    ``monotone_coupling`` up to rounding (which computes that case exactly).

    Args:
        weights_a: (P, N), weights_b: (P, M) non-negative weights, each row summing to 1
            over its real samples and 0 on padding after them.
    Returns:
        ``(pair, r, s, mass)`` as ``monotone_coupling``: (E,) each, E <= P (N + M).
    """
    p = weights_a.shape[0]
    # float64 and renormalized, so both sides end at exactly 1 and rounding makes no sliver
    # segments that would map past a side's last sample.
    cum_a = weights_a.double().cumsum(1)
    cum_b = weights_b.double().cumsum(1)
    cum_a = cum_a / cum_a[:, -1:]
    cum_b = cum_b / cum_b[:, -1:]
    ends = torch.cat([cum_a, cum_b], 1).sort(1).values
    starts = torch.cat([ends.new_zeros(p, 1), ends[:, :-1]], 1)
    mass = ends - starts
    keep = mass > 0
    mid = (starts + ends) / 2
    r = torch.searchsorted(cum_a, mid).clamp_max(cum_a.shape[1] - 1)
    s = torch.searchsorted(cum_b, mid).clamp_max(cum_b.shape[1] - 1)
    pair = torch.arange(p, device=weights_a.device)[:, None].expand_as(mid)
    return pair[keep], r[keep], s[keep], mass[keep].to(dtype)
