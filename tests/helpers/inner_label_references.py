"""Losses for training labels at inner nodes, from their definitions, one sample at a time
over root paths (no reference repository has them: making-better-mistakes issue #8 asks for
samples labelled only to a genus). A label is a node name; ``label_names`` orders them.

- ``marginal_ce_reference``: ``-log sum_{k under the node} softmax(logits)_k``.
- ``hxe_node_reference``: ``-sum_{C on the path from the node up, root excluded}
  lambda(C) log(P(C) / P(parent C))``, P a node's summed class probability, P(root) = 1,
  lambda(C) = exp(-alpha depth(C)) (divided by its sum over every node with ``normalize``).
- ``soft_labels_node_reference``: ``KL(q || softmax(logits))`` with ``q_i`` proportional to
  ``exp(-beta h(lca(i, node)) / h_max)``, h a node's height, h_max over pairs of classes.
- ``marginal_node_reference``: ``-sum_l w_l log P(a_l)``, P a node's summed class
  probability, a_l the label's ancestor at level l: the levels ``1 .. d`` of a node at
  level d (itself at d); a class's every level ``1 .. depth``, itself below its own.
- ``mtl_node_reference``: ``sum_l w_l CE(level head l, a_l)`` over the same levels, the
  classes' level scored by the fine logits (a class label only).
- ``cpcc_reference``: CPCC with l2 between the mean features of the points, against path
  lengths: the classes (a sample labelled at an inner node left out), or every node with
  a sample at or below it (each sample in its label's node and every ancestor's).
"""

from __future__ import annotations

import itertools
import math

import torch

from hierot.hierarchy import Hierarchy


def _height(hierarchy: Hierarchy, node: str) -> int:
    kids = hierarchy.children(node)
    return 1 + max(_height(hierarchy, c) for c in kids) if kids else 0


def _classes_under(hierarchy: Hierarchy, node: str) -> list[int]:
    return [k for k, leaf in enumerate(hierarchy.leaves) if node in hierarchy.path(leaf)]


def _lca(hierarchy: Hierarchy, a: str, b: str) -> str:
    pa, pb = hierarchy.path(a), hierarchy.path(b)
    return [x for x, y in zip(pa, pb) if x == y][-1]


def marginal_ce_reference(
    hierarchy: Hierarchy, logits: torch.Tensor, labels: list[str]
) -> torch.Tensor:
    terms = []
    for b, node in enumerate(labels):
        p = torch.softmax(logits[b], 0)
        terms.append(-torch.log(sum(p[k] for k in _classes_under(hierarchy, node))))
    return torch.stack(terms).mean()


def hxe_node_reference(
    hierarchy: Hierarchy, logits: torch.Tensor, labels: list[str], alpha: float, normalize: bool
) -> torch.Tensor:
    weight = {n: math.exp(-alpha * hierarchy.node_depth(n)) for n in hierarchy.nodes}
    if normalize:
        total = math.fsum(weight.values())
        weight = {n: w / total for n, w in weight.items()}
    terms = []
    for b, node in enumerate(labels):
        p = torch.softmax(logits[b], 0)

        def prob(n: str, p: torch.Tensor = p) -> torch.Tensor:
            return sum(p[k] for k in _classes_under(hierarchy, n))

        path = hierarchy.path(node)
        loss = logits.new_zeros(())
        for parent, child in itertools.pairwise(path):
            above = prob(parent) if parent != hierarchy.root else 1.0
            loss = loss - weight[child] * torch.log(prob(child) / above)
        terms.append(loss)
    return torch.stack(terms).mean()


