"""``haframe``: HAFrame (Liang & Davis, ICCV 2023; ``ltong1130ztr/HAFrame``): a fixed
classifier whose class vectors' inner products are a similarity decaying with the LCA height
(``HAFrame/solve_HAF.py``), after a residual projection head (``util/arch/HAF_resnet.py``),
trained with cross-entropy plus a regression of the features' cosines to the class vectors on
those similarities (``HAFrame/losses.py:MixedLoss_CEandGeneralSCSL``, ``--loss
mixed-ce-gscsl``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hierot.errors import require_number
from hierot.hierarchy import Hierarchy
from hierot.objectives.registry import Objective, register_objective

# The reference's search grid for the similarity floor (``num_samples``) and the magnitude
# under which it counts an eigenvalue as 0.
GRID = 100
EIGEN_FLOOR = 1e-6


def _finite(value: object, key: str, minimum: float) -> float:
    number = require_number(value, key, minimum)
    if not math.isfinite(number):
        raise ValueError(f"{key} must be finite, got {value!r}")
    return number


def check_haframe(
    hierarchy: Hierarchy | None, alpha: float, beta: float | None, gamma: float
) -> None:
    _finite(alpha, "haframe: alpha", 0)
    if beta is not None:
        _finite(beta, "haframe: beta", 0)
    if not _finite(gamma, "haframe: gamma", 0) > 0:
        raise ValueError(f"haframe: gamma must be > 0, got {gamma!r}")
    if hierarchy is not None and hierarchy.num_classes < 2:
        raise ValueError(f"haframe: needs at least 2 classes, got {hierarchy.num_classes}")


def mixing_beta(alpha: float, beta: float | None) -> float:
    """The cross-entropy's weight: ``beta``, or by the reference's rule for a constant
    ``--loss-schedule alpha`` (``mixing_ratio_scheduler``): 1 - alpha, and 1 above 1."""
    if beta is not None:
        return float(beta)
    return 1.0 - alpha if alpha <= 1.0 else 1.0


def similarities(heights: torch.Tensor, gamma: float, floor: float) -> torch.Tensor:
    """``(1 - floor) exp(-gamma h / h_max) + floor`` of LCA heights ``h`` (h_max the largest
    among the classes): 1 on the diagonal, the reference's exponential-decay mapping."""
    return (1 - floor) * torch.exp(-gamma * heights / heights.max()) + floor


def _semidefinite(similarity: torch.Tensor) -> bool:
    # the reference's test: eigenvalues within EIGEN_FLOOR of 0 count as 0
    return bool(torch.linalg.eigvalsh(similarity).min() > -EIGEN_FLOOR)


def similarity_floor(heights: torch.Tensor, gamma: float) -> float:
    """The reference's ``min_similarity``: the lowest ``s`` of ``linspace(-1/(K-1), -1,
    100)`` whose similarities are positive semi-definite, found by bisection where the
    reference decomposes at all 100. Bisection finds the same point because the test is
    monotone in s: with t = s / (1 - s), increasing in s, S(s) = (1 - s)(E + t 1 1^T) with
    E = exp(-gamma h / h_max), so its smallest eigenvalue, (1 - s) lambda_min(E + t 1 1^T),
    rises with s while negative."""
    k = heights.shape[0]
    grid = torch.linspace(-1.0 / (k - 1), -1.0, GRID, dtype=torch.float64)
    if not _semidefinite(similarities(heights, gamma, float(grid[0]))):
        raise ValueError(
            f"haframe: the similarities at gamma={gamma} are not positive semi-definite at "
            f"any floor of the reference's grid"
        )
    low, high = 0, GRID  # grid[low] passes; grid[high] fails (or lies past the grid)
    while high - low > 1:
        mid = (low + high) // 2
        if _semidefinite(similarities(heights, gamma, float(grid[mid]))):
            low = mid
        else:
            high = mid
    return float(grid[low])


