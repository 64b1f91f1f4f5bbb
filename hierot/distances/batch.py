"""A batch grouped by class: padded member tables, the class pairs to compare, and their
split into chunks that fit a memory budget."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

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
        n = int(torch.maximum(self.counts[self.pair_a], self.counts[self.pair_b]).max())
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
        device = self.counts.device
        # what the pairs may use beside the B x B matrix, if there is one
        budget = self.memory_bytes - (self.dense_bytes if self.dense_fits else 0)
        budget = max(budget, self.memory_bytes // 4)
        # A training batch fits at once by far: skip the per-row sums (a dozen small ops that
        # are a visible part of a step at B = 512).
        n = float(self.counts.max())
        per_pair = memory.entry * n * n + (memory.sample + memory.coupling) * 2 * n + memory.pair
        if self.total_pairs * per_pair <= budget:
            yield all_pairs(self)
            return
        # Per row a (the pairs (a, b), b > a): how many pairs, and a bound on their bytes.
        counts = self.counts
        rows = torch.arange(k - 1, 0, -1, device=device).double()
        rows = torch.cat([rows, rows.new_zeros(1)])
        suffix_max = counts.flip(0).cummax(0).values.flip(0)
        later_max = torch.cat([suffix_max[1:], suffix_max.new_zeros(1)])
        pad = torch.maximum(counts, later_max).double()
        later_sum = (counts.flip(0).cumsum(0).flip(0) - counts).double()
        row_bytes = rows * (
            memory.entry * pad**2 + memory.sample * 2 * pad + memory.pair
        ) + memory.coupling * (rows * counts.double() + later_sum)
        total = float(row_bytes.sum())
        if total <= budget:
            yield all_pairs(self)
            return
        # Cut the cumulative bytes at multiples of the budget, spreading each row's bytes
        # evenly over its pairs.
        row_start = torch.cumsum(rows, 0) - rows
        cum_bytes = torch.cumsum(row_bytes, 0)
        n_chunks = int(total // budget) + 1
        marks = torch.arange(1, n_chunks, device=device, dtype=torch.float64) * budget
        row = torch.searchsorted(cum_bytes, marks, right=True).clamp_max(k - 1)
        before = torch.where(row > 0, cum_bytes[(row - 1).clamp_min(0)], torch.zeros_like(marks))
        inside = ((marks - before) / row_bytes[row].clamp_min(1e-30) * rows[row]).floor()
        cuts = (row_start[row] + inside.clamp(0, None)).long()
        bounds = torch.unique(torch.cat([cuts, torch.tensor([0, self.total_pairs])]))
        starts = row_start.long()
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            if hi <= lo:
                continue
            p = torch.arange(lo, hi, device=device)
            a = torch.searchsorted(starts, p, right=True) - 1
            b = a + 1 + (p - starts[a])
            yield dataclasses.replace(self, pair_a=a, pair_b=b)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (half, bfloat16, float32) runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def group_by_class(
    z: torch.Tensor, y: torch.Tensor, memory_mb: float = DEFAULT_MEMORY_MB
) -> ClassBatch:
    """Group the rows of ``z`` (B, d) by the integer labels ``y`` (B,); the distance
    functions then keep to ``memory_mb`` megabytes (see ``ClassBatch.chunks``)."""
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
    classes, inverse, counts = torch.unique(y, sorted=True, return_inverse=True, return_counts=True)
    k = classes.numel()
    n_max = int(counts.max()) if k else 0
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(y.numel(), device=z.device) - starts[inverse[order]]
    members = torch.zeros(k, n_max, dtype=torch.long, device=z.device)
    members[inverse[order], rank] = order
    mask = torch.arange(n_max, device=z.device) < counts[:, None]
    # The full pair list is built lazily per chunk: k = 10 000 classes have 5e7 pairs.
    empty = torch.zeros(0, dtype=torch.long, device=z.device)
    memory_bytes = int(memory_mb * 2**20)
    return ClassBatch(z, inverse, classes, counts, members, mask, empty, empty, memory_bytes)


def all_pairs(batch: ClassBatch) -> ClassBatch:
    """``batch`` holding every pair (k (k - 1) / 2 of them), in one piece."""
    k = batch.num_classes
    pair_a, pair_b = torch.triu_indices(k, k, 1, device=batch.z.device)
    return dataclasses.replace(batch, pair_a=pair_a, pair_b=pair_b)


def check_memory(memory_mb: object) -> None:
    if not is_number(memory_mb) or not memory_mb > 0:
        raise ValueError(f"memory_mb must be a number of megabytes > 0, got {memory_mb!r}")
