"""Out-of-distribution detection from features: the scores of HierarchyCPCC and HypStructure
and the three numbers their tables report.

Scores (higher: more in-distribution), fitted on the training features:
- ``gaussian``: the highest log-likelihood under one Gaussian per class (maximum-likelihood
  mean and covariance plus 1e-6 on the diagonal: HierarchyCPCC's one-component
  ``GaussianMixture`` per class with scikit-learn's default ``reg_covar``).
- ``ssd``: minus the Mahalanobis distance to the mean of all training features (biased
  covariance, pseudo-inverse; SSD, as HypStructure's ``get_scores_one_cluster``).
- ``knn@k``: minus the squared Euclidean distance to the k-th nearest training feature
  (HypStructure's faiss ``IndexFlatL2`` search; k = 50 and 200).
- ``mahalanobis``: minus the smallest Mahalanobis distance to a class mean under one tied
  covariance (Lee et al. 2018, as HypStructure's ``get_mean_prec``; it divides the summed
  class covariances by the feature dimension instead of the sample count, which scales every
  distance alike and changes no ranking, so none of the three numbers).
Each on the raw features and on HypStructure's ``normalized`` ones: L2-normalised, then
standardised with the training features' mean and standard deviation.

Numbers, with in-distribution the positive class: AUROC, AUPR (average precision) and the
false-positive rate at 95 % true-positive rate (torchmetrics' ROC curve, at its first
threshold reaching 95 %). HypStructure reports SSD's AUPR with the OOD set positive and its
FPR from a percentile; the tests give the numbers where those conventions differ.

Everything runs on blocks of rows and classes within ``memory_mb``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_roc,
)

from hierot.metrics.decoding import DEFAULT_MEMORY_MB, row_blocks
from hierot.metrics.feature_space import class_means

SCORES = ("gaussian", "ssd", "knn", "mahalanobis")
REG_COVAR = 1e-6


def normalized(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """HypStructure's normalised features: each row divided by its norm (+1e-10), then every
    dimension standardised with the training rows' mean and (biased) standard deviation."""
    unit = [x / (x.norm(dim=1, keepdim=True) + 1e-10) for x in (train, *others)]
    mean, std = unit[0].mean(0, keepdim=True), unit[0].std(0, correction=0, keepdim=True)
    return [(x - mean) / (std + 1e-10) for x in unit]


def _quadratic(
    x: torch.Tensor, centres: torch.Tensor, precision: torch.Tensor, memory_mb: float
) -> torch.Tensor:
    """(N, C) ``(x - c)^T P (x - c)`` for every row and centre, one shared P (d, d)."""
    pc = centres @ precision  # (C, d)
    cpc = (pc * centres).sum(1)  # (C,)
    out = torch.empty(x.shape[0], centres.shape[0], dtype=x.dtype)
    for rows in row_blocks(x.shape[0], 8 * (centres.shape[0] + x.shape[1]), memory_mb):
        xr = x[rows]
        out[rows] = ((xr @ precision) * xr).sum(1, keepdim=True) - 2 * xr @ pc.T + cpc
    return out


def ssd_score(
    train: torch.Tensor, x: torch.Tensor, memory_mb: float = DEFAULT_MEMORY_MB
) -> torch.Tensor:
    """(N,) minus the Mahalanobis distance of ``x`` to the training mean (biased covariance,
    pseudo-inverse), squared as SSD's code leaves it."""
    train, x = train.double(), x.double()
    mean = train.mean(0, keepdim=True)
    precision = torch.linalg.pinv(torch.cov(train.T, correction=0))
    return -_quadratic(x, mean, precision, memory_mb)[:, 0]


def mahalanobis_score(
    train: torch.Tensor, labels: torch.Tensor, x: torch.Tensor, memory_mb: float = DEFAULT_MEMORY_MB
) -> torch.Tensor:
    """(N,) minus the smallest squared Mahalanobis distance of ``x`` to a class mean under
    HypStructure's tied covariance: the classes' unbiased covariances summed, over d."""
    train, x = train.double(), x.double()
    present, means = class_means(train, labels)
    index = torch.searchsorted(present, labels)
    centred = train - means[index]
    counts = torch.bincount(index).double()
    # sum_c cov_c = sum_c (centred_c^T centred_c) / (n_c - 1): each row weighted by its class.
    weight = (1 / (counts - 1).clamp_min(1))[index]
    tied = (centred * weight[:, None]).T @ centred / train.shape[1]
    precision = torch.linalg.pinv(tied)
    return -_quadratic(x, means, precision, memory_mb).min(dim=1).values