def soft_labels_node_reference(
    hierarchy: Hierarchy, logits: torch.Tensor, labels: list[str], beta: float
) -> torch.Tensor:
    leaves = hierarchy.leaves
    h_max = max(_height(hierarchy, _lca(hierarchy, a, b)) for a in leaves for b in leaves)
    terms = []
    for b, node in enumerate(labels):
        h = torch.tensor(
            [_height(hierarchy, _lca(hierarchy, leaf, node)) for leaf in leaves],
            dtype=logits.dtype,
        )
        q = torch.softmax(-beta * h / h_max, 0)
        log_p = torch.log_softmax(logits[b], 0)
        terms.append((q * torch.log(q) - q * log_p).sum())
    return torch.stack(terms).mean()


def _level_ancestors(hierarchy: Hierarchy, node: str) -> dict[int, str]:
    """``{level: ancestor}`` of the levels a label has a term at: ``1 .. d`` for an inner
    node of level d; every level for a class, the class itself below its depth."""
    path = hierarchy.path(node)
    depth = len(path) - 1
    if node not in hierarchy.leaves:
        return {level: path[level] for level in range(1, depth + 1)}
    return {level: path[min(level, depth)] for level in range(1, hierarchy.depth + 1)}


def marginal_node_reference(
    hierarchy: Hierarchy, logits: torch.Tensor, labels: list[str], weights: list[float]
) -> torch.Tensor:
    terms = []
    for b, node in enumerate(labels):
        p = torch.softmax(logits[b], 0)
        loss = logits.new_zeros(())
        for level, a in _level_ancestors(hierarchy, node).items():
            prob = sum(p[k] for k in _classes_under(hierarchy, a))
            loss = loss - weights[level - 1] * torch.log(prob)
        terms.append(loss)
    return torch.stack(terms).mean()


def mtl_node_reference(
    hierarchy: Hierarchy,
    logits: torch.Tensor,
    labels: list[str],
    level_logits: dict[int, torch.Tensor],
    weights: list[float],
) -> torch.Tensor:
    """``level_logits[l]`` (B, concepts of level l, as ``Hierarchy.level_map(l)`` names
    them): the heads of the levels above the classes; ``logits`` the classes'."""
    depth = hierarchy.depth
    terms = []
    for b, node in enumerate(labels):
        loss = logits.new_zeros(())
        for level, a in _level_ancestors(hierarchy, node).items():
            if level == depth:  # the classes' level: a class label's own class
                scores, target = logits[b], hierarchy.leaves.index(a)
            else:
                scores, target = level_logits[level][b], hierarchy.level_map(level)[0].index(a)
            loss = loss - weights[level - 1] * torch.log_softmax(scores, 0)[target]
        terms.append(loss)
    return torch.stack(terms).mean()


def _path_length(hierarchy: Hierarchy, a: str, b: str) -> float:
    top = _lca(hierarchy, a, b)

    def up(n: str) -> float:
        total = 0.0
        while n != top:
            total += hierarchy.edge_weight(n)
            n = hierarchy.parent(n)  # type: ignore[assignment]
        return total

    return up(a) + up(b)


def cpcc_reference(
    hierarchy: Hierarchy, z: torch.Tensor, labels: list[str], all_nodes: bool
) -> torch.Tensor:
    """Pearson's r between the l2 distances of the points' mean features and their path
    lengths, over the pairs of points present."""
    members: dict[str, list[int]] = {}
    for b, node in enumerate(labels):
        if all_nodes:
            for n in hierarchy.path(node):
                members.setdefault(n, []).append(b)
        elif node in hierarchy.leaves:
            members.setdefault(node, []).append(b)
    points = sorted(members, key=hierarchy.nodes.index)
    means = [z[members[n]].mean(0) for n in points]
    x, t = [], []
    for i in range(len(points)):
        for j in range(i + 1, len(points)):
            x.append(torch.linalg.vector_norm(means[i] - means[j]))
            t.append(_path_length(hierarchy, points[i], points[j]))
    x = torch.stack(x)
    t = torch.tensor(t, dtype=z.dtype)
    xc, tc = x - x.mean(), t - t.mean()
    return (xc * tc).sum() / (xc.norm() * tc.norm())
