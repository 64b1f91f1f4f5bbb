"""FGVC-Aircraft (Maji et al., 2013; fgvc-aircraft-2013b): 100 variants under 70 families
under 30 manufacturers. The tree is the dataset's own, read off its annotation files: every
image is listed with its variant, family and manufacturer in
``data/images_{variant,family,manufacturer}_<split>.txt`` (``<image id> <name>`` lines), and
``data/variants.txt`` orders the classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hierot.data.lists import FileListDataModule, Lists, read_lines, split_pair
from hierot.data.module import data_root
from hierot.errors import DataError
from hierot.hierarchy import Hierarchy

LEVELS = ("manufacturer", "family", "variant")
FOLDER = "fgvc-aircraft-2013b"
PLURAL = {"family": "families", "manufacturer": "manufacturers"}


def read_labels(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """``({image id: name}, {image id: line number})`` of one ``images_<level>_<split>.txt``."""
    names: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, line in read_lines(path, "an FGVC-Aircraft annotation file"):
        image, name = split_pair(path, lineno, line, "<image id> <name>")
        if image in names:
            raise DataError(f"{path}:{lineno}: image {image} is listed twice")
        names[image], lines[image] = name, lineno
    return names, lines


def variant_paths(data: Path, splits: tuple[str, ...]) -> tuple[dict[str, list[str]], dict]:
    """Per variant its path ``[manufacturer, family, variant]`` (inner nodes prefixed with
    their level: a family may share a variant's name), and per split ``{image: variant}``;
    a variant under two families (or a family under two manufacturers) is an error naming
    the line that disagrees."""
    family_of: dict[str, str] = {}
    maker_of: dict[str, str] = {}
    images = {}
    for split in splits:
        variants, _ = read_labels(data / f"images_variant_{split}.txt")
        for level, parent_of in (("family", family_of), ("manufacturer", maker_of)):
            file = data / f"images_{level}_{split}.txt"
            parents, lines = read_labels(file)
            # what this level is the parent of: the variants, then the families
            below = (
                variants if level == "family" else {i: family_of[v] for i, v in variants.items()}
            )
            for image, node in below.items():
                if image not in parents:
                    raise DataError(f"{file}: image {image} is not listed")
                if parent_of.setdefault(node, parents[image]) != parents[image]:
                    raise DataError(f"{file}:{lines[image]}: '{node}' is under two {PLURAL[level]}")
        images[split] = variants
    paths = {v: [f"manufacturer:{maker_of[f]}", f"family:{f}", v] for v, f in family_of.items()}
    return paths, images


class AircraftDataModule(FileListDataModule):
    """FGVC-Aircraft from ``root`` (``fgvc-aircraft-2013b`` or the folder holding it):
    ``data/images/<id>.jpg`` and the annotation files. Classes are the variants in
    ``variants.txt`` order; ``train_split``/``val_split``/``test_split`` name the
    annotation files' splits (``trainval`` for train and val together, then validation is
    held out from it: set ``val_split`` to null)."""

    def __init__(
        self,
        train_split: str = "train",
        val_split: str | None = "val",
        test_split: str = "test",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}

    def read_metadata(self) -> Hierarchy:
        root = data_root(self.root_arg, f"{FOLDER}/data")
        self.data = (root / FOLDER if (root / FOLDER).is_dir() else root) / "data"
        path = self.data / "variants.txt"
        classes = [line.strip() for _, line in read_lines(path, "the list of variants")]
        splits = tuple(s for s in self.splits.values() if s)
        paths, self.images = variant_paths(self.data, splits)
        unlisted = [v for v in paths if v not in classes]
        if unlisted:
            raise DataError(f"{path}: variant '{unlisted[0]}' of the annotations is not listed")
        absent = [v for v in classes if v not in paths]
        if absent:
            raise DataError(f"{self.data}: variant '{absent[0]}' has no annotated image")
        if self._level_names is None:
            self._level_names = list(LEVELS[:2])
        return Hierarchy.from_paths([paths[v] for v in classes], source=str(path))

    def read_lists(self) -> Lists:
        index = {c: i for i, c in enumerate(self.hierarchy.leaves)}
        out: Lists = {}
        for key, split in self.splits.items():
            if split:
                images = self.images[split]
                out[key] = (
                    [str(self.data / "images" / f"{i}.jpg") for i in images],
                    [index[v] for v in images.values()],
                )
        return out
