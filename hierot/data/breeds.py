"""BREEDS subsets of ImageNet (Santurkar et al., 2021): superclasses of a modified WordNet tree,
each with a fixed sample of its ImageNet classes (its subclasses, hidden subpopulations).

The selection follows the reference implementation, robustness' ``BreedsDatasetGenerator``:
the level of a node is its longest distance from the root in the tree pruned to ancestors of
ImageNet classes; the superclasses are the nodes at ``level`` (under ``ancestor``) with at
least ``subclasses`` ImageNet descendants, in sorted WordNet-id order. Without a split
(``split=None`` there) each keeps ``RandomState(seed).choice(sorted descendants, subclasses,
replace=False)``, drawn in that order from one generator. With ``split="rand"`` (the source
and target domains of the benchmark, which the OT-CPCC paper uses) each superclass first
walks down while it has a single child, then draws ``subclasses`` of the pooled, sorted
ImageNet classes below its children from the same kind of generator and halves them: the
first half is the source domain, the second the target.

The tree above the superclasses is the OT-CPCC authors' (uiuctml/OTCPCC,
``dataset/breeds2/data.py``): a fixed number of edges up ``class_hierarchy.txt``, each child
taking the parent listed last for it, stopping at the root.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hierot.data.folders import FolderDataModule
from hierot.data.module import check_height, check_split
from hierot.errors import DataError
from hierot.hierarchy import Hierarchy

BREEDS_ROOT = "n00001740"  # "entity"
# name: (level, ancestor, subclasses per superclass), as in the BREEDS paper
SUBSETS = {
    "entity13": (3, None, 20),
    "entity30": (4, None, 8),
    "living17": (5, "n00004258", 4),
    "nonliving26": (5, "n00021939", 4),
}
# name: edges from a superclass up to its (mid, coarse) ancestor, as the OT-CPCC authors set
# them (make_levels_edge_mapping(..., 1 or 2) and (..., 2 or 3)).
PAPER_EDGES = {
    "entity13": (1, 2),
    "entity30": (2, 3),
    "living17": (1, 2),
    "nonliving26": (2, 3),
}
# What the fine classes are: the BREEDS superclasses (the benchmark), or the ImageNet classes
# under them (each its own class, superclass -> ImageNet class).
CLASS_KINDS = ("superclass", "subclass")
HEIGHTS = (2, 3)
FILES = ("dataset_class_info.json", "class_hierarchy.txt", "node_names.txt")


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: missing BREEDS hierarchy file")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None


class BreedsTree:
    """The BREEDS files of ``info_dir``: ImageNet classes, WordNet edges and node names."""

    def __init__(self, info_dir: str | Path) -> None:
        info = Path(info_dir).expanduser()
        if not info.is_dir():
            raise DataError(f"data.info_dir: no such folder: {info}")
        path = info / FILES[0]
        try:
            rows = json.loads("\n".join(_read_lines(path)))
            self.leaf_ids = [str(r[1]) for r in rows]
            self.leaf_names = {str(r[1]): str(r[2]) for r in rows}
        except (json.JSONDecodeError, TypeError, IndexError, KeyError) as e:
            raise DataError(
                f"{path}: not a BREEDS class list ([index, wnid, name] rows): {e}"
            ) from None
        path = info / FILES[1]
        self.listed_parent: dict[str, str] = {}
        children: dict[str, set[str]] = defaultdict(set)
        parents: dict[str, set[str]] = defaultdict(set)
        for lineno, line in enumerate(_read_lines(path), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(f"{path}:{lineno}: expected 'parent child', got {line!r}")
            parents[parts[1]].add(parts[0])
            self.listed_parent[parts[1]] = parts[0]  # the last line for a child wins
        self.names = {}
        for line in _read_lines(info / FILES[2]):
            wnid, _, name = line.partition("\t")
            self.names[wnid.strip()] = name.strip()
        # The tree pruned to the ancestors of ImageNet classes (the reference's backward BFS).
        todo = [w for w in self.leaf_ids if w in parents]
        while todo:
            nxt = set()
            for w in todo:
                for p in parents.get(w, ()):
                    children[p].add(w)
                    nxt.add(p)
            todo = list(nxt)
        self.children = {k: sorted(v) for k, v in children.items()}
        self.levels = self._levels()

    def _levels(self) -> dict[str, int]:
        level: dict[str, int] = {}
        todo = [(BREEDS_ROOT, 0)]
        while todo:
            nxt = []
            for node, d in todo:
                level[node] = max(d, level.get(node, d))  # the longest path wins
                nxt += [(c, d + 1) for c in self.children.get(node, ())]
            todo = nxt
        return level

    def leaves_below(self, node: str) -> list[str]:
        """Sorted ImageNet classes under ``node`` (not looking below an ImageNet class)."""
        leaf_set = set(self.leaf_ids)
        found, todo = set(), [node]
        while todo:
            nxt = []
            for w in todo:
                for c in self.children.get(w, ()):
                    (found.add(c) if c in leaf_set else nxt.append(c))
            todo = nxt
        if node in leaf_set:
            found.add(node)
        return sorted(found)

    def descendants(self, node: str) -> set[str]:
        out, todo = {node}, [node]
        while todo:
            todo = [c for w in todo for c in self.children.get(w, ()) if c not in out]
            out.update(todo)
        return out

    def subset(
        self, level: int, ancestor: str | None, subclasses: int, seed: int = 2
    ) -> list[tuple[str, list[str]]]:
        """``[(superclass wnid, [ImageNet wnids])]`` of a BREEDS subset."""
        under = self.descendants(ancestor) if ancestor else None
        nodes = sorted(
            n for n, lv in self.levels.items() if lv == level and (under is None or n in under)
        )
        rng = np.random.RandomState(seed)
        out = []
        for node in nodes:
            leaves = self.leaves_below(node)
            if len(leaves) >= subclasses:
                out.append((node, [str(w) for w in rng.choice(leaves, subclasses, replace=False)]))
        if not out:
            raise DataError(
                f"BREEDS: no superclass at level {level} has {subclasses} ImageNet classes"
            )
        return out

    def split_subset(
        self, level: int, ancestor: str | None, subclasses: int, seed: int = 2
    ) -> list[tuple[str, list[str], list[str]]]:
        """``[(superclass wnid, [source wnids], [target wnids])]``: robustness'
        ``get_superclasses(..., split="rand", balanced=True)``, ``subclasses / 2`` ImageNet
        classes per superclass and domain."""
        if subclasses < 2 or subclasses % 2:
            raise DataError(
                f"data.subclasses: a source/target split halves each superclass's ImageNet "
                f"classes, so it must be even and >= 2, got {subclasses}"
            )
        chosen = self.subset(level, ancestor, subclasses, seed)  # the same superclasses
        rng = np.random.RandomState(seed)
        out = []
        for node, _ in chosen:
            # The first descendant with more than one child (robustness' split_superclass).
            desc = self.children.get(node, [])
            while len(desc) == 1:
                desc = self.children.get(desc[0], [])
            # Pooled with repeats, as there: an ImageNet class under two children counts twice.
            pool = sorted(w for d in desc for w in self.leaves_below(d))
            sel = [str(w) for w in rng.choice(pool, subclasses, replace=False)]
            half = subclasses // 2
            if len(set(sel)) < subclasses:
                raise DataError(
                    f"BREEDS: superclass {node} drew an ImageNet class twice for its split"
                )
            out.append((node, sel[:half], sel[half:]))
        return out

    def ancestor_up(self, node: str, edges: int) -> str:
        """The node ``edges`` steps up the listed parents (the root stays the root)."""
        for _ in range(edges):
            node = self.listed_parent.get(node, node)
        return node

    def label(self, node: str) -> str:
        """``name (wnid)``: readable, and unique where WordNet names repeat."""
        return f"{self.names.get(node, node)} ({node})"


def paper_tree(
    tree: BreedsTree, superclasses: Sequence[str], edges: Sequence[int], height: int
) -> tuple[list[list[str]], list[str]]:
    """Root-to-leaf paths over the superclasses, and the level names (top first): height 2
    is superclass -> coarse, height 3 superclass -> mid -> coarse, the ancestors ``edges``
    = (mid, coarse) steps up. Each level is its own namespace, as the authors' per-level
    label maps are: a WordNet node that is one superclass's mid and another's coarse
    ancestor becomes two nodes, marked with their level."""
    mid_up, coarse_up = edges
    levels = {"coarse": [tree.ancestor_up(s, coarse_up) for s in superclasses]}
    if height == 3:
        levels["mid"] = [tree.ancestor_up(s, mid_up) for s in superclasses]
    levels["class"] = list(superclasses)
    taken: dict[str, str] = {}
    clash = set()
    for level, nodes in levels.items():
        for n in set(nodes):
            if taken.setdefault(n, level) != level:
                clash.add(n)
    labels = {
        level: [tree.label(n) + (f" [{level}]" if n in clash else "") for n in nodes]
        for level, nodes in levels.items()
    }
    paths = [list(p) for p in zip(*labels.values())]
    return paths, [name for name in levels if name != "class"]


def check_choice(
    subset: str, classes: str, height: int, edges: Sequence[int] | None
) -> tuple[int, int]:
    """The BREEDS data options checked against each other (one-line ``DataError``s);
    returns the ``edges`` to use (the paper's for ``subset`` when None)."""
    if subset not in SUBSETS:
        raise DataError(f"data.subset: unknown '{subset}'; available: {', '.join(SUBSETS)}")
    if classes not in CLASS_KINDS:
        raise DataError(f"data.classes: unknown '{classes}'; available: {', '.join(CLASS_KINDS)}")
    check_height(height, HEIGHTS, "BREEDS")
    if classes == "subclass" and height != 2:
        raise DataError(
            "data.height: with data.classes=subclass the tree is superclass -> ImageNet "
            "class (height 2); heights 2 and 3 over the superclasses need "
            "data.classes=superclass"
        )
    edges = tuple(PAPER_EDGES[subset] if edges is None else edges)
    if len(edges) != 2 or not all(isinstance(e, int) and e >= 1 for e in edges):
        raise DataError(
            f"data.edges: expected [mid, coarse], edges up from a superclass (integers "
            f">= 1), got {list(edges)}"
        )
    return edges  # type: ignore[return-value]


class BreedsDataModule(FolderDataModule):
    """A BREEDS subset (``living17``, ``nonliving26``, ``entity13``, ``entity30``) read from an
    ImageNet ``train/`` and ``val/`` tree of ``<wnid>/`` folders, with the BREEDS files in
    ``info_dir``. ImageNet's ``val/`` is the test split; validation is held out from train.

    ``classes="superclass"`` (the benchmark): the classes are the superclasses, each the
    union of its ImageNet classes; ``split="all"`` takes robustness' ``split=None`` draw,
    ``source``/``target`` the two halves of its ``split="rand"`` draw (same labels,
    disjoint subpopulations). The tree over them has ``height`` 2 (superclass -> coarse,
    what the authors' CPCC uses) or 3 (superclass -> mid -> coarse, for transfer at
    ``level=mid``), the ancestors ``edges`` = (mid, coarse) steps up, the paper's per subset
    when None.

    ``classes="subclass"``: every ImageNet class is a class, the tree superclass -> class;
    a split keeps the ImageNet classes of its half (disjoint classes, as CIFAR-100's).

    ``level``, ``ancestor`` ("" for none) and ``subclasses`` build a custom subset the same
    way."""

    def __init__(
        self,
        subset: str = "living17",
        info_dir: str | None = None,
        classes: str = "superclass",
        split: str = "all",
        height: int = 2,
        edges: Sequence[int] | None = None,
        level: int | None = None,
        ancestor: str | None = None,
        subclasses: int | None = None,
        train_split: str = "train",
        test_split: str = "val",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("val_split", None)
        super().__init__(train_split=train_split, test_split=test_split, **kwargs)
        self.split = check_split(split)
        edges = check_choice(subset, classes, height, edges)
        if not info_dir:
            raise DataError("data.info_dir: not set (the folder with the BREEDS hierarchy files)")
        self.info_dir = info_dir
        self.subset_name = subset
        self.class_kind = classes
        self.height = height
        self.edges = edges
        # level / ancestor / subclasses, when set, replace the named subset's own values.
        std_level, std_ancestor, std_n = SUBSETS[subset]
        self.subset_args = (
            std_level if level is None else level,
            std_ancestor if ancestor is None else ancestor or None,
            std_n if subclasses is None else subclasses,
        )

    def read_tree(self) -> Hierarchy:
        """The subset's superclasses and their ImageNet classes, from the BREEDS files, and
        the tree over what ``classes`` makes the classes."""
        tree = BreedsTree(self.info_dir)
        if self.split == "all":
            chosen = tree.subset(*self.subset_args)
        else:
            halves = tree.split_subset(*self.subset_args)
            side = 1 if self.split == "source" else 2
            chosen = [(h[0], h[side]) for h in halves]
        self.superclasses = [(tree.names.get(s, s), s) for s, _ in chosen]
        self.class_names = {w: tree.leaf_names.get(w, w) for _, ws in chosen for w in ws}
        self.only_classes = True
        source = str(Path(self.info_dir) / FILES[1])
        if self.class_kind == "subclass":
            paths = [[tree.label(s), w] for s, ws in chosen for w in ws]
            if self._level_names is None:
                self._level_names = ["superclass"]
            return Hierarchy.from_paths(paths, source=source)
        paths, names = paper_tree(tree, [s for s, _ in chosen], self.edges, self.height)
        hierarchy = Hierarchy.from_paths(paths, source=source)
        # A top level with one node (every superclass under the same coarse ancestor) is the
        # tree's root, not a level.
        kept = hierarchy.depth - 1
        if kept < 1:
            raise DataError(
                f"BREEDS: all {len(chosen)} superclasses of data.subset={self.subset_name} "
                f"share their ancestor {paths[0][0]} ({self.edges[1]} edges up), so the tree "
                "cannot tell them apart; choose other data.edges or another subset"
            )
        self.folders = {w: i for i, (_, ws) in enumerate(chosen) for w in ws}
        if self._level_names is None:
            self._level_names = names[len(names) - kept :]
        return hierarchy

    def description(self) -> dict[str, object]:
        """The folder description (with the ImageNet folders each superclass holds in this
        run, its subpopulations) plus the subset and what its classes are."""
        out = super().description()
        out.update(subset=self.subset_name, classes_are=self.class_kind)
        return out
