"""A batch grouped by class: padded member tables, the class pairs to compare, and their
split into chunks that fit a memory budget."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from hierot.distances.pairwise import (
    centred_with_norms,
    euclidean_distances,
    pair_distances,
    use_sparse,
)
from hierot.errors import is_number

DEFAULT_MEMORY_MB = 256.0


@dataclass(frozen=True)
class PairMemory:
    """Bytes a distance holds at once per class pair, as a function of the pair's sizes.

    ``bytes = entry * N^2 + sample * 2 N + coupling * (n_a + n_b) + pair``, with N the padded
    class size of the chunk; each coefficient is in bytes for features of the given ``dim``
    and dtype ``itemsize``. Used to cut the pairs into chunks, so an estimate is enough.
    """

    entry: float = 0.0
    sample: float = 0.0
    coupling: float = 0.0
    pair: float = 0.0


@dataclass(frozen=True)
class ClassBatch:
    """Features grouped by class, the shared input of every class-distance function.

    Shapes:
        z: (B, d) features in the compute dtype (float32 or float64).
        inverse: (B,) position of each sample's class in ``classes``.
        classes, counts: (k,) sorted labels present and their sample counts.
        members: (k, N) batch indices of each class in batch order, 0 where ``mask`` is False.
        mask: (k, N) real entries of ``members``.
        pair_a, pair_b: (P,) class positions of the pairs a < b this batch holds, in
            ``torch.triu_indices(k, k, 1)`` order (all of them, or one chunk's).
        memory_bytes: the budget the distance functions stay within.
        sizes: (k,) ``counts`` on the host (numpy); span: the pairs held, ``[lo, hi)``.
    """

    z: torch.Tensor
    inverse: torch.Tensor
    classes: torch.Tensor
    counts: torch.Tensor
    members: torch.Tensor
    mask: torch.Tensor
    pair_a: torch.Tensor
    pair_b: torch.Tensor
    memory_bytes: int = int(DEFAULT_MEMORY_MB * 2**20)
    # The host's copy of ``counts`` (the one value read of a batch: ``group_by_class``), and
    # the range ``[lo, hi)`` of the pairs this batch holds, in ``triu_indices`` order: every
    # size that the data decides (padding, coupling lengths, chunk cuts) is read from them,
    # so the distances queue their kernels without waiting for the device.
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    span: tuple[int, int] = (0, 0)
    # Shared by a batch and its chunks (dataclasses.replace passes the same dict on): the
    # B x B sample distances are computed once for all chunks.
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_pairs(self) -> int:
        return self.pair_a.numel()

    @property
    def num_classes(self) -> int:
        return self.classes.numel()

    @property
    def host_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(pair_a, pair_b)`` on the host (numpy), computed there from ``span``."""
        if self._cache.get("host_span") != self.span:
            self._cache["host_pairs"] = host_triu_pairs(self.num_classes, *self.span)
            self._cache["host_span"] = self.span
        return self._cache["host_pairs"]

    @property
    def pad(self) -> int:
        """N: the largest class among this batch's pairs (the padded width of their
        tables), read on the host."""
        if self.num_pairs == 0:
            return 0
        if self.span == (0, self.total_pairs):
            return int(self.sizes.max())
        a, b = self.host_pairs
        return int(max(self.sizes[a].max(), self.sizes[b].max()))

    def span_rows(self) -> tuple[int, int]:
        """The first and last class position ``a`` of this batch's pairs, on the host."""
        a = self.host_pairs[0]
        return int(a[0]), int(a[-1])

    def pair_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """(P,) sample counts of each pair's two classes, on the host."""
        a, b = self.host_pairs
        return self.sizes[a], self.sizes[b]

    @property
    def total_pairs(self) -> int:
        """k (k - 1) / 2: the pairs of the whole batch, whatever this chunk holds."""
        return self.num_classes * (self.num_classes - 1) // 2

    @property
    def dense_bytes(self) -> int:
        """Bytes of the (B, B) sample distances: the matrix, the copy autograd keeps and its
        gradient."""
        return 3 * self.z.shape[0] ** 2 * self.z.element_size()

    @property
    def dense_fits(self) -> bool:
        """Whether the (B, B) sample distances fit the budget."""
        return self.dense_bytes <= self.memory_bytes

    @property
    def sample_distances(self) -> torch.Tensor:
        """(B, B) Euclidean distances between samples, with gradient (computed once)."""
        if "dense" not in self._cache:
            self._cache["dense"] = euclidean_distances(self.z)
        return self._cache["dense"]

    @property
    def class_means(self) -> torch.Tensor:
        """(k, d) mean feature of each class, with gradient (computed once)."""
        if "means" not in self._cache:
            z = self.z
            sums = torch.zeros(self.num_classes, z.shape[1], dtype=z.dtype, device=z.device)
            sums = sums.index_add(0, self.inverse, z)
            self._cache["means"] = sums / self.counts[:, None].to(z.dtype)
        return self._cache["means"]

    def pair_cost_matrices(self) -> torch.Tensor:
        """(P, N, N) ground costs between the samples of each pair's classes, with gradient,
        0 on padding (rows beyond ``counts[pair_a]``, columns beyond ``counts[pair_b]``).
        N is the largest class of this batch's pairs."""
        n = self.pad
        ma, mb = self.members[self.pair_a, :n], self.members[self.pair_b, :n]
        valid = self.mask[self.pair_a, :n, None] & self.mask[self.pair_b, None, :n]
        if self.dense_fits:
            cost = self.sample_distances[ma[:, :, None], mb[:, None, :]]
        else:
            # No B x B matrix (a whole test split): only this chunk's blocks.
            cost = torch.cdist(self.z[ma], self.z[mb])
        return torch.where(valid, cost, torch.zeros((), dtype=cost.dtype, device=cost.device))

    def pair_sample_distances(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """``||z[i] - z[j]||`` for chosen sample pairs of this batch's class pairs, with
        gradient. The route (one B x B matrix or a sparse product) is chosen once for the
        whole batch, from the number of sample pairs all its class pairs need, so every
        chunk computes its values the same way."""
        size = self.z.shape[0]
        # sum over class pairs of (n_a + n_b - 1): every sample meets k - 1 other classes
        needed = (self.num_classes - 1) * size - self.total_pairs
        if self.dense_fits and not use_sparse(size, needed, self.z.device):
            return self.sample_distances[i, j]
        # Centred once for all chunks: per chunk it cost O(B d), ~2x the whole work at
        # 10 000 classes x 10 samples.
        if "centred" not in self._cache:
            self._cache["centred"] = centred_with_norms(self.z)
        return pair_distances(self.z, i, j, dense=False, centred=self._cache["centred"])

    def chunks(self, memory: PairMemory | None) -> Iterator[ClassBatch]:
        """This batch cut into consecutive runs of pairs, each within ``memory_bytes`` by
        the ``memory`` model (one chunk when it is None)."""
        k = self.num_classes
        if memory is None or k < 2:
            yield all_pairs(self)
            return
        # what the pairs may use beside the B x B matrix, if there is one
        budget = self.memory_bytes - (self.dense_bytes if self.dense_fits else 0)
        budget = max(budget, self.memory_bytes // 4)
        # A training batch fits at once by far: skip the per-row sums.
        n = float(self.sizes.max())
        per_pair = memory.entry * n * n + (memory.sample + memory.coupling) * 2 * n + memory.pair
        if self.total_pairs * per_pair <= budget:
            yield all_pairs(self)
            return
        # Per row a (the pairs (a, b), b > a): how many pairs, and a bound on their bytes;
        # on the host (numpy), where the cuts are used.
        counts = self.sizes.astype(np.float64)
        rows = np.append(np.arange(k - 1, 0, -1, dtype=np.float64), 0.0)
        suffix_max = np.maximum.accumulate(counts[::-1])[::-1]
        pad = np.maximum(counts, np.append(suffix_max[1:], 0.0))
        later_sum = np.cumsum(counts[::-1])[::-1] - counts
        row_bytes = rows * (
            memory.entry * pad**2 + memory.sample * 2 * pad + memory.pair
        ) + memory.coupling * (rows * counts + later_sum)
        total = float(row_bytes.sum())
        if total <= budget:
            yield all_pairs(self)
            return
        # Cut the cumulative bytes at multiples of the budget, spreading each row's bytes
        # evenly over its pairs.
        row_start = np.cumsum(rows) - rows
        cum_bytes = np.cumsum(row_bytes)
        marks = np.arange(1, int(total // budget) + 1, dtype=np.float64) * budget
        row = np.minimum(np.searchsorted(cum_bytes, marks, side="right"), k - 1)
        before = np.where(row > 0, cum_bytes[np.maximum(row - 1, 0)], 0.0)
        inside = np.floor((marks - before) / np.maximum(row_bytes[row], 1e-30) * rows[row])
        cuts = (row_start[row] + np.maximum(inside, 0)).astype(np.int64)
        bounds = np.unique(np.concatenate([cuts, [0, self.total_pairs]]))
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            if hi <= lo:
                continue
            a, b = triu_pairs(k, lo, hi, self.z.device)
            yield dataclasses.replace(self, pair_a=a, pair_b=b, span=(lo, hi))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (half, bfloat16, float32) runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def group_by_class(
    z: torch.Tensor,
    y: torch.Tensor,
    memory_mb: float = DEFAULT_MEMORY_MB,
    labels_below: int | None = None,
) -> ClassBatch:
    """Group the rows of ``z`` (B, d) by the integer labels ``y`` (B,); the distance
    functions then keep to ``memory_mb`` megabytes (see ``ClassBatch.chunks``). With
    ``labels_below`` only the samples labelled below it are grouped (the classes; labels
    at the tree's inner nodes, ``hierot.hierarchy.labels``, are left out), in the same one
    read of the batch."""
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
    check_memory(memory_mb)
    z = z.to(compute_dtype(z.dtype))
    y = y.to(device=z.device, dtype=torch.long)
    device, size = z.device, y.numel()
    # Sorted (stably, so each class keeps batch order), the samples of a class are a run;
    # run g's length is counts_all[g] (0 beyond the k runs), found without a sync.
    sorted_y, order = torch.sort(y, stable=True)
    starts_run = torch.ones(size, dtype=torch.bool, device=device)
    starts_run[1:] = sorted_y[1:] != sorted_y[:-1]
    group = torch.cumsum(starts_run, 0) - 1  # (B,) class position of each sorted sample
    ids = torch.arange(size, device=device)
    counts_all = torch.searchsorted(group, ids, right=True) - torch.searchsorted(group, ids)
    # The one value read of a batch: which classes it holds and how many samples each, the
    # sizes of everything after (a GPU waits here once per batch).
    if labels_below is None:
        sizes = counts_all.cpu().numpy()
        k = int(np.count_nonzero(sizes))
    else:
        z, sorted_y, order, group, sizes, k = _kept_runs(
            z, sorted_y, order, group, counts_all, labels_below
        )
        ids = ids[: sorted_y.numel()]
    sizes, counts = sizes[:k], counts_all[:k]
    n_max = int(sizes.max()) if k else 0
    starts = torch.cumsum(counts, 0) - counts
    classes = sorted_y[starts]
    inverse = torch.empty_like(group)
    inverse[order] = group
    members = torch.zeros(k, n_max, dtype=torch.long, device=device)
    members[group, ids - starts[group]] = order
    mask = torch.arange(n_max, device=device) < counts[:, None]
    # The full pair list is built lazily per chunk: k = 10 000 classes have 5e7 pairs.
    empty = torch.zeros(0, dtype=torch.long, device=device)
    memory_bytes = int(memory_mb * 2**20)
    return ClassBatch(
        z, inverse, classes, counts, members, mask, empty, empty, memory_bytes, sizes=sizes
    )


def _kept_runs(
    z: torch.Tensor,
    sorted_y: torch.Tensor,
    order: torch.Tensor,
    group: torch.Tensor,
    counts_all: torch.Tensor,
    below: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray, int]:
    """``group_by_class``'s sorted batch cut to its samples labelled below ``below``: the
    sorted labels put them first, and their number is read with the class sizes. Returns
    the kept features in sorted order (so ``order`` becomes the identity), their labels,
    ``order``, ``group``, the sizes read and the number of kept classes."""
    kept = (sorted_y < below).sum()
    read = torch.cat([counts_all, kept[None]]).cpu().numpy()
    sizes, n = read[:-1], int(read[-1])
    k = int(np.searchsorted(np.cumsum(sizes), n, side="right"))  # the runs within the n
    order = order[:n]
    ids = torch.arange(n, device=z.device)
    return z[order], sorted_y[:n], ids, group[:n], sizes, min(k, int(np.count_nonzero(sizes)))


def host_triu_pairs(k: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """``triu_pairs`` on the host, as numpy arrays."""
    starts = np.cumsum(np.arange(k - 1, 0, -1)) - np.arange(k - 1, 0, -1)
    p = np.arange(lo, hi)
    a = np.searchsorted(starts, p, side="right") - 1
    return a, a + 1 + (p - starts[a])


def triu_pairs(k: int, lo: int, hi: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)``: the pairs ``lo .. hi - 1`` of ``torch.triu_indices(k, k, 1)``, (hi - lo,)
    each, without the others."""
    if (lo, hi) == (0, k * (k - 1) // 2):
        pair_a, pair_b = torch.triu_indices(k, k, 1, device=device)
        return pair_a, pair_b
    rows = torch.arange(k - 1, 0, -1, device=device)
    starts = torch.cumsum(rows, 0) - rows
    p = torch.arange(lo, hi, device=device)
    a = torch.searchsorted(starts, p, right=True) - 1
    return a, a + 1 + (p - starts[a])


def all_pairs(batch: ClassBatch) -> ClassBatch:
    """``batch`` holding every pair (k (k - 1) / 2 of them), in one piece."""
    k = batch.num_classes
    pair_a, pair_b = torch.triu_indices(k, k, 1, device=batch.z.device)
    return dataclasses.replace(batch, pair_a=pair_a, pair_b=pair_b, span=(0, batch.total_pairs))


def check_memory(memory_mb: object) -> None:
    if not is_number(memory_mb) or not memory_mb > 0:
        raise ValueError(f"memory_mb must be a number of megabytes > 0, got {memory_mb!r}")
