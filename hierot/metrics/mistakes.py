"""How bad the mistakes are: the metrics of making-better-mistakes (Bertinetto et al., CVPR
2020) for any ranking of the classes and any cost between them.

Two costs are in use in the field, and every key names its own:
- ``lca``: the height of the lowest common ancestor (siblings 1); making-better-mistakes and
  CRM report this one (``Hierarchy.lca_heights`` or a dataset's own file, ``data.distances``).
- ``path``: the tree path length (siblings 2 on unit weights; ``Hierarchy.tree_distances``),
  hierot's ``mistake_severity`` and ``ahd@k``.
On a tree whose classes all sit at one depth with unit edge weights, path = 2 x lca; on any
other tree the two rank mistakes differently.

All metrics are over every sample given: making-better-mistakes averages batch means with the
last partial batch dropped, which differs in the last digits on a split that batches do not
divide.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hierot.metrics.decoding import DEFAULT_MEMORY_MB, row_blocks

CONVENTIONS = ("lca", "path")


def smallest_costs(
    cost: torch.Tensor, k: int, memory_mb: float = DEFAULT_MEMORY_MB
) -> torch.Tensor:
    """(K, k) the k smallest costs of every row, ascending (the diagonal's 0 first): the best
    ranking a class could get, which hierarchical precision divides by."""
    classes = cost.shape[0]
    k = min(k, cost.shape[1])
    out = torch.empty(classes, k, dtype=cost.dtype, device=cost.device)
    for rows in row_blocks(classes, 2 * cost.shape[1] * cost.element_size(), memory_mb):
        out[rows] = cost[rows].topk(k, dim=1, largest=False).values
    return out


def mistake_metrics(
    top: torch.Tensor,
    target: torch.Tensor,
    cost: torch.Tensor,
    convention: str,
    ks: Sequence[int] = (1, 5),
    memory_mb: float = DEFAULT_MEMORY_MB,
) -> dict[str, torch.Tensor]:
    """The making-better-mistakes table of one ranking under one cost.

    Keys (``c`` the convention, ``k`` each of ``ks``):
    - ``severity_c``: mean cost of the top-1 prediction over the samples it gets wrong.
    - ``hdist_c@k``: mean cost of the k best classes (averaged over them and the samples;
      a correct top-1 counts 0): "average hierarchical distance@k".
    - ``best_c@k``: mean over the samples of the lowest cost among the k best classes.
    - ``hprec_c@k``: hierarchical precision@k, the summed similarities ``1 - cost / max``
      of the k best classes over those of the k most similar classes to each true class.
    - ``hmap_c@k``: the mean of ``hprec_c@j`` for j = 1..k.

    Args:
        top: (N, k_max) ranked class ids, best first (``ranked_classes``), k_max >= max(ks)
            or the number of classes; target: (N,) true classes; cost: (K, K).
    """
    kmax = min(max(ks), top.shape[1])
    cost = cost.to(top.device)
    costs = cost[target[:, None], top[:, :kmax]].double()  # (N, kmax)
    scale = float(cost.max()) or 1.0
    similar = 1 - costs / scale
    best = 1 - smallest_costs(cost, kmax, memory_mb).to(top.device)[target].double() / scale
    # hprec@j for every j at once: cumulative sums over the rank, summed over the samples.
    hprec = similar.sum(0).cumsum(0) / best.sum(0).cumsum(0).clamp_min(1e-12)
    wrong = top[:, 0] != target
    out = {f"severity_{convention}": costs[wrong, 0].sum() / wrong.sum().clamp_min(1)}
    for k in ks:
        j = min(k, kmax)
        out[f"hdist_{convention}@{k}"] = costs[:, :j].mean()
        out[f"best_{convention}@{k}"] = costs[:, :j].min(dim=1).values.mean()
        out[f"hprec_{convention}@{k}"] = hprec[j - 1]
        out[f"hmap_{convention}@{k}"] = hprec[:j].mean()
    return out


def top_k_accuracy(
    top: torch.Tensor, target: torch.Tensor, ks: Sequence[int]
) -> dict[str, torch.Tensor]:
    """``{acc_top<k>: share of samples whose class is among the k best}``."""
    hit = top == target[:, None]
    return {f"acc_top{k}": hit[:, :k].any(dim=1).double().mean() for k in ks}
