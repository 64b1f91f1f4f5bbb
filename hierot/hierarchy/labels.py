"""Training labels at any node of the tree below the root, not only at the classes.

A label is an integer: ``0 .. K-1`` the classes (the leaves, in class order), ``K .. N-1``
the inner nodes below the root, level by level (the tree's node order within a level):
``label_names``. A sample labelled ``K + j`` is known only to lie somewhere under that node
(a genus without its species). Everything an objective or metric needs about such labels
is a small tensor per label, built once from the tree, so a training step only gathers
rows by the labels: no value is read on the host.

Each node's classes are one run of a depth-first order of the classes (``depth_first``):
a label's classes are ``lo[y] <= position[k] < hi[y]``, O(N + K) numbers where an (N, K)
membership table would hold 10^8 entries on a tree of 10 000 classes.
"""

from __future__ import annotations

import torch

from hierot.hierarchy.tree import Hierarchy


def label_names(hierarchy: Hierarchy) -> list[str]:
    """Every label's node: the classes in class order, then the inner nodes below the root
    by level (a stable sort: the tree's node order within a level)."""
    leaves = set(hierarchy.leaves)
    inner = sorted(
        (n for n in hierarchy.nodes if n != hierarchy.root and n not in leaves),
        key=hierarchy.node_depth,
    )
    return [*hierarchy.leaves, *inner]


def label_index(hierarchy: Hierarchy) -> dict[str, int]:
    """``{node name: label}`` for every node below the root."""
    return {name: i for i, name in enumerate(label_names(hierarchy))}


def depth_first(hierarchy: Hierarchy) -> tuple[torch.Tensor, torch.Tensor]:
    """``(position, span)``: ``position`` (K,) each class's place in a depth-first order of
    the classes; ``span`` (N, 2) the first and past-the-last place of every label's
    classes (a class: its own place and the next)."""
    index = {name: i for i, name in enumerate(hierarchy.leaves)}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    order: list[int] = []
    stack = [(hierarchy.root, False)]
    while stack:  # iterative: a chain of 10 000 nodes would exhaust recursion
        node, done = stack.pop()
        if done:
            last[node] = len(order)
            continue
        first[node] = len(order)
        if node in index:
            order.append(index[node])
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(hierarchy.children(node)))
    position = torch.empty(len(order), dtype=torch.long)
    position[torch.tensor(order)] = torch.arange(len(order))
    names = label_names(hierarchy)
    span = torch.tensor([[first[n], last[n]] for n in names], dtype=torch.long)
    return position, span


def label_members(hierarchy: Hierarchy) -> torch.Tensor:
    """``(N, K)`` bool: the classes under every label's node (a class: itself). For a
    tree's own use (tables built once); a training step uses ``depth_first``'s spans."""
    position, span = depth_first(hierarchy)
    return (position[None, :] >= span[:, :1]) & (position[None, :] < span[:, 1:])


def label_depths(hierarchy: Hierarchy) -> torch.Tensor:
    """``(N,)`` long: every label's level (1 for the top level)."""
    return torch.tensor([hierarchy.node_depth(n) for n in label_names(hierarchy)])


def label_level_maps(hierarchy: Hierarchy) -> dict[int, torch.Tensor]:
    """``{level: (N,) long}``: every label's concept at each level ``1 .. depth``, as an
    index into ``Hierarchy.level_map(level)``'s names; -1 where a label is an inner node
    above that level (it says nothing there). The first K entries are
    ``Hierarchy.label_maps()``'s (a class shallower than a level is its own concept)."""
    names = label_names(hierarchy)
    k = hierarchy.num_classes
    out = {}
    for level, fine_to_level in hierarchy.label_maps().items():
        concepts = {c: i for i, c in enumerate(hierarchy.level_map(level)[0])}
        inner = [
            concepts[hierarchy.path(n)[level]] if hierarchy.node_depth(n) >= level else -1
            for n in names[k:]
        ]
        out[level] = torch.cat([fine_to_level, torch.tensor(inner, dtype=torch.long)])
    return out


def label_lca_heights(hierarchy: Hierarchy, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(N, K)``: the height (``Hierarchy.node_heights``) of the lowest common ancestor of
    every label's node and every class; the first K rows are ``Hierarchy.lca_heights``. A
    class under an inner node meets it at the node itself; any other class meets every
    class under the node at the same ancestor, so a row is its first class's row with the
    node's own height under the node."""
    heights = hierarchy.lca_heights(torch.float64)
    names = label_names(hierarchy)
    k = hierarchy.num_classes
    position, span = depth_first(hierarchy)
    order = torch.argsort(position)  # the classes in depth-first order
    first_class = order[span[k:, 0]]  # (I,) a class under every inner node
    height = hierarchy.node_heights()
    own = torch.tensor([float(height[n]) for n in names[k:]], dtype=torch.float64)
    under = label_members(hierarchy)[k:]
    inner = torch.where(under, own[:, None], heights[first_class])
    return torch.cat([heights, inner]).to(dtype)


def label_ancestors(hierarchy: Hierarchy) -> torch.Tensor:
    """``(depth + 1, N)`` long: row ``l`` the id (into ``Hierarchy.nodes``) of every label's
    ancestor at level ``l`` (row 0 the root, the label's own node at its level), -1 below
    it; the first K columns are ``Hierarchy.class_nodes``."""
    table = hierarchy._ancestor_ids(label_names(hierarchy))[0]
    return torch.cat(
        [table, table.new_full((hierarchy.depth + 1 - len(table), table.shape[1]), -1)]
    )
