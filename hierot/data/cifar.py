"""CIFAR-10 and CIFAR-100 from the official python-pickle releases, decoded once into memory.

- CIFAR-100 (``cifar-100-python/{train,test,meta}``): the tree is the dataset's own 20
  superclasses over its 100 classes, or a user hierarchy file over the class names.
- CIFAR-10 (``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``): the tree comes
  from the config (``data.tree``: vehicles / animals by default) or a hierarchy file.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.datasets.utils import download_and_extract_archive

from hierot.data.device_augment import crop_flip
from hierot.data.downloads import authors_file, download_lock, lock_file
from hierot.data.haf import HAF_TREE, haf_paths
from hierot.data.haf import LEVEL_NAMES as HAF_LEVEL_NAMES
from hierot.data.images import (
    TensorImages,
    carve_validation,
    crop_padding,
    eval_transform,
    train_transform,
)
from hierot.data.module import (
    HierarchyDataModule,
    check_height,
    check_split,
    data_root,
    split_by_parent,
    warn_leaves_without_data,
)
from hierot.errors import DataError
from hierot.hierarchy import Hierarchy, HierarchyError

log = logging.getLogger(__name__)

CIFAR100_FOLDER = "cifar-100-python"
CIFAR10_FOLDER = "cifar-10-batches-py"


def read_pickle(path: Path, what: str, keys: Sequence[str]) -> dict[str, Any]:
    """One official CIFAR pickle as a dict with str keys; anything else is a ``DataError``."""
    if not path.is_file():
        raise DataError(f"{path}: missing (expected the official {what} python release)")
    try:
        with path.open("rb") as f:
            raw = pickle.load(f, encoding="bytes")
    except Exception as e:  # unpickling can fail in many ways; all mean "not this format"
        raise DataError(f"{path}: not the official {what} python format ({e})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: not the official {what} python format (not a dict)")
    out = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    missing = [k for k in keys if k not in out]
    if missing:
        raise DataError(f"{path}: not the official {what} python format (no key '{missing[0]}')")
    return out


def _names(values: Sequence[Any]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _images(batch: Mapping[str, Any], path: Path, what: str) -> torch.Tensor:
    data = torch.as_tensor(batch["data"])
    if data.dim() != 2 or data.shape[1] != 3072 or data.dtype != torch.uint8:
        raise DataError(
            f"{path}: not the official {what} python format (data is {tuple(data.shape)} "
            f"{data.dtype}, expected (N, 3072) uint8)"
        )
    return data.view(-1, 3, 32, 32)


def _count(batch: Mapping[str, Any], path: Path, what: str) -> int:
    """The number of images in ``batch`` without converting them."""
    try:
        return len(batch["data"])
    except TypeError:
        message = f"{path}: not the official {what} python format (data has no length)"
        raise DataError(message) from None


def _labels(batch: Mapping[str, Any], key: str, n: int, k: int, path: Path, what: str):
    labels = torch.as_tensor(batch[key], dtype=torch.long)
    if labels.shape != (n,) or (n and (labels.min() < 0 or labels.max() >= k)):
        raise DataError(f"{path}: not the official {what} python format ('{key}' do not fit)")
    return labels


def _root(root: str | None, folder: str) -> Path:
    base = data_root(root, folder)
    # Accept both the folder holding the release and the release folder itself.
    return base / folder if (base / folder).is_dir() else base


class CifarDataModule(HierarchyDataModule):
    """Shared by CIFAR-10/100: splits in memory, validation carved from train with a seed.

    ``download``: fetch the official archive into ``root`` when its folder is missing,
    through torchvision's downloader (its URL and checksum), before the metadata is read.

    ``device_augment``: the ``crop_flip`` augmentation runs on whole batches on the device
    (``hierot.data.device_augment``) instead of per image in the loader, which then only
    indexes the images; the same distribution of crops and flips."""

    # torchvision's dataset class whose url, filename and tgz_md5 name the archive
    release: type[torchvision.datasets.CIFAR10]
    folder_name: str

    def __init__(
        self,
        root: str | None = None,
        hierarchy: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        augment: str = "crop_flip",
        image_size: int = 32,
        download: bool = False,
        device_augment: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_size=image_size, **kwargs)
        for key, value in (("download", download), ("device_augment", device_augment)):
            if not isinstance(value, bool):
                raise DataError(f"data.{key} must be true or false, got {value!r}")
        if device_augment and augment != "crop_flip":
            raise DataError(
                f"data.device_augment: replaces data.augment=crop_flip only, got {augment} "
                "(set data.device_augment=false)"
            )
        if download and not root:
            raise DataError("data.root: not set (the folder to download the release into)")
        self.root = root
        self.download = download
        self.hierarchy_file = hierarchy
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.augment = augment
        self.train_tf = train_transform(image_size, augment)
        self.device_augment = device_augment
        if device_augment:
            self.train_device_transform = partial(crop_flip, padding=crop_padding(image_size))

    def prepare_data(self) -> None:
        """With ``download``: the official archive, downloaded, checked and extracted into
        ``root`` unless its folder is there. Lightning calls it on one process per node;
        the metadata read calls it first, as the model is built from the tree before, so
        every process of a distributed run comes here: one downloads and extracts under
        ``download_lock``, the others wait for it (a folder being extracted is there before
        it is whole: it counts only with no lock file beside it, or under the lock)."""
        if not self.download:
            return
        root = Path(str(self.root)).expanduser()
        release = self.release
        folder, archive = root / self.folder_name, root / release.filename
        if root.name == self.folder_name or (folder.is_dir() and not lock_file(archive).exists()):
            return
        try:
            with download_lock(archive):
                if folder.is_dir():  # another process extracted it while this one waited
                    return
                log.info("downloading %s into %s", release.url, root)
                download_and_extract_archive(
                    release.url, root, filename=release.filename, md5=release.tgz_md5
                )
        except (OSError, RuntimeError) as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise DataError(f"data.download: {release.url} into {root} failed ({reason})") from None

    def _release_folder(self) -> Path:
        """The release's folder under ``root``, downloaded first with ``download``."""
        self.prepare_data()
        root = Path(str(self.root)).expanduser()
        if self.root and not root.is_dir():  # without download: prepare_data made none
            raise DataError(
                f"data.root: no such folder: {root} (data.download=true downloads {self.what} "
                "into it)"
            )
        return _root(self.root, self.folder_name)

    def _tree(
        self, classes: list[str], default: Hierarchy, every: Sequence[str] | None = None
    ) -> Hierarchy:
        """``default``, or the ``data.hierarchy`` file's tree over ``classes`` (a warning for
        its leaves that are none of ``every`` class of the dataset)."""
        if self.hierarchy_file is None:
            return default
        tree = Hierarchy.from_file(self.hierarchy_file)
        tree.check_classes(classes)
        warn_leaves_without_data(tree, classes if every is None else every)
        return tree.with_classes(classes)

    def _splits(self, train: tuple[torch.Tensor, torch.Tensor], test: tuple) -> None:
        (x, y), (xt, yt) = train, test
        resize = None if self.image_size == 32 else eval_transform(self.image_size)
        tr, va = carve_validation(len(y), self.val_fraction, self.split_seed)
        # with device_augment the loader only resizes (as the first step of train_tf does)
        train_tf = resize if self.device_augment else self.train_tf
        self.train_set = TensorImages(x[tr], y[tr], train_tf)
        self._eval_tf = resize
        self.val_set = TensorImages(x[va], y[va], resize)
        self.test_set = TensorImages(xt, yt, resize)

    def unaugmented(self, train: TensorImages) -> TensorImages:  # type: ignore[override]
        return TensorImages(train.images, train.labels, self._eval_tf)


