"""Valmadre's node predictions and their metrics ("Hierarchical classification at multiple
operating points", NeurIPS 2022; repository jvlmdr/hiercls), transcribed one sample at a
time in numpy float64, the tree read from ``Hierarchy``'s names (not ``NodeTree``):

- ``infer.py``: ``argmax_where``, ``arglexmin_where``, ``argmax_with_confidence``,
  ``pareto_optimal_predictions``, ``plurality_threshold``, as they are.
- ``eval_inat21_errorbars.ipynb``: the rules ``leaf``, ``majority`` and ``plurality``
  (``infer_fns``); the Pareto sequences, ``metrics.operating_curve`` and the resampling on
  ``np.linspace(0, 1, n)`` (``resample_threshold``) of ``assess_predictions`` and its loop.
- ``metrics.py``: ``IsCorrect``, ``LCAMetric`` (``DepthMetric``, ``UniformLeafInfoMetric``)
  precision and recall, ``pareto_integrate``.

Not in their repository, written here from their definitions: ``top_down_reference`` (a
greedy descent), F-beta for beta other than 1 and Wu-Palmer (root at depth 1).
"""

from __future__ import annotations

import math

import numpy as np

from hierot.hierarchy import Hierarchy


class RefTree:
    """Valmadre's ``hier.Hierarchy`` queries on a ``Hierarchy``, node ids in ``nodes`` order."""

    def __init__(self, hierarchy: Hierarchy) -> None:
        self.names = hierarchy.nodes
        index = {name: i for i, name in enumerate(self.names)}
        self.paths = [[index[n] for n in hierarchy.path(name)] for name in self.names]
        self.children = {
            i: [index[c] for c in hierarchy.children(n)] for i, n in enumerate(self.names)
        }
        self.class_node = [index[leaf] for leaf in hierarchy.leaves]
        self.root = self.paths[0][0]
        under = [
            [k for k, c in enumerate(self.class_node) if i in self.paths[c]]
            for i in range(len(self.names))
        ]
        self.under = under
        self.num_leaf_descendants = np.array([len(u) for u in under])
        self.num_children = np.array([len(self.children[i]) for i in range(len(self.names))])
        self.depths = np.array([len(p) - 1 for p in self.paths])
        self.is_leaf = np.array([i in self.class_node for i in range(len(self.names))])
        self.is_root = np.arange(len(self.names)) == self.root
        # the notebook's specificity and not_trivial
        self.specificity = np.log2(len(self.class_node)) - np.log2(self.num_leaf_descendants)
        self.not_trivial = self.num_children != 1

    def node_probs(self, probs: np.ndarray) -> np.ndarray:
        """Every node's probability: its classes' probabilities summed exactly (fsum)."""
        return np.array([math.fsum(probs[k] for k in u) for u in self.under])

    def lca(self, a: int, b: int) -> int:
        common = [x for x, y in zip(self.paths[a], self.paths[b], strict=False) if x == y]
        return common[-1]


# ---------------------------------------------------------------- infer.py, as it is
def argmax_where(value, condition, axis=-1):
    return np.nanargmax(np.where(condition, value, np.nan), axis=axis)


def arglexmin_where(keys, condition, axis=-1):
    assert np.all(np.any(condition, axis=axis)), "require at least one valid element"
    order = np.lexsort(keys, axis=axis)
    first_valid = np.expand_dims(
        np.argmax(np.take_along_axis(condition, order, axis=axis), axis=axis), axis
    )
    return np.squeeze(np.take_along_axis(order, first_valid, axis=axis), axis=axis)


def argmax_with_confidence(value, p, threshold, condition=None):
    mask = p > threshold
    if condition is not None:
        mask = mask & condition
    return arglexmin_where(np.broadcast_arrays(-p, -value), mask)


def pareto_optimal_predictions(info, prob, min_threshold=None, condition=None):
    is_valid = np.ones(prob.shape, dtype=bool)
    if min_threshold is not None:
        is_valid = is_valid & (prob > min_threshold)
    if condition is not None:
        is_valid = is_valid & condition
    assert np.any(is_valid), "require at least one valid element"
    prob = prob[is_valid]
    info = info[is_valid]
    (valid_inds,) = np.nonzero(is_valid)
    order = np.lexsort((-info, -prob))
    prob = prob[order]
    info = info[order]
    max_info = np.maximum.accumulate(info)
    keep = (prob[1:] > prob[:-1]) | (info[1:] > max_info[:-1])
    keep = np.concatenate(([True], keep))
    return valid_inds[order[keep]]


def plurality_threshold(tree: RefTree, p):
    top2_inds = {
        u: np.array(inds)[np.argsort(p[..., inds], axis=-1)[..., -2:]]
        for u, inds in tree.children.items()
        if len(inds) > 1
    }
    top2_values = np.stack(
        [np.take_along_axis(p, ind, axis=-1) for ind in top2_inds.values()], axis=-1
    )
    return np.max(top2_values, axis=-1)[..., -2]


# ---------------------------------------------------------------- the notebook's rules
def leaf_reference(tree: RefTree, p: np.ndarray) -> int:
    return int(argmax_where(p, tree.is_leaf))


