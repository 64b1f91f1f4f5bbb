"""Euclidean distances between samples: all pairs (one GEMM each way), or chosen pairs (linear).

Both are ``torch.autograd.Function``s because autograd's own routes are slow here:
``torch.cdist``'s backward costs two B x B x d products, and gathering the rows of chosen
pairs moves ``2 M d`` numbers through memory (``scripts/bench_cpcc.py`` measures both). The
gradient of ``||z_u - z_v||`` is
``(z_u - z_v) / ||z_u - z_v||``, so for any weights ``W`` on the pairs the whole backward is
``rowsum(S) * z - S @ z`` with ``S = W + W^T``: one dense or sparse product.
"""

from __future__ import annotations

import warnings

import torch

# Below this fraction of chosen pairs (M / B^2) the sparse route is faster on CPU: the
# crossing point of the two routes at d = 512 (``scripts/bench_cpcc.py``), between the
# densities of B = 1024 and B = 2048 samples over 100 classes (0.085 and 0.045).
SPARSE_BELOW_DENSITY = 0.06
# GPUs run the B x B GEMM so fast that only its memory matters; past this many entries
# (1 GiB in float32) the sparse route is used there too.
DENSE_MAX_ENTRIES = 2**28


def _centred(z: torch.Tensor) -> torch.Tensor:
    # Distances are translation invariant; centring keeps the float32 cancellation in
    # |x|^2 + |y|^2 - 2 x.y small, and makes identical samples exactly 0 apart.
    return z - z.mean(0, keepdim=True)


def _coefficients(grad: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    # 0 at coincident samples (a subgradient), as torch.cdist's gradient.
    return torch.where(dist > 0, grad / dist.clamp_min(torch.finfo(dist.dtype).tiny), 0)


class _AllDistances(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        zc = _centred(z)
        gram = zc @ zc.T
        sq = gram.diagonal()
        dist = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min_(0).sqrt_()
        dist.fill_diagonal_(0)
        ctx.save_for_backward(zc, dist)
        return dist

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        zc, dist = ctx.saved_tensors
        w = _coefficients(grad, dist)
        w = w + w.T
        return w.sum(1, keepdim=True) * zc - w @ zc


def euclidean_distances(z: torch.Tensor) -> torch.Tensor:
    """(B, B) Euclidean distances between the rows of ``z`` (B, d), differentiable; the same
    values as ``torch.cdist(z, z)`` (exact zeros on the diagonal), one GEMM each way."""
    return _AllDistances.apply(z)


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: int) -> torch.Tensor:
    with warnings.catch_warnings():
        # torch warns once per process that CSR support is "beta"; the two ops used here
        # (sampled_addmm, CSR @ dense) are stable on CPU and CUDA.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, (size, size), check_invariants=False)


def centred_with_norms(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z - mean, |z - mean|^2)``: the input of the sparse route, which a caller computing
    many chunks of pairs of one batch computes once (it is O(B d) per call)."""
    zc = _centred(z)
    return zc, (zc.detach() * zc.detach()).sum(1)


class _ChosenDistances(torch.autograd.Function):
    # Takes centred features: the gradient it returns sums to zero over the samples, so
    # autograd passes it through the centring unchanged.
    @staticmethod
    def forward(
        ctx, zc: torch.Tensor, sq: torch.Tensor, i: torch.Tensor, j: torch.Tensor
    ) -> torch.Tensor:
        size, m = zc.shape[0], i.numel()
        # One symmetric pattern (every pair both ways) serves the sampled product here and
        # the sparse product of the backward, so it is sorted once.
        rows, cols = torch.cat([i, j]), torch.cat([j, i])
        order = torch.argsort(rows * size + cols)
        crow = torch.zeros(size + 1, dtype=torch.long, device=zc.device)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=size), 0)
        col = cols[order]
        pattern = _csr(crow, col, torch.zeros(2 * m, dtype=zc.dtype, device=zc.device), size)
        dots = torch.sparse.sampled_addmm(pattern, zc, zc.T, beta=0.0).values()
        position = torch.empty_like(order)
        position[order] = torch.arange(2 * m, device=zc.device)
        dist = (sq[i] + sq[j] - 2 * dots[position[:m]]).clamp_min(0).sqrt()
        ctx.save_for_backward(zc, i, j, dist, position, crow, col)
        return dist

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        zc, i, j, dist, position, crow, col = ctx.saved_tensors
        coef = _coefficients(grad, dist)
        degree = torch.zeros(zc.shape[0], dtype=zc.dtype, device=zc.device)
        degree.index_add_(0, i, coef).index_add_(0, j, coef)
        values = torch.empty(2 * coef.numel(), dtype=zc.dtype, device=zc.device)
        values[position] = torch.cat([coef, coef])
        return degree[:, None] * zc - _csr(crow, col, values, zc.shape[0]) @ zc, None, None, None


def use_sparse(size: int, num_pairs: int, device: torch.device) -> bool:
    """Whether ``pair_distances`` takes the sparse route for ``num_pairs`` of ``size`` samples."""
    if size * size > DENSE_MAX_ENTRIES:
        return True
    return device.type == "cpu" and num_pairs < SPARSE_BELOW_DENSITY * size * size


def pair_distances(
    z: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    dense: bool | None = None,
    centred: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``||z[i] - z[j]||_2`` for the listed pairs, differentiable in ``z``.

    Few pairs (``fastft``'s ``(k - 1) B`` at large B) go through a sampled product (SDDMM) and
    a sparse x dense backward: O(M d) work and memory. Many pairs go through the B x B GEMM of
    ``euclidean_distances``, which is faster at that density; ``use_sparse`` decides.

    Args:
        z: (B, d) float32 or float64 features, on any device.
        i, j: (M,) sample indices; the unordered pairs ``{i, j}`` must be distinct, ``i != j``
            (each is one entry of a sparse B x B matrix).
        dense: force the route (True: B x B GEMM, False: sparse); None lets ``use_sparse``
            decide.
        centred: ``centred_with_norms(z)``, if the caller already has it.
    Returns:
        (M,) distances.
    """
    i, j = i.long(), j.long()
    sparse = use_sparse(z.shape[0], i.numel(), z.device) if dense is None else not dense
    if sparse:
        zc, sq = centred if centred is not None else centred_with_norms(z)
        return _ChosenDistances.apply(zc, sq, i, j)
    return euclidean_distances(z)[i, j]
