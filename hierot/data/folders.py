"""Datasets stored as one folder per fine class: any ImageFolder tree with a hierarchy file, and
iNaturalist 2021, whose folder names carry the taxonomy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchvision.datasets.folder import make_dataset

from hierot.data.images import (
    IMAGE_EXTENSIONS,
    FileImages,
    Transform,
    carve_validation,
    eval_transform,
    train_transform,
)
from hierot.data.module import (
    HierarchyDataModule,
    check_split,
    data_root,
    split_by_parent,
    warn_leaves_without_data,
)
from hierot.errors import DataError
from hierot.hierarchy import Hierarchy
from hierot.hierarchy.labels import label_index

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
    split: Path, classes: Sequence[str] | Mapping[str, int], only_classes: bool = False
) -> tuple[list[str], list[int]]:
    """``(paths, labels)`` of the images of a split, labels by position in ``classes``, or
    ``classes[folder]`` where it maps folders to labels (several folders may share one, as
    the ImageNet classes of a BREEDS superclass do). A class folder that is not one of
    ``classes`` is an error naming it, or skipped with ``only_classes`` (a subset of a
    bigger dataset, as BREEDS takes from ImageNet)."""
    present = class_folders(split)
    if isinstance(classes, Mapping):
        index = dict(classes)
    else:
        index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in present if c not in index]
    if unknown and not only_classes:
        raise DataError(f"{split / unknown[0]}: class '{unknown[0]}' is not in the hierarchy")
    present = [c for c in present if c in index]
    missing = [c for c in index if c not in present]
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
    without a val folder a seeded ``val_fraction`` of train is held out. Subclasses read
    the tree (leaves = the class names, in label order) in ``read_tree``, from the folder
    names and their own files, opening no image."""

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
        eval_resize: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_size=image_size, **kwargs)
        self.root_arg = root
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.only_classes = False  # subclasses that take a subset of the class folders set it
        # folder -> class id, for subclasses whose classes pool several folders; None: one
        # folder per class, named as the hierarchy's leaves
        self.folders: dict[str, int] | None = None
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.train_tf = train_transform(image_size, augment)
        self.eval_tf = eval_transform(image_size, eval_resize)

    def file_transform(self) -> Transform:
        """The test split's transform (``eval_resize``, then the central ``image_size``)."""
        return self.eval_tf

    def unaugmented(self, train: FileImages) -> FileImages:  # type: ignore[override]
        """The training images through the test split's transform: a kNN bank, class
        prototypes and a linear probe read them as the test images are read."""
        return FileImages(train.paths, train.labels.tolist(), self.eval_tf)

    def read_metadata(self) -> Hierarchy:
        self.root = data_root(self.root_arg, "the split folders")
        for name in ("train", "test"):
            class_folders(self.root / self.splits[name])  # fail now, before any training
        return self.read_tree()

    def read_tree(self) -> Hierarchy:
        """The tree over the classes, from the class folders of ``root`` and the
        subclass's own files; sets ``folders`` and ``only_classes`` where it needs them."""
        raise NotImplementedError

    def description(self) -> dict[str, object]:
        """The base description, plus per class the folders it holds in this run where a
        class pools several (BREEDS superclasses, iNaturalist taxa above species)."""
        out = super().description()
        if self.folders is not None:
            leaves = self.hierarchy.leaves
            held: dict[str, list[str]] = {c: [] for c in leaves}
            for name, i in self.folders.items():
                held[leaves[i]].append(name)
            out["folders"] = held
        return out

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        leaves = self.hierarchy.leaves  # reads the metadata, which may set ``folders``
        classes = self.folders if self.folders is not None else leaves

        def scan(split: Path) -> tuple[list[str], list[int]]:
            refuse_inner_folders(split, self._inner_labels)
            return scan_split(split, classes, self.only_classes)

        train = self.root / self.splits["train"]
        paths, labels = scan_split(train, self.train_labels(classes), self.only_classes)
        val_dir = self.root / self.splits["val"] if self.splits["val"] else None
        if val_dir is not None and val_dir.is_dir():
            self.train_set = FileImages(paths, labels, self.train_tf)
            self.val_set = FileImages(*scan(val_dir), self.eval_tf)
        else:
            # held out from the images of a class only: validation is scored on the classes
            k = len(leaves)
            at_class = [i for i, label in enumerate(labels) if label < k]
            tr, va = carve_validation(len(at_class), self.val_fraction, self.split_seed)
            kept = [at_class[i] for i in tr] + [i for i, label in enumerate(labels) if label >= k]
            held = [at_class[i] for i in va]
            self.train_set = FileImages([paths[i] for i in kept], [labels[i] for i in kept],
                                        self.train_tf)  # fmt: skip
            self.val_set = FileImages([paths[i] for i in held], [labels[i] for i in held],
                                      self.eval_tf)  # fmt: skip
        self.test_set = FileImages(*scan(self.root / self.splits["test"]), self.eval_tf)

    def train_labels(self, classes: Sequence[str] | Mapping[str, int]) -> Mapping[str, int]:
        """Folder -> label of the training split: the classes' (``classes``: their names
        in label order, or a folder mapping), and the inner nodes' folders' own labels
        (``hierot.hierarchy.labels``)."""
        if isinstance(classes, Mapping):
            index = dict(classes)
        else:
            index = {c: i for i, c in enumerate(classes)}
        if not self._inner_labels:
            return index
        nodes = label_index(self.hierarchy)
        return index | {node: nodes[node] for node in self._inner_labels}