HEIGHTS = (2, 3, 4)
# The CIFAR-100 trees data.tree names: the dataset's superclasses (with data.height's mid
# levels), or HAF's 5 levels (hierot.data.haf).
CIFAR100_TREES = ("superclass", "haf5")
# In every superclass the two lowest-id classes are the target classes (OT-CPCC protocol).
TARGET_PER_SUPERCLASS = 2


def split_classes(parent: Sequence[int], split: str) -> list[int]:
    """Class ids of ``split``: ``target`` holds the two lowest-id classes of every superclass
    (``parent[i]`` is class i's superclass), ``source`` the others, ``all`` every class."""
    return split_by_parent(parent, split, lambda count: TARGET_PER_SUPERCLASS)


def paper_paths(
    classes: Sequence[str],
    coarse_names: Sequence[str],
    parent: Sequence[int],
    target: Sequence[bool],
    height: int,
) -> tuple[list[list[str]], list[str]]:
    """Root-to-leaf paths of the OT-CPCC CIFAR-100 trees, and their level names.

    Height 2 is superclass -> class. Height 3 puts a mid level between them that splits each
    superclass into ``<superclass>_b`` (its two lowest-id classes) and ``<superclass>_a``
    (the other three). Height 4 adds on top a level pairing superclasses in id order,
    ``<superclass 0>_<superclass 1>``, ``<2>_<3>``, ... Every level is kept, also where a
    node has a single child, so the tree distances are 2, 4, 6 (and 8).

    Args:
        classes, parent, target: per class its name, superclass id and whether it is one
            of its superclass's two lowest-id classes (a target class).
    """
    check_height(height, HEIGHTS, "CIFAR-100")
    paths = []
    for i, name in enumerate(classes):
        c = parent[i]
        coarse = coarse_names[c]
        path = [coarse, name]
        if height >= 3:
            path.insert(1, f"{coarse}_{'b' if target[i] else 'a'}")
        if height == 4:
            pair = c - c % 2
            partner = coarse_names[pair + 1] if pair + 1 < len(coarse_names) else ""
            path.insert(0, f"{coarse_names[pair]}_{partner}" if partner else coarse_names[pair])
        paths.append(path)
    names = {2: ["coarse"], 3: ["coarse", "mid"], 4: ["coarsest", "coarse", "mid"]}[height]
    return paths, names


