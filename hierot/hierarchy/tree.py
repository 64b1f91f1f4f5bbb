"""A rooted label tree whose leaves are the fine classes, in label order."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike

import torch

from hierot.errors import HierarchyError
from hierot.hierarchy.edge import Edge
from hierot.hierarchy.files import TreeText, read_tree_file

# Name of the root added when the input has several top-level nodes; the angle brackets keep
# it from colliding with a real class or concept name.
VIRTUAL_ROOT = "<root>"


def _prefix(location: str) -> str:
    """``"<location>: "`` to start an error message, or nothing without a location."""
    return f"{location}: " if location else ""


class Hierarchy:
    """A rooted tree; leaves are the fine classes, ``leaves[i]`` is the name of class ``i``.

    Build it with one of the ``from_*`` constructors. Levels are counted from the root
    (level 0) down; ``depth`` is the deepest leaf's level. Leaves may sit at different depths.
    """

    def __init__(
        self,
        edges: Sequence[Edge],
        classes: Sequence[str] | None = None,
        source: str = "",
    ) -> None:
        self.source = source
        prefix = _prefix(source)
        if not edges:
            raise HierarchyError(f"{prefix}empty hierarchy: no edges or leaves")
        parent, weight, first_location, nodes = _parent_map(edges, source)
        root, nodes, parent, weight = _rooted(nodes, parent, weight)
        depth = _depths(nodes, parent, first_location, source)  # raises on a cycle
        self.root: str = root  # type: ignore[assignment]
        children: dict[str, list[str]] = {n: [] for n in nodes}
        for n in nodes:
            if n in parent:
                children[parent[n]].append(n)
        if classes is None:
            leaves = [n for n in nodes if not children[n]]
        else:
            leaves = list(classes)
            dup = _first_duplicate(leaves)
            if dup is not None:
                raise HierarchyError(f"{prefix}class '{dup}' is listed twice in the class order")
            _check_leaves(leaves, children, prefix)
            # Keep only the branches that lead to a listed class.
            keep = set()
            for leaf in leaves:
                cur = leaf
                while cur not in keep:
                    keep.add(cur)
                    if cur == self.root:
                        break
                    cur = parent[cur]
            nodes = {n: None for n in nodes if n in keep}
            children = {n: [c for c in children[n] if c in keep] for n in nodes}

        self._parent = {n: parent[n] for n in nodes if n != self.root}
        self._weight = {n: weight[n] for n in nodes if n != self.root}
        self._children = children
        self._node_depth = {n: depth[n] for n in nodes}
        self.leaves: list[str] = leaves
        self._index = {name: i for i, name in enumerate(leaves)}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_edges(
        cls,
        pairs: Iterable[Sequence],
        classes: Sequence[str] | None = None,
        source: str = "",
    ) -> Hierarchy:
        """Build from ``(parent, child)`` or ``(parent, child, weight)`` pairs (or ``Edge``)."""
        edges = []
        for i, p in enumerate(pairs):
            if isinstance(p, Edge):
                edges.append(p)
                continue
            if len(p) not in (2, 3):
                raise HierarchyError(
                    f"{_prefix(source)}edge #{i} {tuple(p)!r} is not (parent, child[, weight])"
                )
            w = float(p[2]) if len(p) == 3 else 1.0
            edges.append(Edge(str(p[0]), str(p[1]), w))
        for e in edges:
            if VIRTUAL_ROOT in (e.parent, e.child):
                raise HierarchyError(
                    f"{_prefix(e.location or source)}node name '{VIRTUAL_ROOT}' is reserved"
                )
        return cls(edges, classes=classes, source=source)

    @classmethod
    def from_paths(
        cls,
        paths: Iterable[Sequence[str]],
        classes: Sequence[str] | None = None,
        source: str = "",
        locations: Sequence[str] | None = None,
    ) -> Hierarchy:
        """Build from root-to-leaf paths: each path lists the top level first, the leaf last.

        The first element of each path is a top-level concept (not the root); paths of
        different lengths give an unbalanced tree.
        """
        edges: list[Edge] = []
        leaf_location: dict[str, str] = {}
        inner_location: dict[str, str] = {}
        for i, path in enumerate(paths):
            location = locations[i] if locations is not None else ("" if source else f"path #{i}")
            reported = location or source
            names = [str(x).strip() for x in path]
            if not names:
                raise HierarchyError(f"{_prefix(reported)}empty path")
            if any(not n for n in names):
                raise HierarchyError(f"{_prefix(reported)}empty name in path {names!r}")
            leaf = names[-1]
            if leaf in leaf_location:
                raise HierarchyError(
                    f"{_prefix(reported)}duplicate leaf '{leaf}' "
                    f"(also at {leaf_location[leaf] or 'an earlier path'})"
                )
            if leaf in inner_location:
                raise HierarchyError(
                    f"{_prefix(reported)}'{leaf}' is a leaf here but has children at "
                    f"{inner_location[leaf]}"
                )
            for n in names[:-1]:
                if n in leaf_location:
                    raise HierarchyError(
                        f"{_prefix(reported)}'{n}' has children here but is a leaf at "
                        f"{leaf_location[n]}"
                    )
                inner_location.setdefault(n, reported)
            leaf_location[leaf] = reported
            chain = [VIRTUAL_ROOT, *names]
            edges.extend(Edge(p, c, 1.0, location) for p, c in itertools.pairwise(chain))
        return cls(edges, classes=classes, source=source)

    @classmethod
    def from_nested(
        cls,
        tree: Mapping,
        classes: Sequence[str] | None = None,
        source: str = "",
    ) -> Hierarchy:
        """Build from nested dicts; the bottom level may be lists of leaf names.

        ``{"animal": {"dog": ["poodle", "beagle"], "cat": ["lion"]}, "vehicle": ["car"]}``.
        A key whose value is ``None`` or empty is itself a leaf.
        """
        if not isinstance(tree, Mapping):
            raise HierarchyError(
                f"{_prefix(source)}expected a mapping of top-level nodes, got {type(tree).__name__}"
            )
        edges: list[Edge] = []
        leaf_seen: set[str] = set()

        def visit(parent: str, value: object, trail: str) -> None:
            if value is None or (isinstance(value, (Mapping, list)) and not value):
                if parent in leaf_seen:
                    raise HierarchyError(f"{_prefix(source)}duplicate leaf '{parent}' (at {trail})")
                leaf_seen.add(parent)
                return
            if isinstance(value, Mapping):
                for key, sub in value.items():
                    name = _node_name(key, trail, source)
                    edges.append(Edge(parent, name, 1.0, ""))
                    visit(name, sub, f"{trail}/{name}")
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, Mapping):
                        visit(parent, item, trail)
                        continue
                    name = _node_name(item, trail, source)
                    if name in leaf_seen:
                        raise HierarchyError(
                            f"{_prefix(source)}duplicate leaf '{name}' (at {trail}/{name})"
                        )
                    leaf_seen.add(name)
                    edges.append(Edge(parent, name, 1.0, ""))
            else:
                raise HierarchyError(
                    f"{_prefix(source)}node '{parent}' (at {trail}): expected a mapping, a list of "
                    f"leaf names or null, got {type(value).__name__} {value!r}"
                )

        visit(VIRTUAL_ROOT, tree, "")
        return cls(edges, classes=classes, source=source)

    @classmethod
    def from_file(
        cls,
        path: str | PathLike,
        classes: Sequence[str] | None = None,
        format: str | None = None,
    ) -> Hierarchy:
        """Read a hierarchy file: JSON/YAML (nested), CSV/TSV (paths) or an edge list.

        The format follows the extension (``.json``, ``.yaml``/``.yml``, ``.csv``, ``.tsv``;
        anything else is a whitespace ``parent child [weight]`` edge list) unless ``format``
        is given.
        """
        return cls.from_text(read_tree_file(path, format=format), classes=classes)

    @classmethod
    def from_text(cls, text: TreeText, classes: Sequence[str] | None = None) -> Hierarchy:
        """A tree from a parsed hierarchy file (``hierot.hierarchy.files``)."""
        if text.kind == "nested":
            return cls.from_nested(text.nested, classes=classes, source=text.name)
        if text.kind == "paths":
            return cls.from_paths(
                text.paths, classes=classes, source=text.name, locations=text.locations
            )
        return cls.from_edges(text.edges, classes=classes, source=text.name)

    # ------------------------------------------------------------------ queries
    @property
    def num_classes(self) -> int:
        return len(self.leaves)

    def __len__(self) -> int:
        return len(self.leaves)

    def __repr__(self) -> str:
        src = f", source={self.source!r}" if self.source else ""
        return f"Hierarchy(classes={len(self.leaves)}, depth={self.depth}{src})"

    def index(self, name: str) -> int:
        """Class id of leaf ``name``."""
        try:
            return self._index[name]
        except KeyError:
            raise HierarchyError(
                f"{_prefix(self.source)}'{name}' is not a class of the hierarchy"
            ) from None

    def parent(self, node: str) -> str | None:
        return self._parent.get(node)

    def children(self, node: str) -> list[str]:
        return list(self._children[node])

    @property
    def nodes(self) -> list[str]:
        return list(self._children)

    def node_depth(self, node: str) -> int:
        return self._node_depth[node]

    @property
    def leaf_depths(self) -> list[int]:
        return [self._node_depth[n] for n in self.leaves]

    @property
    def depth(self) -> int:
        """Level of the deepest leaf (the root is level 0)."""
        return max(self.leaf_depths)

    @property
    def levels(self) -> list[int]:
        """The levels below the root, ``1 .. depth``; the last one is the fine level."""
        return list(range(1, self.depth + 1))

    def path(self, node: str) -> list[str]:
        """Nodes from the root down to ``node``, both included."""
        out = [node]
        while out[-1] in self._parent:
            out.append(self._parent[out[-1]])
        return out[::-1]

    def ancestors_at(self, level: int) -> list[str]:
        """For every class, its ancestor at ``level`` (the leaf itself if it is shallower)."""
        if not 0 <= level <= self.depth:
            raise HierarchyError(f"level {level} is outside 0..{self.depth}")
        out = []
        for leaf in self.leaves:
            p = self.path(leaf)
            out.append(p[min(level, len(p) - 1)])
        return out

    def level_map(self, level: int) -> tuple[list[str], torch.Tensor]:
        """``(names, fine_to_level)``: the concepts at ``level`` in order of first use by the
        classes, and a ``(K,)`` long tensor mapping each class id to its concept's index."""
        anc = self.ancestors_at(level)
        names = list(dict.fromkeys(anc))
        pos = {n: i for i, n in enumerate(names)}
        return names, torch.tensor([pos[a] for a in anc], dtype=torch.long)

    def label_maps(self) -> dict[int, torch.Tensor]:
        """``{level: fine_to_level}`` for every level ``1 .. depth``."""
        return {lvl: self.level_map(lvl)[1] for lvl in self.levels}

    def edge_weight(self, node: str) -> float:
        """Weight of the edge from ``node`` up to its parent."""
        return self._weight[node]

    def _ancestor_ids(
        self, targets: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """``(anc, w, node_names)`` for ``targets`` (default: the classes): ``anc[l, i]`` the
        id (into ``node_names``, every node) of target ``i``'s ancestor at level ``l``, or -1
        below a shallower target; ``w[l, i]`` the weight of the edge above that ancestor
        (float64, 0 at the root and below the target)."""
        paths = [self.path(t) for t in (self.leaves if targets is None else targets)]
        depth = max(len(p) for p in paths)
        names = list(self._children)
        node_ids = {n: i for i, n in enumerate(names)}
        anc = torch.full((depth, len(paths)), -1, dtype=torch.long)
        w = torch.zeros(depth, len(paths), dtype=torch.float64)
        for i, p in enumerate(paths):
            anc[: len(p), i] = torch.tensor([node_ids[n] for n in p])
            w[1 : len(p), i] = torch.tensor([self._weight[n] for n in p[1:]], dtype=torch.float64)
        return anc, w, names

    @staticmethod
    def _row_blocks(k: int) -> Iterable[tuple[int, int]]:
        # Rows in blocks of ~4M entries, so the temporaries beside a (K, K) result stay
        # about 100 MB whatever K (all rows at once would need several times the result).
        rows = max(1, 2**22 // max(k, 1))
        for start in range(0, k, rows):
            yield start, min(start + rows, k)

    def _path_lengths(self, targets: Sequence[str] | None, dtype: torch.dtype) -> torch.Tensor:
        anc, w, _ = self._ancestor_ids(targets)
        wdepth = w.sum(0)
        k = anc.shape[1]
        out = torch.empty(k, k, dtype=dtype)
        for start, stop in self._row_blocks(k):
            shared = torch.zeros(stop - start, k, dtype=torch.float64)
            for lvl in range(1, anc.shape[0]):
                a = anc[lvl]
                same = (a[start:stop, None] == a[None, :]) & (a[start:stop, None] >= 0)
                shared += same * w[lvl][start:stop, None]
            block = wdepth[start:stop, None] + wdepth[None, :] - 2 * shared
            out[start:stop] = block.to(dtype)
        return out

    def tree_distances(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(K, K)`` matrix of path lengths between classes (sum of edge weights).

        ``t(i, j) = w(i) + w(j) - 2 w(lca(i, j))`` with ``w`` the weighted depth. The weighted
        depth of the LCA is the total weight of the edges the two root paths share, summed
        level by level, so the cost is O(depth * K^2) with no loop over pairs.
        """
        return self._path_lengths(None, dtype)

    def node_distances(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(N, N)`` path lengths between every pair of nodes, in ``nodes`` order (root and
        internal nodes included), as ``tree_distances`` for the classes."""
        return self._path_lengths(self.nodes, dtype)

    def class_nodes(self) -> torch.Tensor:
        """``(depth + 1, K)`` long tensor: row ``l`` holds the id (into ``nodes``) of every
        class's ancestor at level ``l`` (row 0 the root, the last row the deepest classes),
        -1 below a class shallower than ``l``."""
        return self._ancestor_ids()[0]

    def node_heights(self) -> dict[str, int]:
        """``{node: height}``: the number of edges on the longest way down to a leaf (0 at
        the leaves). Edge weights are not counted."""
        heights: dict[str, int] = {}
        for node in sorted(self._children, key=self._node_depth.__getitem__, reverse=True):
            kids = self._children[node]
            heights[node] = 1 + max(heights[c] for c in kids) if kids else 0
        return heights

    def lca_heights(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(K, K)`` heights of the lowest common ancestors (``node_heights``; 0 on the
        diagonal): the mistake measure of Bertinetto et al. (making-better-mistakes), where
        siblings are 1 apart. On a tree whose leaves all sit at one depth with unit weights,
        ``tree_distances() == 2 * lca_heights()``."""
        anc, _, names = self._ancestor_ids()
        heights = self.node_heights()
        height = torch.tensor([heights[n] for n in names], dtype=torch.long)
        k = self.num_classes
        out = torch.empty(k, k, dtype=dtype)
        for start, stop in self._row_blocks(k):
            lca = anc[0][start:stop, None].expand(stop - start, k).clone()
            for lvl in range(1, anc.shape[0]):
                a = anc[lvl]
                same = (a[start:stop, None] == a[None, :]) & (a[start:stop, None] >= 0)
                lca = torch.where(same, a[start:stop, None], lca)
            out[start:stop] = height[lca].to(dtype)
        return out

    def parent_map(self) -> torch.Tensor:
        """``(K,)`` long tensor: the parent of every class, as an index into the distinct
        parents in order of first use (classes with one parent share an index)."""
        parents = [self._parent.get(leaf, leaf) for leaf in self.leaves]
        pos = {n: i for i, n in enumerate(dict.fromkeys(parents))}
        return torch.tensor([pos[p] for p in parents], dtype=torch.long)

    def to_nested(self) -> dict[str, object]:
        """The tree as nested dicts that ``from_nested`` (and ``from_file`` on a ``.json``
        or ``.yaml`` file) reads back: a node's children as a list of names when all are
        leaves, else a mapping (a leaf's value ``None``). Siblings are ordered by the
        smallest class id below them, so that a tree whose subtrees hold consecutive class
        ids reads back with the same ids; pass ``classes=`` to restore any other order.
        Edge weights are not part of the format (see ``edge_list``)."""
        first: dict[str, int] = {}
        for i, leaf in enumerate(self.leaves):
            for node in self.path(leaf):
                first.setdefault(node, i)

        def below(node: str) -> object:
            kids = sorted(self._children[node], key=lambda n: first[n])
            if not kids:
                return None
            if all(not self._children[k] for k in kids):
                return list(kids)
            return {k: below(k) for k in kids}

        root = self.path(self.leaves[0])[0]
        nested = below(root)
        if root != VIRTUAL_ROOT:
            return {root: nested}
        return nested if isinstance(nested, dict) else dict.fromkeys(nested)  # type: ignore[arg-type]

    def edge_list(self) -> str:
        """``parent child weight`` lines (the edge-list format ``from_file`` reads), which
        keep edge weights; the top-level nodes hang under ``VIRTUAL_ROOT``'s name."""
        return "".join(
            f"{p} {c} {self._weight[c]:g}\n" for c, p in self._parent.items() if p != VIRTUAL_ROOT
        )

    @property
    def unit_weights(self) -> bool:
        return all(w == 1.0 for w in self._weight.values())

    def check_classes(self, names: Iterable[str]) -> None:
        """Raise ``HierarchyError`` naming the dataset classes that are not leaves of the tree."""
        _check_leaves(list(names), self._children, _prefix(self.source), self.leaves)

    def with_classes(self, names: Sequence[str]) -> Hierarchy:
        """The same tree restricted to ``names`` (all leaves), with class ``i`` = ``names[i]``."""
        edges = [Edge(self._parent[n], n, self._weight[n]) for n in self._parent]
        return Hierarchy(edges, classes=names, source=self.source)


def _parent_map(
    edges: Sequence[Edge], source: str
) -> tuple[dict[str, str], dict[str, float], dict[str, str], dict[str, None]]:
    """``(parent, weight, first_first_location, nodes)`` of checked edges: named nodes, no self
    loops, positive weights, one parent per node; ``nodes`` is an insertion-ordered set."""
    parent: dict[str, str] = {}
    weight: dict[str, float] = {}
    first_location: dict[str, str] = {}
    nodes: dict[str, None] = {}
    for e in edges:
        if not e.parent or not e.child:
            raise HierarchyError(f"{_prefix(e.location or source)}empty node name")
        if e.parent == e.child:
            raise HierarchyError(
                f"{_prefix(e.location or source)}cycle: node '{e.child}' is its own parent"
            )
        if not e.weight > 0:
            raise HierarchyError(
                f"{_prefix(e.location or source)}edge '{e.parent}' -> '{e.child}' has weight "
                f"{e.weight}; weights must be positive"
            )
        old = parent.get(e.child)
        if old is not None and old != e.parent:
            first = f" (first at {first_location[e.child]})" if first_location[e.child] else ""
            raise HierarchyError(
                f"{_prefix(e.location or source)}node '{e.child}' has two parents: "
                f"{_show(old)}{first} and {_show(e.parent)}"
            )
        parent[e.child] = e.parent
        weight[e.child] = float(e.weight)
        first_location.setdefault(e.child, e.location)
        nodes.setdefault(e.parent)
        nodes.setdefault(e.child)
    return parent, weight, first_location, nodes


def _depths(
    nodes: dict[str, None], parent: dict[str, str], first_location: dict[str, str], source: str
) -> dict[str, int]:
    """Depth of every node below its root; a node that cannot reach a root by following
    parents lies on a cycle, which is an error naming it."""
    depth: dict[str, int] = {n: 0 for n in nodes if n not in parent}
    for n in nodes:
        chain = []
        cur = n
        while cur not in depth:
            if cur in chain:
                loop = [*chain[chain.index(cur) :], cur]
                raise HierarchyError(
                    f"{_prefix(first_location.get(cur, '') or source)}cycle: "
                    + " -> ".join(f"'{c}'" for c in reversed(loop))
                )
            chain.append(cur)
            cur = parent[cur]
        for c in reversed(chain):
            depth[c] = depth[parent[c]] + 1
    return depth


def _rooted(
    nodes: dict[str, None], parent: dict[str, str], weight: dict[str, float]
) -> tuple[str | None, dict[str, None], dict[str, str], dict[str, float]]:
    """``(root, nodes, parent, weight)`` of the tree with one root: several top-level nodes
    get a ``VIRTUAL_ROOT`` above them, and a virtual root (from the path constructors) above
    one top-level concept with children gives way to that concept. New mappings; the
    arguments are left as they are. The root is None when every node has a parent (a
    cycle, which ``_depths`` names)."""
    roots = [n for n in nodes if n not in parent]
    if not roots:
        return None, nodes, parent, weight
    if len(roots) > 1:
        parent = {**parent, **dict.fromkeys(roots, VIRTUAL_ROOT)}
        weight = {**weight, **dict.fromkeys(roots, 1.0)}
        nodes = dict.fromkeys([VIRTUAL_ROOT, *nodes])
        roots = [VIRTUAL_ROOT]
    root = roots[0]
    top = [n for n in nodes if parent.get(n) == root]
    if root == VIRTUAL_ROOT and len(top) == 1 and any(parent.get(n) == top[0] for n in nodes):
        # A single top-level concept is the root itself; no need for an artificial one.
        nodes = {n: None for n in nodes if n != VIRTUAL_ROOT}
        parent = {c: p for c, p in parent.items() if c != top[0]}
        weight = {c: w for c, w in weight.items() if c != top[0]}
        root = top[0]
    return root, nodes, parent, weight


def _first_duplicate(names: Sequence[str]) -> str | None:
    seen = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return None


def _check_leaves(
    names: list[str],
    children: Mapping[str, list[str]],
    prefix: str,
    leaves: Sequence[str] | None = None,
) -> None:
    """A one-line error (starting with ``prefix``) naming the ``names`` that are not
    leaves: absent from the tree, or inner nodes."""
    leaf_set = set(leaves) if leaves is not None else {n for n, c in children.items() if not c}
    missing = [n for n in names if n not in leaf_set]
    if not missing:
        return
    inner = [n for n in missing if n in children]
    absent = [n for n in missing if n not in children]
    parts = []
    if absent:
        shown = ", ".join(f"'{n}'" for n in absent[:5])
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        parts.append(f"class {shown}{more} not found in the hierarchy")
    if inner:
        shown = ", ".join(f"'{n}'" for n in inner[:5])
        parts.append(f"{shown} is an inner node, not a leaf")
    raise HierarchyError(prefix + "; ".join(parts))


def _node_name(value: object, trail: str, source: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise HierarchyError(
            f"{_prefix(source)}under '{trail or '/'}': node name must be a string, got "
            f"{type(value).__name__} {value!r}"
        )
    name = str(value).strip()
    if not name:
        raise HierarchyError(f"{_prefix(source)}under '{trail or '/'}': empty node name")
    return name


def _show(node: str) -> str:
    return "the top level" if node == VIRTUAL_ROOT else f"'{node}'"


def read_hierarchy(
    path: str | PathLike, classes: Sequence[str] | None = None, format: str | None = None
) -> Hierarchy:
    """``Hierarchy.from_file``: read ``path`` into a ``Hierarchy``; every problem is a
    one-line ``HierarchyError``."""
    return Hierarchy.from_file(path, classes=classes, format=format)
