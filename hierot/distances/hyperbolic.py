"""``hyperbolic``: distances between class centres in the Poincare ball (HypStructure, Sinha
et al., NeurIPS 2024).

Features are mapped to the ball of curvature ``-c`` by the exponential map at 0; a class's
centre is either the Einstein midpoint of its mapped samples (``mean=einstein``, HypStructure's
``poincare_mean``, the variant its README runs) or its Euclidean mean, clipped to norm
``clip_r`` and then mapped (``mean=euclidean``, its ``poincare_exp_c``). Two centres are
``2 / sqrt(c) * artanh(sqrt(c) * |(-x) (+)_c y|)`` apart, with
``|(-x) (+)_c y| = |x - y| / sqrt(1 - 2 c <x, y> + c^2 |x|^2 |y|^2)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from hierot.distances.batch import ClassBatch, PairMemory
from hierot.distances.registry import register_distance
from hierot.errors import is_number

MEANS = ("einstein", "euclidean")
# The largest radius kept (times 1 / sqrt(c)) is 1 - BALL_EPS, HypStructure's value for
# float32 (geom/poincare.py), in every dtype: a float64 check then measures what a float32
# run computes (HypStructure's float64 radius is 1 - 1e-5).
BALL_EPS = 4e-3


def check_hyperbolic(mean: str, c: float, clip_r: float | None, riemannian: bool) -> None:
    if mean not in MEANS:
        raise ValueError(f"hyperbolic: mean must be one of {', '.join(MEANS)}, got {mean!r}")
    if not is_number(c) or not 0 < c < math.inf:
        raise ValueError(f"hyperbolic: c (the curvature's magnitude) must be > 0, got {c!r}")
    if clip_r is not None and (not is_number(clip_r) or not clip_r > 0):
        raise ValueError(f"hyperbolic: clip_r must be a number > 0 or null, got {clip_r!r}")
    if not isinstance(riemannian, bool):
        raise ValueError(f"hyperbolic: riemannian must be true or false, got {riemannian!r}")


def project(x: torch.Tensor, c: float) -> torch.Tensor:
    """Points beyond radius ``(1 - BALL_EPS) / sqrt(c)`` moved onto it."""
    norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-15)
    top = (1 - BALL_EPS) / math.sqrt(c)
    return torch.where(norm > top, x / norm * top, x)


def expmap0(u: torch.Tensor, c: float) -> torch.Tensor:
    """The exponential map at the origin, ``tanh(sqrt(c) |u|) u / (sqrt(c) |u|)``, projected."""
    sqrt_c = math.sqrt(c)
    norm = u.norm(dim=-1, keepdim=True).clamp_min(1e-15)
    return project(torch.tanh(sqrt_c * norm) * u / (sqrt_c * norm), c)


def einstein_midpoints(x: torch.Tensor, index: torch.Tensor, groups: int, c: float) -> torch.Tensor:
    """(groups, d) Einstein midpoints of the ball points ``x`` (B, d) grouped by ``index``
    (B,): through the Klein model, weighted by the Lorentz factors.

    With k = 2x / (1 + c|x|^2) a point's Klein coordinates, its Lorentz factor is
    1 / sqrt(1 - c|k|^2) = (1 + c|x|^2) / (1 - c|x|^2): written so, it never subtracts two
    numbers near 1."""
    sq = c * (x * x).sum(-1, keepdim=True)
    gamma = (1 + sq) / (1 - sq)
    sums = torch.zeros(groups, x.shape[1], dtype=x.dtype, device=x.device)
    sums = sums.index_add(0, index, 2 * x / (1 - sq))
    weights = torch.zeros(groups, 1, dtype=x.dtype, device=x.device).index_add(0, index, gamma)
    mean = sums / weights
    return mean / (1 + torch.sqrt(1 - c * (mean * mean).sum(-1, keepdim=True)))


class _RiemannianGradient(torch.autograd.Function):
    # Identity forward; the backward scales the gradient by (1 - c |x|^2)^2 / 4, the inverse
    # of the ball's metric at x (HypStructure's ToPoincare(riemannian=True)).
    @staticmethod
    def forward(ctx, x: torch.Tensor, c: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.c = c
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad * (1 - ctx.c * (x * x).sum(-1, keepdim=True)).pow(2) / 4, None


def class_centres(
    batch: ClassBatch, mean: str, c: float, clip_r: float | None, riemannian: bool
) -> torch.Tensor:
    """(k, d) the centre of every class of ``batch`` in the ball (computed once a batch), in
    float64: near the boundary the ball's formulas lose float32's precision."""
    key = ("hyperbolic", mean, c, clip_r, riemannian)
    if key not in batch._cache:
        if mean == "einstein":
            x = expmap0(batch.z.double(), c)
            centres = einstein_midpoints(x, batch.inverse, batch.num_classes, c)
        else:
            means = batch.class_means.double()
            if clip_r is not None:
                norm = means.norm(dim=-1, keepdim=True)
                means = means * torch.clamp(clip_r / norm.clamp_min(1e-15), max=1.0)
            centres = expmap0(means, c)
            if riemannian:
                centres = _RiemannianGradient.apply(centres, c)
        batch._cache[key] = centres
    return batch._cache[key]


def poincare_distances(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """(n, m) distances between ball points ``x`` (n, d) and ``y`` (m, d)."""
    diff = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
    xy = x @ y.T
    xx, yy = (x * x).sum(-1), (y * y).sum(-1)
    denom = 1 - 2 * c * xy + c * c * xx[:, None] * yy[None, :]
    r = math.sqrt(c) * diff / denom.clamp_min(torch.finfo(x.dtype).tiny).sqrt()
    return 2 / math.sqrt(c) * torch.atanh(r.clamp(max=1 - torch.finfo(x.dtype).eps))


def hyperbolic_memory(dim: int, itemsize: int, options: Mapping[str, object]) -> PairMemory:
    # a chunk's blocks of differences, inner products and distances (~2 entries per pair
    # each) and the pair indices
    return PairMemory(pair=12 * itemsize + 160)


def hyperbolic_centre(
    z: torch.Tensor, mean: str, c: float, clip_r: float | None, riemannian: bool
) -> torch.Tensor:
    """The batch's centre in the ball for HypStructure's centring loss: the Einstein
    midpoint of the mapped features (``mean=einstein``), else their Euclidean mean (as its
    code does for the other variants)."""
    if mean != "einstein":
        return z.mean(0)
    index = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    return einstein_midpoints(expmap0(z.double(), c), index, 1, c)[0].to(z.dtype)


@register_distance(
    "hyperbolic", check=check_hyperbolic, memory=hyperbolic_memory, centre=hyperbolic_centre
)
def hyperbolic_distance(
    batch: ClassBatch,
    mean: str = "einstein",
    c: float = 1.0,
    clip_r: float | None = 2.3,
    riemannian: bool = True,
) -> torch.Tensor:
    """Poincare-ball distance between the class centres of every pair of ``batch``; (P,).

    Args:
        mean: ``einstein`` (midpoint of the mapped samples) or ``euclidean`` (mean, then
            mapped).
        c: the magnitude of the ball's curvature.
        clip_r: ``euclidean`` only: class means longer than this are scaled down to it
            before the map (feature clipping, Guo et al. 2022); null for none.
        riemannian: ``euclidean`` only: rescale the gradient at the centres by the inverse
            metric, as HypStructure's ``ToPoincare``.
    """
    check_hyperbolic(mean, c, clip_r, riemannian)
    centres = class_centres(batch, mean, c, clip_r, riemannian)
    a0, a1 = batch.span_rows()
    block = poincare_distances(centres[a0 : a1 + 1], centres[a0 + 1 :], c)
    pairs = block.flatten()[(batch.pair_a - a0) * block.shape[1] + (batch.pair_b - a0 - 1)]
    return pairs.to(batch.z.dtype)