class Cifar100DataModule(CifarDataModule):
    """CIFAR-100; the default tree is superclass -> class (2 levels).

    ``split`` and ``height`` follow the OT-CPCC paper's protocol: ``source`` (60 classes) and
    ``target`` (40 classes, the two lowest-id classes of every superclass) for train and
    test alike, and trees of height 2, 3 or 4 (see ``paper_paths``). Class ids of a split
    are renumbered from 0 in the order of the original ids.
    """

    what = "CIFAR-100"
    release = torchvision.datasets.CIFAR100
    folder_name = CIFAR100_FOLDER

    def __init__(
        self,
        root: str | None = None,
        split: str = "all",
        height: int = 2,
        tree: str = "superclass",
        info_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.split = check_split(split)
        self.height = check_height(height, HEIGHTS, "CIFAR-100")
        if height != 2 and self.hierarchy_file is not None:
            raise DataError("data.height: a data.hierarchy file brings its own tree; drop one")
        if tree not in CIFAR100_TREES:
            raise DataError(f"data.tree: unknown '{tree}'; available: {', '.join(CIFAR100_TREES)}")
        if tree != "superclass" and (height != 2 or self.hierarchy_file is not None):
            option = "data.height" if height != 2 else "data.hierarchy"
            raise DataError(f"{option}: data.tree={tree} brings its own tree; drop one")
        self.tree, self.info_dir = tree, info_dir

    def read_metadata(self) -> Hierarchy:
        """The class names (``meta``) and each class's superclass, read off the training
        labels (the training file is unpickled for them; its images are left unused)."""
        self.folder = self._release_folder()
        meta = read_pickle(
            self.folder / "meta", self.what, ["fine_label_names", "coarse_label_names"]
        )
        all_classes = _names(meta["fine_label_names"])
        coarse_names = _names(meta["coarse_label_names"])
        self._n_coarse = len(coarse_names)
        self._n_fine = len(all_classes)  # the file's labels, before a split renumbers them
        _, y, coarse = self._read("train", images=False)
        parent = self._superclasses(y, coarse, all_classes, coarse_names)
        missing = [n for i, n in enumerate(all_classes) if i not in parent]
        if missing and (self.hierarchy_file is None or self.split != "all"):
            raise DataError(f"{self.folder / 'train'}: class '{missing[0]}' has no training images")
        kept = list(range(len(all_classes)))
        target: set[int] = set()
        if not missing:
            superclass = [parent[i] for i in range(len(all_classes))]
            target = set(split_classes(superclass, "target"))
            kept = split_classes(superclass, self.split)
        self.classes = [all_classes[i] for i in kept]
        # old class id -> new id (-1: not in this split)
        self._renumber = torch.full((len(all_classes),), -1, dtype=torch.long)
        self._renumber[torch.tensor(kept, dtype=torch.long)] = torch.arange(len(kept))
        if self.hierarchy_file is not None:
            return self._tree(self.classes, None, all_classes)  # type: ignore[arg-type]
        if self.tree == "haf5":
            return self._haf_tree(all_classes, coarse_names, superclass, kept)
        superclasses = [parent[i] for i in kept]
        paths, names = paper_paths(
            self.classes, coarse_names, superclasses, [i in target for i in kept], self.height
        )
        try:
            tree = Hierarchy.from_paths(paths, source=str(self.folder / "meta"))
        except HierarchyError as e:
            raise DataError(str(e)) from None
        if self._level_names is None:
            self._level_names = names
        return tree

    def _haf_tree(
        self, classes: list[str], coarse: list[str], superclass: list[int], kept: list[int]
    ) -> Hierarchy:
        """HAF's 5-level tree over the ``kept`` classes, its file in ``info_dir`` (default
        ``root``), downloaded with ``download``."""
        folder = Path(str(self.info_dir or self.root)).expanduser()
        file = authors_file(folder, HAF_TREE, self.download, "data.info_dir")
        paths = haf_paths(file, classes, coarse, superclass)
        try:
            tree = Hierarchy.from_paths([paths[i] for i in kept], source=str(file))
        except HierarchyError as e:
            raise DataError(str(e)) from None
        if self._level_names is None:
            self._level_names = list(HAF_LEVEL_NAMES)
        return tree

    def _superclasses(
        self, y: torch.Tensor, coarse: torch.Tensor, classes: list[str], coarse_names: list[str]
    ) -> dict[int, int]:
        """Class id -> superclass id, read off the training labels (one per class)."""
        parent: dict[int, int] = {}
        for f, c in zip(y.tolist(), coarse.tolist()):
            if parent.setdefault(f, c) != c:
                raise DataError(
                    f"{self.folder / 'train'}: class '{classes[f]}' has two superclasses: "
                    f"'{coarse_names[parent[f]]}' and '{coarse_names[c]}'"
                )
        return parent

    def _select(self, data: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
        """The images of this split's classes, labels renumbered."""
        x, y, coarse = data
        new = self._renumber[y]
        keep = new >= 0
        return x[keep], new[keep], coarse[keep]

    def _read(self, split: str, images: bool = True):
        """(images or None, labels, superclass labels) of the ``split`` file."""
        path = self.folder / split
        batch = read_pickle(path, self.what, ["data", "fine_labels", "coarse_labels"])
        x = _images(batch, path, self.what) if images else None
        n = len(x) if x is not None else _count(batch, path, self.what)
        y = _labels(batch, "fine_labels", n, self._n_fine, path, self.what)
        coarse = _labels(batch, "coarse_labels", n, self._n_coarse, path, self.what)
        return x, y, coarse

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "train_set"):
            self.hierarchy  # noqa: B018 -- the class ids of this split
            x, y, _ = self._select(self._read("train"))
            xt, yt, _ = self._select(self._read("test"))
            self._splits((x, y), (xt, yt))


# The OT-CPCC paper's CIFAR-10 target classes (uiuctml/OTCPCC dataset/cifar10/data.py); the
# other six are the source classes.
CIFAR10_TARGET = ("airplane", "automobile", "bird", "cat")


class Cifar10DataModule(CifarDataModule):
    """CIFAR-10; the tree is ``tree`` (nested mapping over the class names) or a file.

    ``split``: ``all`` classes, or the ``target`` classes (``target_classes``) or the other
    (``source``) ones, in class-id order, for train and test alike."""

    what = "CIFAR-10"
    release = torchvision.datasets.CIFAR10
    folder_name = CIFAR10_FOLDER

    def __init__(
        self,
        root: str | None = None,
        tree: Mapping[str, Any] | None = None,
        split: str = "all",
        target_classes: Sequence[str] = CIFAR10_TARGET,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.split = check_split(split)
        self.tree = tree
        self.target_classes = list(target_classes)

    def read_metadata(self) -> Hierarchy:
        """The class names (``batches.meta``) and the tree over them."""
        self.folder = folder = self._release_folder()
        meta = read_pickle(folder / "batches.meta", self.what, ["label_names"])
        every = _names(meta["label_names"])
        unknown = [c for c in self.target_classes if c not in every]
        if unknown:
            raise DataError(
                f"data.target_classes: '{unknown[0]}' is not a class of {folder / 'batches.meta'}"
            )
        if self.split == "all":
            self.classes = every
        else:
            target = self.split == "target"
            self.classes = [c for c in every if (c in self.target_classes) == target]
        # old class id -> new id (-1: not in this split)
        self._renumber = torch.tensor([self.classes.index(c) if c in self.classes else -1
                                       for c in every])  # fmt: skip
        default = None
        if self.hierarchy_file is None:
            if not self.tree:
                raise DataError("data.tree: CIFAR-10 needs a tree (data.tree or data.hierarchy)")
            try:
                default = Hierarchy.from_nested(dict(self.tree), source="data.tree")
                default.check_classes(every)
                default = default.with_classes(self.classes)
            except HierarchyError as e:
                raise DataError(str(e)) from None
        return self._tree(self.classes, default, every)  # type: ignore[arg-type]

    def _read(self, names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for name in names:
            path = self.folder / name
            batch = read_pickle(path, self.what, ["data", "labels"])
            x = _images(batch, path, self.what)
            xs.append(x)
            ys.append(_labels(batch, "labels", len(x), len(self._renumber), path, self.what))
        x, y = torch.cat(xs), self._renumber[torch.cat(ys)]
        return x[y >= 0], y[y >= 0]

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "train_set"):
            self.hierarchy  # noqa: B018 -- the class ids of this split
            train = self._read([f"data_batch_{i}" for i in range(1, 6)])
            self._splits(train, self._read(["test_batch"]))
