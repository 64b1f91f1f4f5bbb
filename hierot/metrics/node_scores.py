"""How good a node prediction is against a sample's true class, and the operating curve of
the threshold rule (Valmadre, NeurIPS 2022; jvlmdr/hiercls ``metrics.py``:
``IsCorrect``, ``LCAMetric``, ``operating_curve``, ``pareto_integrate``).

With ``d`` the depth in edges (the root 0), ``l`` the depth of the lowest common ancestor of
the prediction ``m`` and the true class ``g``, and ``I(n) = log2 K - log2 leaves(n)``:

- ``correct``: ``m`` is ``g`` or one of its ancestors; ``exact``: ``m`` is ``g``.
- ``hprec = l / d(m)``, ``hrec = l / d(g)`` (the shared ancestors, root excluded, as their
  ``DepthMetric``; 0 / 0 is 1), ``hf<beta>`` their F-beta.
- ``info_prec = I(lca) / I(m)``, ``info_rec = I(lca) / I(g)`` (their ``UniformLeafInfoMetric``).
- ``wup = 2 (l + 1) / (d(m) + d(g) + 2)``: Wu-Palmer with the root counted as depth 1 (as
  NLTK's ``wup_similarity``; with edge depths it would equal ``hf1``).
- ``depth``: ``d(m)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hierot.metrics.node_rules import NodeTree

BETAS = (0.5, 1.0, 2.0)
NODE_METRICS = (
    "correct", "exact", "hprec", "hrec", *(f"hf{b:g}" for b in BETAS), "wup", "depth",
    "info_prec", "info_rec",
)  # fmt: skip
# (x, y) of each area under the operating curve: Valmadre's AC(info), AP(info), AC(depth)
CURVE_AREAS = {
    "ac_info": ("info_rec", "correct"),
    "ap_info": ("info_rec", "info_prec"),
    "ac_depth": ("hrec", "correct"),
}


def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0 / 0 = 1 (their ``LCAMetric``'s ``np.where``)."""
    return torch.where(den == 0, torch.ones_like(num), num / torch.where(den == 0, 1, den))


def f_beta(precision: torch.Tensor, recall: torch.Tensor, beta: float) -> torch.Tensor:
    """``(1 + b^2) P R / (b^2 P + R)``, 0 where P = R = 0."""
    den = beta**2 * precision + recall
    return torch.where(den > 0, (1 + beta**2) * precision * recall / den.clamp_min(1e-300), 0)


def node_scores(
    nodes: torch.Tensor, target: torch.Tensor, tree: NodeTree
) -> dict[str, torch.Tensor]:
    """``{metric: float64 tensor}`` (``NODE_METRICS``) of predicting ``nodes`` for samples of
    classes ``target``.

    Args:
        nodes: (B, J) predicted node ids (J candidates per sample); target: (B,) classes.
    """
    device = nodes.device
    ancestors, depth = tree.ancestors.to(device), tree.depth.to(device)
    truth = tree.class_node.to(device)[target][:, None].expand_as(nodes)
    a_m, a_g = ancestors[:, nodes], ancestors[:, truth]  # (D + 1, B, J)
    lca_depth = ((a_m == a_g) & (a_m >= 0))[1:].sum(0)
    lca = ancestors[:, truth].gather(0, lca_depth[None])[0]
    shared, d_m, d_g = lca_depth.double(), depth[nodes].double(), depth[truth].double()
    info = tree.info().to(device)
    out = {
        "correct": ((lca_depth == depth[nodes]) | (lca_depth == depth[truth])).double(),
        "exact": (nodes == truth).double(),
        "hprec": ratio(shared, d_m),
        "hrec": ratio(shared, d_g),
    }
    for beta in BETAS:
        out[f"hf{beta:g}"] = f_beta(out["hprec"], out["hrec"], beta)
    out["wup"] = 2 * (shared + 1) / (d_m + d_g + 2)
    out["depth"] = d_m
    out["info_prec"] = ratio(info[lca], info[nodes])
    out["info_rec"] = ratio(info[lca], info[truth])
    return out


def pareto_intervals(node_probs: torch.Tensor, tree: NodeTree) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)``, (B, M) float64: the threshold rule predicts node j for the thresholds
    ``low <= t < high`` (an empty interval where ``low >= high``): ``high`` is the node's
    probability (+inf at the effective root, always eligible), ``low`` the highest
    probability of the eligible nodes more specific than it (fewer classes; as many and more
    probable; as probable and a lower id). A stable sort by probability then by specificity
    orders them, and a running maximum gives ``low``."""
    device = node_probs.device
    eligible = tree.eligible.to(device)
    p = torch.where(eligible, node_probs, -torch.inf)
    by_p = p.sort(dim=1, descending=True, stable=True).indices
    leaves = tree.leaves.to(device)[by_p]
    order = by_p.gather(1, leaves.sort(dim=1, stable=True).indices)
    ordered = p.gather(1, order)
    before = torch.cat([ordered.new_full((p.shape[0], 1), -torch.inf), ordered[:, :-1]], dim=1)
    low = torch.empty_like(p).scatter_(1, order, before.cummax(dim=1).values)
    high = torch.where(eligible, node_probs, -torch.inf)
    high[:, tree.fallback] = torch.inf
    return low, high


def curve_sums(
    node_probs: torch.Tensor, target: torch.Tensor, tree: NodeTree, thresholds: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``{metric: (T,) float64}``: each ``NODE_METRICS`` summed over the samples of one block,
    every sample predicting ``threshold_nodes`` at each of the ascending ``thresholds``.

    The nodes' ``pareto_intervals``, as ranges of threshold indices, split the thresholds
    among a few nodes per sample: the node predicted at a threshold is the one whose
    non-empty range starts last at or before it (a sort and a batched ``searchsorted``, no
    pass per threshold). Only those few nodes are scored."""
    device = node_probs.device
    thresholds = thresholds.to(device=device, dtype=torch.float64)
    size = thresholds.numel()
    low, high = pareto_intervals(node_probs, tree)
    start = torch.searchsorted(thresholds, low.contiguous())  # first t >= low
    stop = torch.searchsorted(thresholds, high.contiguous())  # first t >= high
    used = start < stop
    first, order = torch.where(used, start, size).sort(dim=1)
    # every threshold belongs to one range, so each row has at least one
    width = int(used.sum(dim=1).max())
    first, order = first[:, :width].contiguous(), order[:, :width]
    at = torch.arange(size, device=device).expand(node_probs.shape[0], size).contiguous()
    position = torch.searchsorted(first, at, right=True) - 1
    scores = node_scores(order, target, tree)
    return {name: value.gather(1, position).sum(0) for name, value in scores.items()}


def pareto_integrate(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The area under the best ``y`` reachable at ``x`` or beyond (their
    ``pareto_integrate``): points sorted by ``x``, ``y`` replaced by its maximum over the
    points at or after it, summed over the steps of ``x`` from 0."""
    order = x.argsort()
    x, y = x[order], y[order]
    best = y.flip(0).cummax(0).values.flip(0)
    steps = x - torch.cat([x.new_zeros(1), x[:-1]])
    return (steps * best).sum()


def curve_areas(
    curve: dict[str, torch.Tensor], areas: Sequence[str] = tuple(CURVE_AREAS)
) -> dict[str, torch.Tensor]:
    """``{name: area}`` of the operating curve (means over the samples per threshold) for
    each of ``areas`` (``CURVE_AREAS``)."""
    return {name: pareto_integrate(curve[CURVE_AREAS[name][0]], curve[CURVE_AREAS[name][1]])
            for name in areas}  # fmt: skip
