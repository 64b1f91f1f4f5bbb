"""Datasets whose splits are lists of image files named by the dataset's own index files
(FGVC-Aircraft, CUB-200-2011, making-better-mistakes' split lists), rather than class
folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hierot.data.images import (
    FileImages,
    Transform,
    carve_validation,
    eval_transform,
    train_transform,
)
from hierot.data.module import HierarchyDataModule
from hierot.errors import DataError

# split -> (image paths, class ids)
Lists = dict[str, tuple[list[str], list[int]]]


def read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of a text file's non-blank lines; a missing or unreadable
    file is a one-line ``DataError`` saying what it should be."""
    if not path.is_file():
        raise DataError(f"{path}: missing ({what})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    return [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def split_pair(path: Path, lineno: int, line: str, expected: str) -> tuple[str, str]:
    """A ``<first> <rest>`` line split at its first space (the rest may hold spaces)."""
    first, _, rest = line.strip().partition(" ")
    if not rest.strip():
        raise DataError(f"{path}:{lineno}: expected '{expected}', got {line!r}")
    return first, rest.strip()


class FileListDataModule(HierarchyDataModule):
    """Splits from ``read_lists`` (``train`` and ``test``, and ``val`` where the dataset
    has one; without it a seeded ``val_fraction`` of train is held out), images decoded in
    the loader workers. Subclasses read the tree in ``read_metadata`` and the lists, from
    the dataset's index files, in ``read_lists``."""

    def __init__(
        self,
        root: str | None = None,
        download: bool = False,
        image_size: int = 224,
        eval_resize: int | None = None,
        augment: str = "resized_crop",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if not isinstance(download, bool):
            raise DataError(f"data.download must be true or false, got {download!r}")
        super().__init__(image_size=image_size, **kwargs)
        self.root_arg, self.download = root, download
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.train_tf = train_transform(image_size, augment)
        self.eval_tf = eval_transform(image_size, eval_resize)

    def read_lists(self) -> Lists:
        raise NotImplementedError

    def file_transform(self) -> Transform:
        return self.eval_tf

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        self.hierarchy  # noqa: B018 -- the classes, before their images
        lists = self.read_lists()
        for split, (paths, _) in lists.items():
            if not paths:
                raise DataError(f"data.root: the {split} split of {self.root_arg} has no images")
            if not Path(paths[0]).is_file():  # one cheap check of where the images are
                raise DataError(f"{paths[0]}: missing image of the {split} split (data.root)")
        paths, labels = lists["train"]
        if "val" in lists:
            self.val_set = FileImages(*lists["val"], self.eval_tf)
        else:
            tr, va = carve_validation(len(paths), self.val_fraction, self.split_seed)
            self.val_set = FileImages([paths[i] for i in va], [labels[i] for i in va], self.eval_tf)
            paths, labels = [paths[i] for i in tr], [labels[i] for i in tr]
        self.train_set = FileImages(paths, labels, self.train_tf)
        self.test_set = FileImages(*lists["test"], self.eval_tf)

    def unaugmented(self, train: FileImages) -> FileImages:  # type: ignore[override]
        return FileImages(train.paths, train.labels.tolist(), self.eval_tf)