def haf_frame(hierarchy: Hierarchy, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, S)``, float64 ``(K, K)``: the similarities S at the reference's floor and the
    class vectors W = V sqrt(Lambda) of S's eigendecomposition S = V Lambda V^T (eigenvalues
    within EIGEN_FLOOR of 0 set to 0), so W W^T = S up to those. The reference multiplies
    W by a random orthogonal matrix (``np.random``, its run's seed), which changes no inner
    product between class vectors; here there is none."""
    heights = hierarchy.lca_heights(torch.float64)
    similarity = similarities(heights, gamma, similarity_floor(heights, gamma))
    values, vectors = torch.linalg.eigh(similarity)
    values = torch.where(values.abs() < EIGEN_FLOOR, 0.0, values)
    return vectors * values.sqrt(), similarity


def _norm(bn: nn.BatchNorm1d, x: torch.Tensor, update: bool) -> torch.Tensor:
    """``bn(x)``; with ``update`` False in training mode, the batch's statistics without
    moving the running ones."""
    if update or not bn.training:
        return bn(x)
    return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)


class ResidualLayer(nn.Module):
    """``PointResidualTransformationLayer(K, K, K, 'prelu')``: x + PReLU(BN(Linear(PReLU(
    BN(Linear(x)))))), the linear maps without bias, the residual the identity."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(k, k, bias=False)
        self.bn1 = nn.BatchNorm1d(k)
        self.act_func1 = nn.PReLU(k)
        self.linear2 = nn.Linear(k, k, bias=False)
        self.bn2 = nn.BatchNorm1d(k)
        self.act_func2 = nn.PReLU(k)

    def forward(self, x: torch.Tensor, update: bool = True) -> torch.Tensor:
        h = self.act_func1(_norm(self.bn1, self.linear1(x), update))
        return self.act_func2(_norm(self.bn2, self.linear2(h), update)) + x


class ProjectionHead(nn.Module):
    """HAFrame's ``features_1``: ``BatchNorm1d(K)`` then two residual layers
    (``NarrowResidualTransformationHead(K, K, 'prelu')``)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(k)
        self.residual_layer1 = ResidualLayer(k)
        self.residual_layer2 = ResidualLayer(k)

    def forward(self, x: torch.Tensor, update: bool = True) -> torch.Tensor:
        x = _norm(self.bn, x, update)
        return self.residual_layer2(self.residual_layer1(x, update), update)


@register_objective("haframe", check=check_haframe)
class HAFrame(Objective):
    """``beta CE(f W^T, y) + alpha / B sum_b sum_k (cos(f_b, w_k) - S[y_b, k])^2`` with
    f = head(logits) the projection head's features, W the fixed frame and S its target
    similarities (``haf_frame``); the class scores are f W^T.

    The model's linear head is the reference's 1x1 convolution from the backbone's channels
    to K (before average pooling, which commutes with it); its bias, which that convolution
    lacks, changes nothing, as the batch normalisation that follows takes the batch's mean
    out of every coordinate (the bias gets no gradient).

    Args:
        alpha: weight of the cosine regression (the scripts' ``ALPHA``: 0.4 on CIFAR-100 and
            iNaturalist-19, 0.5 on FGVC-Aircraft and tieredImageNet).
        beta: weight of the cross-entropy; null: 1 - alpha, or 1 for alpha > 1 (the
            reference's rule).
        gamma: decay of the similarity with the LCA height (the scripts' ``GAMMA``: 2 on
            CIFAR-100, 1 on FGVC-Aircraft, 5 on iNaturalist-19, 3 on tieredImageNet).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        num_features: int,
        alpha: float = 0.4,
        beta: float | None = None,
        gamma: float = 2.0,
    ) -> None:
        super().__init__()
        check_haframe(hierarchy, alpha, beta, gamma)
        self.alpha, self.beta = float(alpha), mixing_beta(float(alpha), beta)
        frame, similarity = haf_frame(hierarchy, float(gamma))
        # Saved with the model: within a repeated eigenvalue (every set of sibling classes
        # gives one) the eigenvectors are any basis of its space, and another LAPACK may
        # pick another; a checkpoint keeps the frame its head was trained against.
        self.register_buffer("frame", frame.float())
        self.register_buffer("similarity", similarity.float())
        self.head = ProjectionHead(hierarchy.num_classes)

    def features(self, logits: torch.Tensor, update: bool = True) -> torch.Tensor:
        """``(B, K)`` features f of the projection head (float32 at least)."""
        f = self.head(logits, update)
        return f.float() if f.dtype not in (torch.float32, torch.float64) else f

    def class_scores(self, z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        # In training mode (the training accuracy, on the step's batch once more) the
        # batch's statistics, as the loss saw them, without a second running-stats update.
        f = self.features(logits, update=False)
        return f @ self.frame.to(f.dtype).T

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        f = self.features(logits)
        w = self.frame.to(f.dtype)
        cosines = F.normalize(f, dim=1) @ F.normalize(w, dim=1).T
        regression = (cosines - self.similarity.to(f.dtype)[y]).square().sum(1).mean()
        return self.beta * F.cross_entropy(f @ w.T, y) + self.alpha * regression
