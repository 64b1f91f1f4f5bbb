"""Scores of the feature space itself, as the papers compute them.

- ``silhouette``: the silhouette coefficient of features against labels, Euclidean
  (HierarchyCPCC's ``silhouette_score(..., metric='euclidean')`` on the test features against
  each coarse level).
- ``knn_accuracy``: a k-nearest-neighbour classifier with cosine distance and a majority vote
  over a bank of labelled features (the training split), as scikit-learn's
  ``KNeighborsClassifier(k, metric="cosine")`` predicts.
- ``prototype_retrieval``: OTCPCC's ``downstream.py`` retrieval: cosine similarity of every
  test feature to each concept's mean training feature; class-wise average precision
  (scikit-learn's ``average_precision_score``, ties included), its mean, and the macro
  precision and recall of the most similar prototype.

Each works on blocks of rows within ``memory_mb``, so that 100 000 samples of 10 000 classes
need no (N, N) or (N, K) matrix at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassPrecision, MulticlassRecall

from hierot.metrics.decoding import DEFAULT_MEMORY_MB, row_blocks


def class_means(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels present, sorted, (C, d) the mean row of each)`` of ``x`` (N, d)."""
    present, index = labels.unique(return_inverse=True)
    sums = x.new_zeros(present.numel(), x.shape[1]).index_add_(0, index, x)
    return present, sums / torch.bincount(index).to(x.dtype)[:, None]


def silhouette(
    z: torch.Tensor, labels: torch.Tensor, memory_mb: float = DEFAULT_MEMORY_MB
) -> torch.Tensor:
    """Mean silhouette coefficient ``(b - a) / max(a, b)`` over the samples, ``a`` the mean
    distance to the others of its label, ``b`` the lowest mean distance to another label's
    samples; a sample alone in its label counts 0 (scikit-learn's convention).

    Args:
        z: (N, d) features; labels: (N,) integer labels, at least 2 distinct and fewer than N.
    """
    names, labels = labels.unique(return_inverse=True)
    groups, n = names.numel(), z.shape[0]
    if not 2 <= groups <= n - 1:
        raise ValueError(f"silhouette needs 2 to N - 1 labels, got {groups} for N = {n}")
    z = z.double()
    counts = torch.bincount(labels, minlength=groups).double()
    total = torch.zeros((), dtype=torch.float64)
    # A block holds its (rows, N) distances and its (rows, labels) sums.
    for rows in row_blocks(n, 8 * (n + 2 * groups), memory_mb):
        dist = torch.cdist(z[rows], z)
        sums = dist.new_zeros(dist.shape[0], groups).index_add_(1, labels, dist)
        own = labels[rows]
        size = counts[own]
        a = sums.gather(1, own[:, None]).squeeze(1) / (size - 1).clamp_min(1)
        means = sums / counts
        means.scatter_(1, own[:, None], float("inf"))
        b = means.min(dim=1).values
        s = (b - a) / torch.maximum(a, b).clamp_min(1e-300)
        total += torch.where(size > 1, s, torch.zeros_like(s)).sum()
    return total / n


def knn_accuracy(
    z: torch.Tensor,
    target: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    k: int = 50,
    memory_mb: float = DEFAULT_MEMORY_MB,
) -> torch.Tensor:
    """Share of ``z`` whose majority label among its ``k`` cosine-nearest ``bank`` features
    is ``target``; a tie goes to the smallest label, as scikit-learn's vote does.

    Args:
        z: (N, d) queries; target: (N,); bank: (M, d); bank_labels: (M,); k <= M.
    """
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"knn: k = {k} needs 1 to {bank.shape[0]} features in the bank")
    queries, bank = F.normalize(z.double(), dim=1), F.normalize(bank.double(), dim=1)
    classes = int(max(bank_labels.max(), target.max())) + 1
    correct = torch.zeros((), dtype=torch.long)
    for rows in row_blocks(z.shape[0], 8 * (bank.shape[0] + classes), memory_mb):
        near = (queries[rows] @ bank.T).topk(k, dim=1).indices
        votes = torch.zeros(near.shape[0], classes, dtype=torch.long)
        votes.scatter_add_(1, bank_labels[near], torch.ones_like(near))
        correct += (votes.argmax(dim=1) == target[rows]).sum()  # argmax: first of the ties
    return correct.double() / z.shape[0]


def average_precisions(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """(C,) average precision of each column of ``scores`` (N, C) against ``relevant`` (N, C)
    as scikit-learn's ``average_precision_score``: sum over the distinct thresholds of the
    recall gained times the precision there (tied scores enter together); 0 for a column
    with nothing relevant."""
    order = scores.argsort(dim=0, descending=True)
    ranked = scores.gather(0, order).T.contiguous()  # (C, N), descending
    hits = relevant.gather(0, order).T.double()
    found = hits.cumsum(dim=1)
    # The last rank of each sample's tie group: where precision is read for the whole group.
    ascending = (-ranked).contiguous()
    end = torch.searchsorted(ascending, ascending, right=True) - 1
    precision = found.gather(1, end) / (end + 1).double()
    return (hits * precision).sum(dim=1) / hits.sum(dim=1).clamp_min(1)


def prototype_retrieval(
    z: torch.Tensor,
    labels: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    memory_mb: float = DEFAULT_MEMORY_MB,
) -> dict[str, torch.Tensor]:
    """``{"map", "precision", "recall"}`` of retrieval by prototypes (OTCPCC).

    Prototypes are the mean ``bank`` feature of each label present in ``bank_labels``; every
    test sample scores each prototype by cosine similarity. ``map`` is the mean over those
    labels of the average precision of ranking the test samples by that score;
    ``precision`` and ``recall`` are macro averages (over the labels predicted or present)
    of predicting the most similar prototype.

    Args:
        z: (N, d) test features; labels: (N,) their labels at one level; bank: (M, d)
            training features; bank_labels: (M,).
    """
    present, means = class_means(bank.double(), bank_labels)
    index = torch.full((int(max(bank_labels.max(), labels.max())) + 1,), -1, dtype=torch.long)
    index[present] = torch.arange(present.numel())
    prototypes = F.normalize(means, dim=1)
    queries = F.normalize(z.double(), dim=1)
    target = index[labels]  # -1: a label with no prototype, never relevant
    aps, predicted = [], []
    # Blocks of prototypes for the average precisions: (N, block) scores at a time.
    for cols in row_blocks(present.numel(), 8 * 6 * z.shape[0], memory_mb):
        scores = queries @ prototypes[cols].T
        relevant = target[:, None] == torch.arange(cols.start, cols.stop)[None, :]
        aps.append(average_precisions(scores, relevant))
    for rows in row_blocks(z.shape[0], 8 * present.numel(), memory_mb):
        predicted.append((queries[rows] @ prototypes.T).argmax(dim=1))
    prediction = torch.cat(predicted)
    known = target >= 0
    averages = {}
    for name, metric in (("precision", MulticlassPrecision), ("recall", MulticlassRecall)):
        m = metric(present.numel(), average="macro")
        averages[name] = m(prediction[known], target[known])
    return {"map": torch.cat(aps).mean(), **averages}
