"""HAF's 5-level CIFAR-100 tree (Garg et al., ECCV 2022; github.com/07Agarg/HAF, also
Hier-COS's ``cifar-l5``): the 100 classes under CIFAR-100's 20 superclasses, grouped further
into 8, 4 and 2 nodes. The grouping above the superclasses is the authors' choice, not a fact
of the dataset, and their repository has no licence, so hierot downloads it: it is the
``trees`` list of ``cifar100/cifar100_get_tree_target_level5.py``, one ``[class, level 4,
level 3, level 2, level 1]`` row per class id (level 4 being the superclass id). That file
is Python: hierot parses the one list literal out of it (``ast``) and runs none of it."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

from hierot.data.downloads import AuthorsFile
from hierot.errors import DataError

HAF_TREE = AuthorsFile(
    "haf_cifar100_get_tree_target_level5.py",
    "https://raw.githubusercontent.com/07Agarg/HAF/5c02bae6704744dab53d69e5884be42f0a7c4bd6/"
    "cifar100/cifar100_get_tree_target_level5.py",
    "89e37dd2afeb66f41057e803de49aabec29e401a34dd097143d67ca5e9fa73eb",
)
LEVEL_NAMES = ["level1", "level2", "level3", "coarse"]


def read_haf_rows(path: Path) -> list[list[int]]:
    """The ``trees`` rows of HAF's file; anything else is a one-line ``DataError`` naming
    the file (and the line of a malformed row)."""
    try:
        module = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: not HAF's CIFAR-100 tree file ({e})") from None
    for node in module.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == [
            "trees"
        ]:
            break
    else:
        raise DataError(f"{path}: no 'trees = [...]' list (HAF's CIFAR-100 tree file)")
    rows = []
    for row in getattr(node.value, "elts", []):
        try:
            values = ast.literal_eval(row)
        except ValueError:
            values = None
        if not (isinstance(values, list) and len(values) == 5
                and all(isinstance(v, int) for v in values)):  # fmt: skip
            raise DataError(f"{path}:{row.lineno}: expected a row of 5 integer ids")
        rows.append(values)
    return rows


def haf_paths(
    path: Path, classes: Sequence[str], coarse_names: Sequence[str], superclass: Sequence[int]
) -> list[list[str]]:
    """Root-to-leaf paths of all CIFAR-100 ``classes`` (in label order) in HAF's tree;
    ``superclass[i]`` is class i's superclass id in the dataset, which the file's level 4
    must repeat."""
    rows = read_haf_rows(path)
    if sorted(r[0] for r in rows) != list(range(len(classes))):
        raise DataError(f"{path}: the rows' class ids are not 0..{len(classes) - 1}, once each")
    by_class = {r[0]: r for r in rows}
    paths = []
    for i, name in enumerate(classes):
        _, l4, l3, l2, l1 = by_class[i]
        if l4 != superclass[i]:
            raise DataError(
                f"{path}: class {i} ('{name}') is under superclass {l4}, but CIFAR-100 puts it "
                f"under {superclass[i]} ('{coarse_names[superclass[i]]}')"
            )
        paths.append([f"l1-{l1}", f"l2-{l2}", f"l3-{l3}", coarse_names[l4], name])
    return paths
