"""BREEDS subsets of ImageNet (Santurkar et al., 2021): superclasses of a modified WordNet tree,
each with a fixed sample of its ImageNet classes.

The selection follows the reference implementation (robustness' ``BreedsDatasetGenerator``
with ``split=None``): the level of a node is its longest distance from the root in the tree
pruned to ancestors of ImageNet classes; the superclasses are the nodes at ``level`` (under
``ancestor``) with at least ``subclasses`` ImageNet descendants, in sorted WordNet-id order;
each keeps ``numpy.random.RandomState(seed).choice(sorted descendants, subclasses,
replace=False)``, drawn in that order from one generator.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from hierot.data.folders import FolderDataModule
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
        children: dict[str, set[str]] = defaultdict(set)
        parents: dict[str, set[str]] = defaultdict(set)
        for lineno, line in enumerate(_read_lines(path), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(f"{path}:{lineno}: expected 'parent child', got {line!r}")
            parents[parts[1]].add(parts[0])
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


class BreedsDataModule(FolderDataModule):
    """A BREEDS subset (``living17``, ``nonliving26``, ``entity13``, ``entity30``) read from an
    ImageNet ``train/`` and ``val/`` tree of ``<wnid>/`` folders, with the BREEDS files in
    ``info_dir``. Fine classes are the chosen ImageNet classes (superclass by superclass); the
    tree is superclass -> class. ImageNet's ``val/`` is the test split; validation is held out
    from train. ``level``, ``ancestor`` ("" for none) and ``subclasses`` build a custom subset
    the same way."""

    def __init__(
        self,
        subset: str = "living17",
        info_dir: str | None = None,
        level: int | None = None,
        ancestor: str | None = None,
        subclasses: int | None = None,
        train_split: str = "train",
        test_split: str = "val",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("val_split", None)
        super().__init__(train_split=train_split, test_split=test_split, **kwargs)
        if subset not in SUBSETS:
            raise DataError(f"data.subset: unknown '{subset}'; available: {', '.join(SUBSETS)}")
        if not info_dir:
            raise DataError("data.info_dir: not set (the folder with the BREEDS hierarchy files)")
        tree = BreedsTree(info_dir)
        # level / ancestor / subclasses, when set, replace the named subset's own values.
        std_level, std_ancestor, std_n = SUBSETS[subset]
        chosen = tree.subset(
            std_level if level is None else level,
            std_ancestor if ancestor is None else ancestor or None,
            std_n if subclasses is None else subclasses,
        )
        self.superclasses = [(tree.names.get(s, s), s) for s, _ in chosen]
        paths = [[f"{tree.names.get(s, s)} ({s})", w] for s, ws in chosen for w in ws]
        self.hierarchy = Hierarchy.from_paths(paths, source=str(Path(info_dir) / FILES[1]))
        self.class_names = {w: tree.leaf_names.get(w, w) for _, ws in chosen for w in ws}
        self.only_classes = True
        if self.level_names is None:
            self.level_names = ["superclass"]
