"""What the objectives that score the classes through the tree's nodes share (``yolo``,
``hiercos``): one coordinate per node below the root, and sums along every class's path.

The coordinates are the classes first, in class order (the model's head gives them), then
the inner nodes below the root, level by level (a head of the objective's own gives
those): ``NodeSpace.names``, the order of the labels (``hierot.hierarchy.labels``).
"""

from __future__ import annotations

import torch
from torch import nn

from hierot.hierarchy import Hierarchy
from hierot.hierarchy.labels import label_names


class NodeSpace(nn.Module):
    """The tree's nodes below the root as coordinates, and ``path_sums``: for every class
    the sum of a per-node value over its path (root excluded, the class included), by one
    gather per level: O(B N) for N nodes, where a (K, N) path mask would be O(B K N).

    Buffers (derived from the tree, not saved): ``ids<l>`` the coordinates of level l's
    nodes, ``up<l>`` the slot of each one's parent among level l - 1's (0: the root),
    ``leaf_slots`` where each class sits in the levels' concatenation, ``parent_group``
    the index of every node's parent among the nodes with children (the root 0, then the
    inner nodes in coordinate order) and ``depth`` every node's level.
    """

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__()
        root, leaves = hierarchy.root, hierarchy.leaves
        leaf_set = set(leaves)
        self.names: list[str] = label_names(hierarchy)  # the labels' order
        inner = self.names[len(leaves) :]
        self.num_classes, self.num_inner = len(leaves), len(inner)
        position = {n: i for i, n in enumerate(self.names)}
        depth = [hierarchy.node_depth(n) for n in self.names]
        self.levels = max(depth)
        slot: dict[str, int] = {root: 0}  # a node's slot among its level's nodes
        concatenated = 0
        leaf_slots = [0] * len(leaves)
        for level in range(1, self.levels + 1):
            names = [n for n in self.names if hierarchy.node_depth(n) == level]
            up = [slot[hierarchy.parent(n)] for n in names]  # type: ignore[index]
            for i, n in enumerate(names):
                slot[n] = i
                if n in leaf_set:
                    leaf_slots[position[n]] = concatenated + i
            concatenated += len(names)
            self.register_buffer(f"ids{level}", torch.tensor([position[n] for n in names]),
                                 persistent=False)  # fmt: skip
            self.register_buffer(f"up{level}", torch.tensor(up, dtype=torch.long),
                                 persistent=False)  # fmt: skip
        groups = {root: 0} | {n: i + 1 for i, n in enumerate(inner)}
        parent_group = [groups[hierarchy.parent(n)] for n in self.names]  # type: ignore[index]
        self.num_groups = len(groups)
        self.register_buffer("leaf_slots", torch.tensor(leaf_slots), persistent=False)
        self.register_buffer("parent_group", torch.tensor(parent_group), persistent=False)
        self.register_buffer("depth", torch.tensor(depth), persistent=False)

    @property
    def num_nodes(self) -> int:
        return len(self.names)

    def level_ids(self, level: int) -> torch.Tensor:
        """The coordinates of the nodes of ``level`` (1 .. ``levels``)."""
        return getattr(self, f"ids{level}")

    def path_sums(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` per-node values -> ``(B, K)``: for every class the sum over the nodes
        on its path below the root (the class included)."""
        acc = values.new_zeros(values.shape[0], 1)  # the root's
        parts = []
        for level in range(1, self.levels + 1):
            acc = values[:, getattr(self, f"ids{level}")] + acc[:, getattr(self, f"up{level}")]
            parts.append(acc)
        return torch.cat(parts, 1)[:, self.leaf_slots]

    def path_table(self, hierarchy: Hierarchy) -> torch.Tensor:
        """``(K, depth)`` long: the coordinates of every class's path below the root, top
        first, padded with ``num_nodes`` after a class shallower than the deepest."""
        position = {n: i for i, n in enumerate(self.names)}
        table = torch.full((self.num_classes, self.levels), self.num_nodes, dtype=torch.long)
        for k, leaf in enumerate(hierarchy.leaves):
            path = [position[n] for n in hierarchy.path(leaf)[1:]]
            table[k, : len(path)] = torch.tensor(path)
        return table


def node_coordinates(logits: torch.Tensor, inner: nn.Linear | None, z: torch.Tensor):
    """``(B, N)``: the head's logits (the classes' coordinates) and the inner nodes' from
    the objective's own head on the features, in float32 at least (under mixed precision
    the heads give half-precision values)."""
    x = logits if inner is None else torch.cat([logits, inner(z).to(logits.dtype)], 1)
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
