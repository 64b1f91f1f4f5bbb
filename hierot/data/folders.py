"""Datasets stored as one folder per fine class: any ImageFolder tree with a hierarchy file, and
iNaturalist 2021, whose folder names carry the taxonomy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchvision.datasets.folder import make_dataset

from hierot.data.images import (
    IMAGE_EXTENSIONS,
    FileImages,
    carve_validation,
    eval_transform,
    train_transform,
)
from hierot.data.module import HierarchyDataModule, data_root
from hierot.errors import DataError
from hierot.hierarchy import Hierarchy

INAT_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def class_folders(split: Path) -> list[str]:
    """Sorted names of the class folders of a split; a missing or empty split is an error."""
    if not split.is_dir():
        raise DataError(f"{split}: missing split folder")
    names = sorted(p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{split}: empty split (no class folders)")
    return names


def scan_split(
    split: Path, classes: Sequence[str], only_classes: bool = False
) -> tuple[list[str], list[int]]:
    """``(paths, labels)`` of the images of a split, labels by position in ``classes``. A class
    folder that is not one of ``classes`` is an error naming it, or skipped with
    ``only_classes`` (a subset of a bigger dataset, as BREEDS takes from ImageNet)."""
    present = class_folders(split)
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in present if c not in index]
    if unknown and not only_classes:
        raise DataError(f"{split / unknown[0]}: class '{unknown[0]}' is not in the hierarchy")
    present = [c for c in present if c in index]
    missing = [c for c in classes if c not in present]
    if only_classes and missing:
        raise DataError(f"{split / missing[0]}: missing class folder '{missing[0]}'")
    try:
        samples = make_dataset(
            str(split), {c: index[c] for c in present}, IMAGE_EXTENSIONS, allow_empty=True
        )
    except FileNotFoundError as e:
        raise DataError(f"{split}: {e}") from None
    if not samples:
        raise DataError(f"{split}: empty split (no images with {', '.join(IMAGE_EXTENSIONS)})")
    paths, labels = zip(*samples)
    return list(paths), list(labels)


class FolderDataModule(HierarchyDataModule):
    """``root/<train>/``, ``root/<test>/`` and optionally ``root/<val>/``, one folder per class;
    without a val folder a seeded ``val_fraction`` of train is held out. Subclasses set
    ``hierarchy`` (leaves = the class names, in label order) in ``__init__``."""

    def __init__(
        self,
        root: str | None = None,
        train_split: str = "train",
        val_split: str | None = "val",
        test_split: str = "test",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        augment: str = "resized_crop",
        image_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_size=image_size, **kwargs)
        self.root = data_root(root, "the split folders")
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.only_classes = False  # subclasses that take a subset of the class folders set it
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.train_tf = train_transform(image_size, augment)
        self.eval_tf = eval_transform(image_size)
        for name in ("train", "test"):
            class_folders(self.root / self.splits[name])  # fail now, before any training

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        classes = self.hierarchy.leaves

        def scan(split: Path) -> tuple[list[str], list[int]]:
            return scan_split(split, classes, self.only_classes)

        paths, labels = scan(self.root / self.splits["train"])
        val_dir = self.root / self.splits["val"] if self.splits["val"] else None
        if val_dir is not None and val_dir.is_dir():
            self.train_set = FileImages(paths, labels, self.train_tf)
            self.val_set = FileImages(*scan(val_dir), self.eval_tf)
        else:
            tr, va = carve_validation(len(paths), self.val_fraction, self.split_seed)
            self.train_set = FileImages(
                [paths[i] for i in tr], [labels[i] for i in tr], self.train_tf
            )
            self.val_set = FileImages([paths[i] for i in va], [labels[i] for i in va], self.eval_tf)
        self.test_set = FileImages(*scan(self.root / self.splits["test"]), self.eval_tf)


class ImageFolderDataModule(FolderDataModule):
    """Any class-folder dataset plus a hierarchy file (nested JSON/YAML, CSV/TSV paths or an
    edge list) whose leaves include every class folder; the classes are the training folders in
    sorted order."""

    def __init__(self, hierarchy: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not hierarchy:
            raise DataError("data.hierarchy: not set (a hierarchy file over the class folders)")
        classes = class_folders(self.root / self.splits["train"])
        tree = Hierarchy.from_file(hierarchy)
        tree.check_classes(classes)
        self.hierarchy = tree.with_classes(classes)


class INatDataModule(FolderDataModule):
    """iNaturalist 2021 (``train_mini/`` or ``train/``, ``val/``): class folders are named
    ``NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_species``; ``ranks`` picks the levels of the
    tree above the classes (default all six). ``val/`` is the test split; validation is held out
    from the training split."""

    def __init__(
        self,
        ranks: Sequence[str] = INAT_RANKS[:-1],
        train_split: str = "train_mini",
        test_split: str = "val",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("val_split", None)
        super().__init__(train_split=train_split, test_split=test_split, **kwargs)
        bad = [r for r in ranks if r not in INAT_RANKS[:-1]]
        if bad or not ranks:
            raise DataError(
                f"data.ranks: {bad[0] if bad else 'none'} is not a rank above species; "
                f"choose from {', '.join(INAT_RANKS[:-1])}"
            )
        order = sorted(ranks, key=INAT_RANKS.index)
        split = self.root / self.splits["train"]
        classes = class_folders(split)
        paths = []
        for name in classes:
            parts = name.split("_")
            if len(parts) != 1 + len(INAT_RANKS) or not parts[0].isdigit():
                raise DataError(
                    f"{split / name}: not an iNaturalist 2021 class folder name "
                    "(NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_species)"
                )
            taxa = dict(zip(INAT_RANKS, parts[1:]))
            # Prefix each node with its rank so that equal names at two ranks stay distinct.
            paths.append([f"{rank}:{taxa[rank]}" for rank in order] + [name])
        self.hierarchy = Hierarchy.from_paths(paths, source=str(split))
        if self.level_names is None:
            # A rank with one taxon on top (all Animalia, say) becomes the root, not a level.
            self.level_names = order[len(order) - (self.hierarchy.depth - 1) :]