def majority_reference(tree: RefTree, p: np.ndarray) -> int:
    return int(argmax_with_confidence(tree.specificity, p, 0.5, tree.not_trivial))


def plurality_reference(tree: RefTree, p: np.ndarray) -> int:
    above = (p > plurality_threshold(tree, p)) | tree.is_root
    return int(argmax_where(tree.specificity, tree.not_trivial & above))


def top_down_reference(tree: RefTree, p: np.ndarray, t: float = 0.0) -> int:
    """Not theirs: from the root, the most probable child (lowest id on a tie) while its
    probability exceeds ``t``."""
    node = tree.root
    while tree.children[node]:
        best = min(tree.children[node], key=lambda c: (-p[c], c))
        if not p[best] > t:
            break
        node = best
    return node


# ---------------------------------------------------------------- metrics.py
def scores_reference(tree: RefTree, gt: int, pr: int) -> dict[str, float]:
    """Every metric of predicting node ``pr`` for a sample of node ``gt``."""
    lca = tree.lca(gt, pr)

    def recall(value):  # LCAMetric.recall / precision
        return 1.0 if value[lca] == 0 and value[gt] == 0 else value[lca] / value[gt]

    def precision(value):
        return 1.0 if value[lca] == 0 and value[pr] == 0 else value[lca] / value[pr]

    out = {
        "correct": float(lca == gt or lca == pr),  # IsCorrect
        "exact": float(pr == gt),
        "hprec": precision(tree.depths),
        "hrec": recall(tree.depths),
    }
    p, r = out["hprec"], out["hrec"]
    for beta in (0.5, 1.0, 2.0):
        # 1 / F = (1 / (1 + b^2)) / P + (b^2 / (1 + b^2)) / R; their f1 is 2 / (1/r + 1/p)
        inv = (1 / (1 + beta**2)) * (math.inf if p == 0 else 1 / p) + (beta**2 / (1 + beta**2)) * (
            math.inf if r == 0 else 1 / r
        )
        out[f"hf{beta:g}"] = 0.0 if inv == math.inf else 1 / inv
    out["wup"] = 2 * (tree.depths[lca] + 1) / (tree.depths[pr] + 1 + tree.depths[gt] + 1)
    out["depth"] = float(tree.depths[pr])
    out["info_prec"] = precision(tree.specificity)
    out["info_rec"] = recall(tree.specificity)
    return out


def operating_curve(example_scores, example_metrics):
    """metrics.operating_curve, as it is."""
    for seq in example_scores:
        if not np.all(np.diff(seq) <= 0):
            raise ValueError("scores must be strictly descending", seq)
    step_scores = np.concatenate([seq[1:] for seq in example_scores])
    step_order = np.argsort(-step_scores)
    step_scores = step_scores[step_order]
    n = len(step_scores)
    _, first_index = np.unique(-step_scores, return_index=True)
    group_scores = step_scores[first_index]
    last_index = np.concatenate((first_index[1:], [n])) - 1
    group_totals = {}
    for field, example_values in example_metrics.items():
        example_values = [seq.astype(float) for seq in example_values]
        total_init = np.sum([seq[0] for seq in example_values])
        total_deltas = np.concatenate([np.diff(seq) for seq in example_values])[step_order]
        group_totals[field] = np.concatenate(
            ([total_init], total_init + np.cumsum(total_deltas)[last_index])
        )
    return group_scores, group_totals


def curve_reference(tree: RefTree, probs: np.ndarray, target: np.ndarray, points: int):
    """The notebook's operating curve: per sample, its Pareto sequence scored at every
    element, merged by ``operating_curve``, then each mean read at ``np.linspace(0, 1,
    points)`` as ``resample_threshold`` reads it. Returns ``{metric: (points,)}``,
    ascending thresholds."""
    prob_seqs, metric_seqs = [], {}
    for p, y in zip(probs, target, strict=True):
        nodes = tree.node_probs(p)
        seq = pareto_optimal_predictions(tree.specificity, nodes, None, tree.not_trivial)
        prob_seqs.append(nodes[seq])
        gt = tree.class_node[int(y)]
        for pr in seq:
            for name, value in scores_reference(tree, gt, int(pr)).items():
                metric_seqs.setdefault(name, [[] for _ in probs])[len(prob_seqs) - 1].append(value)
    metric_seqs = {k: [np.array(v) for v in seqs] for k, seqs in metric_seqs.items()}
    scores, totals = operating_curve(prob_seqs, metric_seqs)
    grid = np.linspace(0, 1, points)
    return {k: v[np.searchsorted(-scores, -grid)] / len(probs) for k, v in totals.items()}


def pareto_integrate(a: np.ndarray, b: np.ndarray) -> float:
    """metrics.pareto_integrate, as it is."""
    assert np.all((0 <= a) & (a <= 1))
    assert np.all((0 <= b) & (b <= 1))
    order = np.argsort(a)
    a = a[order]
    b = b[order]
    b = np.flip(np.maximum.accumulate(np.flip(b)))
    da = a - np.concatenate(([0.0], a[:-1]))
    return float(np.sum(da * b))