def read_split_file(path: str | Path, classes: Sequence[str]) -> dict[str, str]:
    """``{class folder: "source" | "target"}`` from a text file of ``<class> <source|target>``
    lines (``#`` starts a comment); every class folder must be listed once."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"data.split_file: cannot read {file} ({e})") from None
    marks: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        where = f"{file}:{lineno}"
        if len(parts) != 2 or parts[1] not in ("source", "target"):
            raise DataError(f"{where}: expected '<class> source' or '<class> target', got {line!r}")
        if parts[0] in marks:
            raise DataError(f"{where}: class '{parts[0]}' is listed twice")
        marks[parts[0]] = parts[1]
    missing = [c for c in classes if c not in marks]
    if missing:
        raise DataError(f"{file}: class folder '{missing[0]}' is neither source nor target")
    return marks


def refuse_inner_folders(split: Path, inner: Mapping[str, int]) -> None:
    """A one-line ``DataError`` for a folder of an evaluation ``split`` named after one of
    the ``inner`` nodes the training split labels images at: validation and test are
    scored on the classes."""
    if not inner or not split.is_dir():
        return
    for name in sorted(p.name for p in split.iterdir() if p.is_dir()):
        if name in inner:
            raise DataError(
                f"{split / name}: images labelled at inner node '{name}': only the training "
                "split may hold such labels (validation and test are scored on the classes)"
            )


def inner_folders(tree: Hierarchy, folders: Sequence[str], split: Path) -> list[str]:
    """The ``folders`` of a training ``split`` named after an inner node of ``tree`` (their
    images are labelled only to that node); the root is refused in one line."""
    leaves = set(tree.leaves)
    inner = [f for f in folders if f in tree.nodes and f not in leaves]
    if tree.root in inner:
        raise DataError(
            f"{split / tree.root}: '{tree.root}' is the root of {tree.source or 'the hierarchy'}:"
            " a label there says nothing; move the images into the folder of a class or a "
            "node below it"
        )
    return inner


def count_inner_images(tree: Hierarchy, inner: Sequence[str], split: Path) -> dict[str, int]:
    """``{node: images}`` of the ``inner`` node folders of ``split`` (files listed, none
    opened); a node with no class of ``tree`` below it is an error naming its folder."""
    counts = {}
    for node in inner:
        if node not in tree.nodes:
            raise DataError(
                f"{split / node}: inner node '{node}' has no class folder below it in {split}"
            )
        found = make_dataset(str(split), {node: 0}, IMAGE_EXTENSIONS, allow_empty=True)
        counts[node] = len(found)
    return counts


class ImageFolderDataModule(FolderDataModule):
    """Any class-folder dataset plus a hierarchy file (nested JSON/YAML, CSV/TSV paths or an
    edge list) whose leaves include every class folder; the classes are the training folders in
    sorted order.

    ``split=source|target`` keeps the class folders a ``split_file`` marks so (the OT-CPCC
    protocol's disjoint source and target classes), in the same sorted order."""

    def __init__(
        self,
        hierarchy: str | None = None,
        split: str = "all",
        split_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.split = check_split(split)
        if not hierarchy:
            raise DataError("data.hierarchy: not set (a hierarchy file over the class folders)")
        if split != "all" and not split_file:
            raise DataError(
                f"data.split_file: not set; data.split={split} needs a file marking each "
                "class folder source or target"
            )
        self.hierarchy_file = hierarchy
        self.split_file = split_file

    def read_tree(self) -> Hierarchy:
        train = self.root / self.splits["train"]
        classes = class_folders(train)
        tree = Hierarchy.from_file(self.hierarchy_file)
        inner = inner_folders(tree, classes, train)
        classes = [c for c in classes if c not in inner]
        tree.check_classes(classes)
        warn_leaves_without_data(tree, classes)
        if self.split != "all":
            marks = read_split_file(self.split_file, classes)  # type: ignore[arg-type]
            classes = [c for c in classes if marks[c] == self.split]
            if not classes:
                raise DataError(f"{self.split_file}: no class folder is marked {self.split}")
            self.only_classes = True  # the other half's folders are skipped
        tree = tree.with_classes(classes)
        if self.split != "all":  # an inner node's folder goes with its node's classes
            inner = [node for node in inner if node in tree.nodes]
        self._inner_labels = count_inner_images(tree, inner, train)
        return tree


# The OT-CPCC paper's iNaturalist split: in every parent with more than SMALL_PARENT classes
# the first TARGET_FRACTION of them (in class-id order, rounded down) are the target classes;
# parents with fewer are left out (uiuctml/OTCPCC dataset/inat/data.py).
TARGET_FRACTION = 0.4
SMALL_PARENT = 2


def inat_split(parents: Sequence[str], split: str) -> list[int]:
    """Class ids of ``split`` (``parents[i]`` is class i's parent): per parent with more than
    ``SMALL_PARENT`` classes its first ``int(TARGET_FRACTION x count)`` are ``target``, the
    others ``source``; ``all`` is every class."""
    return split_by_parent(
        parents,
        split,
        lambda count: None if count <= SMALL_PARENT else int(TARGET_FRACTION * count),
    )


class INatDataModule(FolderDataModule):
    """iNaturalist 2021 (``train_mini/`` or ``train/``, ``val/``): class folders are named
    ``NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_species``; ``ranks`` picks the levels of the
    tree above the classes (default all six). ``val/`` is the test split; validation is held out
    from the training split.

    ``fine_rank`` picks what a class is: a species (one folder), or a taxon of a higher rank
    holding all its species' folders (the OT-CPCC paper: ``class`` under ``phylum``). Taxa are
    numbered in the order of their first folder and told apart by name, as the authors' code
    does. ``split=source|target`` is the paper's class split (``inat_split``), grouping the
    classes by their parent in the tree."""

    def __init__(
        self,
        ranks: Sequence[str] = INAT_RANKS[:-1],
        fine_rank: str = "species",
        split: str = "all",
        train_split: str = "train_mini",
        test_split: str = "val",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("val_split", None)
        super().__init__(train_split=train_split, test_split=test_split, **kwargs)
        self.split = check_split(split)
        if fine_rank not in INAT_RANKS:
            raise DataError(
                f"data.fine_rank: unknown rank '{fine_rank}'; choose from {', '.join(INAT_RANKS)}"
            )
        above = INAT_RANKS[: INAT_RANKS.index(fine_rank)]
        bad = [r for r in ranks if r not in above]
        if bad or not ranks:
            raise DataError(
                f"data.ranks: {bad[0] if bad else 'none'} is not a rank above {fine_rank}; "
                f"choose from {', '.join(above) or 'none'}"
            )
        self.fine_rank = fine_rank
        self.ranks = sorted(ranks, key=INAT_RANKS.index)

    def read_tree(self) -> Hierarchy:
        """The tree from the training split's folder names (one rank per name part)."""
        fine_rank, order = self.fine_rank, self.ranks
        folder = self.root / self.splits["train"]
        names = class_folders(folder)
        # per class (in first-folder order): its label, its path of ancestors, its folders
        labels: list[str] = []
        ids: dict[str, int] = {}
        paths: dict[str, list[str]] = {}
        folders: dict[str, int] = {}
        for name in names:
            parts = name.split("_")
            if len(parts) != 1 + len(INAT_RANKS) or not parts[0].isdigit():
                raise DataError(
                    f"{folder / name}: not an iNaturalist 2021 class folder name "
                    "(NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_species)"
                )
            taxa = dict(zip(INAT_RANKS, parts[1:]))
            label = name if fine_rank == "species" else f"{fine_rank}:{taxa[fine_rank]}"
            if label not in ids:
                ids[label] = len(labels)
                labels.append(label)
                # Prefix each node with its rank so that equal names at two ranks stay distinct.
                paths[label] = [f"{rank}:{taxa[rank]}" for rank in order]
            folders[name] = ids[label]
        kept = inat_split([paths[c][-1] for c in labels], self.split)
        if not kept:
            raise DataError(f"data.split: no {fine_rank} is in the {self.split} split of {folder}")
        new_id = {old: new for new, old in enumerate(kept)}
        tree = Hierarchy.from_paths(
            [[*paths[labels[i]], labels[i]] for i in kept], source=str(folder)
        )
        if fine_rank != "species" or self.split != "all":
            self.folders = {f: new_id[c] for f, c in folders.items() if c in new_id}
            self.only_classes = True  # folders of classes outside the split are skipped
        if self._level_names is None:
            # A rank with one taxon on top (all Animalia, say) becomes the root, not a level.
            self._level_names = order[len(order) - (tree.depth - 1) :]
        return tree
