"""Predictions that may stop at an inner node of the label tree, read from a classifier's
class probabilities after training (Valmadre, "Hierarchical classification at multiple
operating points", NeurIPS 2022; repository jvlmdr/hiercls: ``infer.py``, ``main.py`` and
``eval_inat21_errorbars.ipynb``).

A node's probability is the summed probability of the classes under it. The rules:

- ``leaf``: the most probable class (their ``leaf``).
- ``majority``: the most specific node whose probability exceeds 0.5 (their
  ``argmax_with_confidence(specificity, p, 0.5, not_trivial)``).
- ``plurality``: the most specific node whose probability exceeds the largest second-best
  child probability of any node with several children (their ``plurality_threshold``); the
  root when none does.
- ``threshold(t)``: the most specific node whose probability exceeds ``t`` (their Pareto
  sequence ``pareto_optimal_predictions`` read at threshold ``t`` on a grid, as their
  ``resample_threshold`` does: a strict ``>``); ``majority`` is ``threshold(0.5)``.
- ``top_down(t)``: from the root, step to the most probable child while its probability
  exceeds ``t`` (``t = 0``: down to a class). Not in their repository; ``top_down(0.5)``
  equals ``majority`` (a child above 0.5 is the most probable one).

"Most specific" is Valmadre's order: fewest classes below the node (their ``specificity``,
``log2 K - log2 leaves``), ties broken by the higher probability, then the lower node id.
A node with exactly one child is never predicted (their ``not_trivial``): its probability
and its classes are its child's. The root (below a chain of one-child nodes: the first node
with several children) is always eligible, so that every rule predicts something even where
rounding puts the root's summed probability below a threshold.

Node ids are ``Hierarchy.nodes``' order. Every function takes a block of rows; the loops run
over the tree's depth, never over samples or nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hierot.hierarchy import Hierarchy

NODE_RULES = ("leaf", "top_down", "majority", "plurality")


@dataclass(frozen=True)
class NodeTree:
    """The label tree as tensors over its M nodes (``Hierarchy.nodes`` order).

    Attributes:
        ancestors: (D + 1, M) long, ``ancestors[l, m]`` the id of m's ancestor at level l
            (m itself at its own level), -1 below m.
        parent: (M,) long, -1 at the root.
        depth: (M,) long, edges from the root.
        leaves: (M,) long, classes below the node (1 at a class).
        class_node: (K,) long, the node id of every class.
        eligible: (M,) bool, the nodes a rule may predict (not exactly one child; the
            effective root ``fallback`` always).
        fallback: the effective root: the root, or the end of its chain of one-child nodes.
        levels: ``levels[l]`` the ids of the nodes at depth l.
    """

    ancestors: torch.Tensor
    parent: torch.Tensor
    depth: torch.Tensor
    leaves: torch.Tensor
    class_node: torch.Tensor
    eligible: torch.Tensor
    fallback: int
    levels: tuple[torch.Tensor, ...]

    @property
    def num_nodes(self) -> int:
        return int(self.parent.numel())

    def info(self) -> torch.Tensor:
        """(M,) float64 information of every node under a uniform class prior,
        ``log2 K - log2 leaves`` (Valmadre's ``specificity``; 0 at the root)."""
        k = self.class_node.numel()
        return torch.log2(torch.tensor(float(k), dtype=torch.float64)) - self.leaves.double().log2()


def node_tree(hierarchy: Hierarchy) -> NodeTree:
    """``hierarchy`` as a ``NodeTree`` (a loop over pairs of levels, none over nodes)."""
    class_nodes = hierarchy.class_nodes()  # (D + 1, K)
    levels, _ = class_nodes.shape
    m = len(hierarchy.nodes)
    ancestors = torch.full((levels, m), -1, dtype=torch.long)
    for deeper in range(levels):
        ids, present = class_nodes[deeper], class_nodes[deeper] >= 0
        for level in range(deeper + 1):
            ancestors[level, ids[present]] = class_nodes[level, present]
    depth = (ancestors >= 0).sum(0) - 1
    parent = torch.where(depth > 0, ancestors.gather(0, (depth - 1).clamp_min(0)[None])[0], -1)
    children = torch.bincount(parent[parent >= 0], minlength=m)
    leaves = torch.bincount(class_nodes[class_nodes >= 0], minlength=m)
    class_node = class_nodes.gather(0, ((class_nodes >= 0).sum(0) - 1)[None])[0]
    # the effective root: down the root's chain of one-child nodes
    chain = (children[ancestors.clamp_min(0)] == 1) & (ancestors >= 0)
    steps = int(chain.long().cumprod(0)[:, class_node[0]].sum())
    fallback = int(ancestors[steps, class_node[0]])
    eligible = children != 1
    eligible[fallback] = True
    return NodeTree(
        ancestors, parent, depth, leaves, class_node, eligible, fallback,
        tuple((depth == level).nonzero()[:, 0] for level in range(levels)),
    )  # fmt: skip


def node_probabilities(probs: torch.Tensor, tree: NodeTree) -> torch.Tensor:
    """(B, M) float64: every node's summed class probability, summed level by level from the
    deepest up, so that a one-child node's probability is its child's exactly.

    Args:
        probs: (B, K) class probabilities (rows summing to 1).
    """
    out = probs.new_zeros(probs.shape[0], tree.num_nodes, dtype=torch.float64)
    out[:, tree.class_node.to(probs.device)] = probs.double()
    parent = tree.parent.to(probs.device)
    for nodes in reversed(tree.levels[1:]):
        nodes = nodes.to(probs.device)
        out.index_add_(1, parent[nodes], out[:, nodes])
    return out


def most_specific(node_probs: torch.Tensor, above: torch.Tensor, tree: NodeTree) -> torch.Tensor:
    """(B,) the most specific eligible node among those ``above`` marks (fewest classes
    below, then the highest probability, then the lowest id; the effective root when none).

    Args:
        node_probs: (B, M) ``node_probabilities``; above: (B, M) bool.
    """
    device = node_probs.device
    ok = above & tree.eligible.to(device)
    ok[:, tree.fallback] = True
    fewest = torch.where(ok, tree.leaves.to(device), tree.class_node.numel() + 1).amin(1)
    tied = ok & (tree.leaves.to(device) == fewest[:, None])
    return torch.where(tied, node_probs, -1.0).argmax(dim=1)


def threshold_nodes(
    node_probs: torch.Tensor, tree: NodeTree, t: float | torch.Tensor
) -> torch.Tensor:
    """(B,) the most specific node whose probability exceeds ``t`` (a number, or (B, 1) one
    per sample)."""
    return most_specific(node_probs, node_probs > t, tree)


def leaf_nodes(node_probs: torch.Tensor, tree: NodeTree) -> torch.Tensor:
    """(B,) the node of the most probable class (the lowest class id on a tie)."""
    class_node = tree.class_node.to(node_probs.device)
    return class_node[node_probs[:, class_node].argmax(dim=1)]


def plurality_threshold(node_probs: torch.Tensor, tree: NodeTree) -> torch.Tensor:
    """(B,) the largest second-best child probability over the nodes with several children
    (Valmadre's ``plurality_threshold``; -inf on a tree without such a node)."""
    device = node_probs.device
    child = (tree.parent >= 0).nonzero()[:, 0].to(device)
    parent = tree.parent.to(device)[child].expand(node_probs.shape[0], -1)
    p = node_probs[:, child]
    best = torch.full_like(node_probs, -torch.inf).scatter_reduce(1, parent, p, "amax")
    at_best = p == best.gather(1, parent)
    # a tie for the best makes it the second best too
    ties = torch.zeros_like(node_probs).scatter_add(1, parent, at_best.double())
    rest = torch.where(at_best, -torch.inf, p)
    second = torch.full_like(node_probs, -torch.inf).scatter_reduce(1, parent, rest, "amax")
    second = torch.where(ties > 1, best, second)
    return second.amax(dim=1)


def plurality_nodes(node_probs: torch.Tensor, tree: NodeTree) -> torch.Tensor:
    """(B,) the most specific node above ``plurality_threshold`` (those nodes form one path
    from the root: two on different branches would make their branches' nodes exceed a
    family's second best)."""
    return threshold_nodes(node_probs, tree, plurality_threshold(node_probs, tree)[:, None])


def top_down_nodes(node_probs: torch.Tensor, tree: NodeTree, t: float = 0.0) -> torch.Tensor:
    """(B,) greedy descent from the effective root: to the most probable child (the lowest
    id on a tie) while its probability exceeds ``t``."""
    device = node_probs.device
    rows, m = node_probs.shape
    child = (tree.parent >= 0).nonzero()[:, 0].to(device)
    parent = tree.parent.to(device)[child].expand(rows, -1)
    p = node_probs[:, child]
    best = torch.full_like(node_probs, -torch.inf).scatter_reduce(1, parent, p, "amax")
    ids = torch.where(p == best.gather(1, parent), child, m)
    best_child = torch.full((rows, m), m, device=device).scatter_reduce(1, parent, ids, "amin")
    current = torch.full((rows,), tree.fallback, dtype=torch.long, device=device)
    for _ in range(len(tree.levels) - 1):
        step = best_child.gather(1, current[:, None])[:, 0]
        move = step < m
        move &= node_probs.gather(1, step.clamp(max=m - 1)[:, None])[:, 0] > t
        current = torch.where(move, step, current)
    return current


def rule_nodes(
    node_probs: torch.Tensor, tree: NodeTree, rule: str, top_down_threshold: float = 0.0
) -> torch.Tensor:
    """(B,) the nodes rule ``rule`` (``NODE_RULES``) predicts."""
    if rule == "leaf":
        return leaf_nodes(node_probs, tree)
    if rule == "top_down":
        return top_down_nodes(node_probs, tree, top_down_threshold)
    if rule == "majority":
        return threshold_nodes(node_probs, tree, 0.5)
    if rule == "plurality":
        return plurality_nodes(node_probs, tree)
    raise ValueError(f"node rule: unknown rule {rule!r}; available: {', '.join(NODE_RULES)}")
