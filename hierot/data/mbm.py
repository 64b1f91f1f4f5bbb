"""tieredImageNet-H and iNaturalist-19 as making-better-mistakes defines them (Bertinetto et
al., CVPR 2020; github.com/fiveai/making-better-mistakes): its split lists over the user's
ImageNet or iNaturalist 2019 images, and its tree read from ``<dataset>_isa.txt`` (one
``parent child`` line per edge). Its ``<dataset>_tree.pkl`` holds the same tree as a pickled
``nltk.Tree``, which hierot never unpickles (unpickling runs the code a pickle names).

The split archive ``splits_<name>.zip`` holds ``<top>/<split>/<class>.txt`` files, one image
file name per line, read in place (nothing is extracted). tieredImageNet-H's classes are
WordNet ids and its lines ImageNet's file names (checked on the archive itself);
iNaturalist-19's classes are ``nat<category id, 4 digits>`` and its lines the images' base
names, found in ``train_val2019/<supercategory>/<category id>/`` (as the code that consumes
it reads it: that archive's content was not readable, see docs/data.md).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from hierot.data.downloads import AuthorsFile, authors_file
from hierot.data.lists import FileListDataModule, Lists
from hierot.data.module import data_root
from hierot.errors import DataError
from hierot.hierarchy import Hierarchy, HierarchyError

_REPO = "https://raw.githubusercontent.com/fiveai/making-better-mistakes/"
_COMMIT = "f0bb7d0a7c4a9c7c9517045a4be4446e9baf824f"


def _file(path: str, sha256: str | None) -> AuthorsFile:
    return AuthorsFile(path.rsplit("/", 1)[-1], f"{_REPO}{_COMMIT}/{path}", sha256)


# name: (tree, split archive, distances); sha256 of the files at _COMMIT. The iNaturalist-19
# split archive is not in the copy of the repository that could be read (its blob is
# missing), so its checksum is unknown and hierot does not download it.
DATASETS = {
    "tiered_imagenet_h": (
        _file("data/tiered_imagenet_isa.txt",
              "db79a24707a00437abd809f9f845b19557321a21525aed486788907b20b5511f"),
        _file("dataset_splits/splits_tiered.zip",
              "826a0ae5796983cf75f41277a48e5e07b34b2b7fca8347d0def117ff83a5a5de"),
        _file("data/tiered_imagenet_ilsvrc_distances.pkl.xz",
              "2a81fbf81ad3757bde1bbe1791e02daf64bda4f0132798c786855690c2a81a06"),
    ),
    "inat19": (
        _file("data/inaturalist19_isa.txt",
              "a59981c759186c0d77687539f7d6acc0e85f549e2060c31b477d0326771e15b3"),
        _file("dataset_splits/splits_inat19.zip", None),
        _file("data/inaturalist19_ilsvrc_distances.pkl.xz",
              "9f7826a3bed5eace8bd100f3e0bc7f6d07627e15cddb983a7bb77041242bf07b"),
    ),
}  # fmt: skip
SPLITS = ("train", "val", "test")


def read_split_lists(path: Path) -> dict[str, dict[str, list[str]]]:
    """``{split: {class: [image file names]}}`` from a split archive; a member that is not
    ``<top>/<split>/<class>.txt`` or a line with spaces is a one-line ``DataError``."""
    out: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.endswith("/"):
                    continue
                parts = member.split("/")
                if len(parts) < 3 or parts[-2] not in SPLITS or not parts[-1].endswith(".txt"):
                    raise DataError(
                        f"{path}: member {member!r} is not <split>/<class>.txt (split one of "
                        f"{', '.join(SPLITS)})"
                    )
                text = archive.read(member).decode("utf-8")
                names = []
                for lineno, line in enumerate(text.splitlines(), start=1):
                    if len(line.split()) > 1:
                        raise DataError(f"{path}:{member}:{lineno}: expected one file name")
                    if line.strip():
                        names.append(line.strip())
                out[parts[-2]][parts[-1][: -len(".txt")]] = names
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError) as e:
        raise DataError(f"{path}: not a split archive ({e})") from None
    empty = [s for s in SPLITS if not out[s]]
    if empty:
        raise DataError(f"{path}: no class lists for the {empty[0]} split")
    return out


def imagenet_path(root: Path, wnid: str, name: str) -> Path:
    """Where an image of a tieredImageNet-H list is in an ImageNet folder: ``train/<wnid>/``
    for ImageNet training images (``<wnid>_N.JPEG``), else ImageNet's validation image in
    ``val/<wnid>/`` (val sorted into class folders, as torchvision's ``ImageNet`` does)."""
    if name.startswith(f"{wnid}_"):
        return root / "train" / wnid / name
    return root / "val" / wnid / name


def inat19_folders(root: Path) -> dict[int, Path]:
    """``{category id: folder}`` of an iNaturalist 2019 image folder,
    ``train_val2019/<supercategory>/<category id>/`` (``root`` is the folder holding
    ``train_val2019`` or that folder itself); no such folder, or an id under two
    supercategories, is a one-line ``DataError``."""
    base = root / "train_val2019" if (root / "train_val2019").is_dir() else root
    folders: dict[int, Path] = {}
    try:
        for group in sorted(base.iterdir()):
            if not group.is_dir():
                continue
            for folder in group.iterdir():
                if not (folder.name.isdigit() and folder.is_dir()):
                    continue
                seen = folders.setdefault(int(folder.name), folder)
                if seen != folder:
                    raise DataError(
                        f"data.root: category {folder.name} is in both {seen} and {folder}"
                    )
    except OSError as e:
        raise DataError(f"data.root: {base} is not readable ({e})") from None
    if not folders:
        raise DataError(
            f"data.root: no iNaturalist 2019 category folders "
            f"(train_val2019/<supercategory>/<id>/) under {root}"
        )
    return folders


def inat19_class_id(archive: Path, name: str) -> int:
    """The iNaturalist 2019 category id of an iNaturalist-19 class, ``nat<id>``
    (making-better-mistakes' ``compute_inaturalist19_hierarchy.py`` names them so)."""
    if not (name.startswith("nat") and name[3:].isdigit()):
        raise DataError(f"{archive}: class '{name}' is not nat<category id>")
    return int(name[3:])


class BetterMistakesDataModule(FileListDataModule):
    """``dataset``: ``tiered_imagenet_h`` (608 ImageNet classes; a WordNet tree whose leaves
    sit 3 to 12 edges below the root) or ``inat19`` (1010 iNaturalist 2019 species, 7 levels).
    ``root`` holds the images (ImageNet ``train/`` and ``val/`` in ``<wnid>/`` folders, or the
    iNaturalist 2019 folder), ``info_dir`` the authors' files (default ``root``); with
    ``download`` the missing ones are fetched and their sha256 checked. Classes are the
    split lists' classes in sorted order, as the authors' ``ImageFolder`` numbers them.
    ``distances="authors"`` reads the authors' ``<dataset>_ilsvrc_distances.pkl.xz``."""

    def __init__(
        self, dataset: str = "tiered_imagenet_h", info_dir: str | None = None, **kwargs: Any
    ) -> None:
        if dataset not in DATASETS:
            raise DataError(f"data.dataset: unknown '{dataset}'; available: {', '.join(DATASETS)}")
        self._authors_distances = kwargs.get("distances") == "authors"
        if self._authors_distances:
            kwargs["distances"] = None  # the file's path, once it is there
        super().__init__(**kwargs)
        self.dataset, self.info_arg = dataset, info_dir

    def _files(self) -> tuple[Path, Path, Path | None]:
        """(tree file, split archive, distances or None), downloaded where asked."""
        self.root = data_root(self.root_arg, "the images")
        folder = Path(self.info_arg).expanduser() if self.info_arg else self.root
        isa, splits, distances = DATASETS[self.dataset]
        tree = authors_file(folder, isa, self.download, "data.info_dir")
        archive = authors_file(folder, splits, self.download, "data.info_dir")
        dist = None
        if self._authors_distances:
            dist = authors_file(folder, distances, self.download, "data.distances")
        return tree, archive, dist

    def read_metadata(self) -> Hierarchy:
        tree_file, archive, distances = self._files()
        if distances is not None:
            self.distances = str(distances)
        self.lists = read_split_lists(archive)
        classes = sorted(self.lists["train"])
        for split in SPLITS[1:]:
            extra = sorted(set(self.lists[split]) - set(classes))
            if extra:
                raise DataError(f"{archive}: class '{extra[0]}' of {split} has no training list")
        if self.dataset == "inat19":
            for c in classes:
                inat19_class_id(archive, c)
        try:
            tree = Hierarchy.from_file(tree_file)
            tree.check_classes(classes)
            return tree.with_classes(classes)
        except HierarchyError as e:
            raise DataError(str(e)) from None

    def read_lists(self) -> Lists:
        index = {c: i for i, c in enumerate(self.hierarchy.leaves)}
        folder = self._class_folders()
        out: Lists = {}
        for split in SPLITS:
            paths, labels = [], []
            for c, names in sorted(self.lists[split].items()):
                if self.dataset == "tiered_imagenet_h":
                    paths += [str(imagenet_path(self.root, c, n)) for n in names]
                else:
                    paths += [str(folder[c] / n) for n in names]
                labels += [index[c]] * len(names)
            out[split] = (paths, labels)
        return out

    def _class_folders(self) -> dict[str, Path]:
        """iNaturalist-19: every class's category folder (its list lines are base names)."""
        if self.dataset != "inat19":
            return {}
        folders = inat19_folders(self.root)
        out = {}
        for c in self.hierarchy.leaves:
            category = int(c[3:])  # nat<id>, checked in read_metadata
            if category not in folders:
                raise DataError(
                    f"data.root: no folder train_val2019/<supercategory>/{category}/ for class "
                    f"'{c}' under {self.root}"
                )
            out[c] = folders[category]
        return out