def gaussian_score(
    train: torch.Tensor, labels: torch.Tensor, x: torch.Tensor, memory_mb: float = DEFAULT_MEMORY_MB
) -> torch.Tensor:
    """(N,) the highest log-likelihood of ``x`` under one Gaussian per class (maximum-
    likelihood covariance + ``REG_COVAR`` on the diagonal)."""
    train, x = train.double(), x.double()
    d = train.shape[1]
    present, means = class_means(train, labels)
    index = torch.searchsorted(present, labels)
    best = torch.full((x.shape[0],), -math.inf, dtype=torch.float64)
    counts = torch.bincount(index)
    # Class blocks: the classes' samples padded to (n, largest class, d), their (d, d)
    # covariances and Cholesky factors, then the samples in row blocks against them.
    per_class = 8 * (3 * d * d + int(counts.max()) * d)
    for cols in row_blocks(present.numel(), per_class, memory_mb / 2):
        n = cols.stop - cols.start
        members = ((index >= cols.start) & (index < cols.stop)).nonzero().squeeze(1)
        members = members[index[members].argsort(stable=True)]
        block = index[members] - cols.start
        starts = torch.cumsum(counts[cols], 0) - counts[cols]
        slot = torch.arange(members.numel()) - starts[block]
        padded = torch.zeros(n, int(counts[cols].max()), d, dtype=torch.float64)
        padded[block, slot] = train[members] - means[index[members]]
        cov = padded.transpose(1, 2) @ padded / counts[cols].double()[:, None, None]
        cov += REG_COVAR * torch.eye(d, dtype=torch.float64)
        chol = torch.linalg.cholesky(cov)  # (n, d, d)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
        for rows in row_blocks(x.shape[0], 8 * 2 * n * d, memory_mb / 2):
            diff = x[rows][None, :, :] - means[cols][:, None, :]  # (n, r, d)
            solved = torch.linalg.solve_triangular(chol, diff.transpose(1, 2), upper=False)
            maha = (solved**2).sum(1)  # (n, r)
            loglik = -0.5 * (d * math.log(2 * math.pi) + logdet[:, None] + maha)
            best[rows] = torch.maximum(best[rows], loglik.max(dim=0).values)
    return best


def knn_score(
    train: torch.Tensor, x: torch.Tensor, k: int, memory_mb: float = DEFAULT_MEMORY_MB
) -> torch.Tensor:
    """(N,) minus the squared Euclidean distance of ``x`` to its k-th nearest training row."""
    if not 1 <= k <= train.shape[0]:
        raise ValueError(f"ood knn: k = {k} needs 1 to {train.shape[0]} training features")
    train, x = train.double(), x.double()
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for rows in row_blocks(x.shape[0], 8 * 2 * train.shape[0], memory_mb):
        dist = torch.cdist(x[rows], train) ** 2
        out[rows] = -dist.topk(k, dim=1, largest=False).values[:, -1]
    return out


def detection_metrics(inside: torch.Tensor, outside: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"auroc", "aupr", "fpr95"}`` of separating ``inside`` (positive) from ``outside``
    by their scores (higher: more in-distribution)."""
    scores = torch.cat([inside, outside]).double()
    # torchmetrics takes scores outside [0, 1] for logits and squashes them with a sigmoid,
    # which saturates distances in the thousands into ties: dense ranks in [0, 1] keep the
    # order and the ties, so every curve statistic is unchanged.
    dense = scores.unique(return_inverse=True)[1].double()
    scores = dense / dense.max().clamp_min(1)
    truth = torch.cat([torch.ones_like(inside), torch.zeros_like(outside)]).long()
    fpr, tpr, _ = binary_roc(scores, truth)
    reached = (tpr >= 0.95).nonzero()
    return {
        "auroc": binary_auroc(scores, truth),
        "aupr": binary_average_precision(scores, truth),
        "fpr95": fpr[reached[0, 0]] if reached.numel() else torch.tensor(1.0),
    }


def ood_metrics(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    inside: torch.Tensor,
    outside: torch.Tensor,
    knn_k: Sequence[int] = (50, 200),
    memory_mb: float = DEFAULT_MEMORY_MB,
) -> dict[str, torch.Tensor]:
    """``{"<score>_<raw|norm>/<auroc|aupr|fpr95>": value}`` for every score of ``SCORES``
    (``knn@<k>`` for each k) on raw and normalised features.

    Args:
        train: (M, d) training features; train_labels: (M,); inside: (N, d) the test split's
            features; outside: (N', d) the OOD set's.
    """
    raw = [t.double() for t in (train, inside, outside)]
    out: dict[str, torch.Tensor] = {}
    for variant, (tr, xin, xout) in (("raw", raw), ("norm", normalized(*raw))):
        scorers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "gaussian": lambda x, tr=tr: gaussian_score(tr, train_labels, x, memory_mb),
            "ssd": lambda x, tr=tr: ssd_score(tr, x, memory_mb),
            "mahalanobis": lambda x, tr=tr: mahalanobis_score(tr, train_labels, x, memory_mb),
        }
        for k in knn_k:
            scorers[f"knn@{k}"] = lambda x, tr=tr, k=k: knn_score(tr, x, k, memory_mb)
        both = torch.cat([xin, xout])  # one fit of each score for both sets
        for name, score in scorers.items():
            scores = score(both)
            numbers = detection_metrics(scores[: len(xin)], scores[len(xin) :])
            out.update({f"{name}_{variant}/{key}": value for key, value in numbers.items()})
    return out
