"""CUB-200-2011 (Wah et al., 2011) with the 4-level tree of order, family, genus and species:
200 species, 122 genera, 37 families, 13 orders. The dataset names only the species; the tree
is the one of Chen et al. (HSE, ACM MM 2018), which HRN (Chen et al., CVPR 2022,
github.com/MonsterZhZh/HRN) publishes as ``train_images_4_level_V1.txt``: one
``<class folder>/<image> <species> <genus> <family> <order>`` line per training image, the
ids counted from 1. hierot reads the ids (the levels have no names there) and checks that
every species sits under one genus, every genus under one family, every family under one
order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hierot.data.downloads import AuthorsFile, authors_file
from hierot.data.lists import FileListDataModule, Lists, read_lines, split_pair
from hierot.data.module import data_root
from hierot.errors import DataError
from hierot.hierarchy import Hierarchy

FOLDER = "CUB_200_2011"
LEVELS = ("order", "family", "genus")
TREE = AuthorsFile(
    "train_images_4_level_V1.txt",
    "https://raw.githubusercontent.com/MonsterZhZh/HRN/59944e48fcbf41cc475402c8b9cb6af301006399/"
    "Datasets/CUB-200-2011/train_images_4_level_V1.txt",
    "cec6f9f9bdf9b0f564b9929b628c3456c19a433e6f20fd6253b74bae7445b1c4",
)


def read_tree_lines(path: Path, classes: list[str]) -> list[list[str]]:
    """Root-to-leaf paths ``[order, family, genus, class folder]`` of ``classes`` (the CUB
    class folders in id order) from the HSE list; inner nodes named ``<level>:<id>``."""
    parent: dict[str, str] = {}
    paths: dict[str, list[str]] = {}
    for lineno, line in read_lines(path, "the CUB order/family/genus/species list"):
        parts = line.split()
        if len(parts) != 5 or not all(p.isdigit() for p in parts[1:]):
            raise DataError(
                f"{path}:{lineno}: expected '<image> <species> <genus> <family> <order>', "
                f"got {line!r}"
            )
        species = int(parts[1])
        if not 1 <= species <= len(classes) or classes[species - 1] != parts[0].split("/")[0]:
            raise DataError(f"{path}:{lineno}: species {species} is not the class of {parts[0]}")
        nodes = [f"{lv}:{i}" for lv, i in zip(LEVELS, parts[:1:-1])] + [classes[species - 1]]
        for child, up in zip(nodes[:0:-1], nodes[-2::-1]):
            if parent.setdefault(child, up) != up:
                raise DataError(f"{path}:{lineno}: {child} is under {parent[child]} and {up}")
        paths[nodes[-1]] = nodes
    absent = [c for c in classes if c not in paths]
    if absent:
        raise DataError(f"{path}: class '{absent[0]}' is not in the list")
    return [paths[c] for c in classes]


class CubDataModule(FileListDataModule):
    """CUB-200-2011 from ``root`` (``CUB_200_2011`` or the folder holding it): ``images/``,
    ``images.txt``, ``classes.txt`` and ``train_test_split.txt``; the tree list in
    ``info_dir`` (default the same folder), downloaded with ``download``. Validation is
    held out from the training split."""

    def __init__(self, info_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.info_arg = info_dir

    def read_metadata(self) -> Hierarchy:
        root = data_root(self.root_arg, FOLDER)
        self.folder = root / FOLDER if (root / FOLDER).is_dir() else root
        path = self.folder / "classes.txt"
        rows = [split_pair(path, n, line, "<id> <class folder>")
                for n, line in read_lines(path, "the CUB class list")]  # fmt: skip
        classes = [name for _, name in rows]
        info = Path(self.info_arg).expanduser() if self.info_arg else self.folder
        tree = authors_file(info, TREE, self.download, "data.info_dir")
        if self._level_names is None:
            self._level_names = list(LEVELS)
        return Hierarchy.from_paths(read_tree_lines(tree, classes), source=str(tree))

    def read_lists(self) -> Lists:
        index = {c: i for i, c in enumerate(self.hierarchy.leaves)}
        images = self.folder / "images.txt"
        paths = dict(split_pair(images, n, line, "<id> <path>")
                     for n, line in read_lines(images, "the CUB image list"))  # fmt: skip
        split_file = self.folder / "train_test_split.txt"
        out: Lists = {"train": ([], []), "test": ([], [])}
        for lineno, line in read_lines(split_file, "the CUB train/test split"):
            image, flag = split_pair(split_file, lineno, line, "<id> <1|0>")
            path = paths.get(image)
            if path is None or flag not in ("0", "1"):
                raise DataError(f"{split_file}:{lineno}: expected a listed image id and 1 or 0")
            label = index.get(path.split("/")[0])
            if label is None:
                raise DataError(f"{images}: {path} is in no class folder of classes.txt")
            split = out["train" if flag == "1" else "test"]
            split[0].append(str(self.folder / "images" / path))
            split[1].append(label)
        return out
