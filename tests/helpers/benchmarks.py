"""Tiny copies, in the real on-disk formats, of the mistake-severity benchmarks' files:
making-better-mistakes' split archives and isa lists over ImageNet / iNaturalist 2019
folders, FGVC-Aircraft's annotation files, CUB-200-2011's index files with the HSE/HRN tree
list, and HAF's CIFAR-100 tree file."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import torch
from PIL import Image

# An unbalanced WordNet-like tree: n01 and n04 two edges down, n02 and n03 three.
TIERED_EDGES = [("n00001", "n0a"), ("n00001", "n0b"), ("n0a", "n01"), ("n0a", "n0c"),
                ("n0c", "n02"), ("n0c", "n03"), ("n0b", "n04")]  # fmt: skip
TIERED = ["n01", "n02", "n03", "n04"]
INAT_EDGES = [("root", "node_A"), ("node_A", "node_B"), ("node_A", "node_C"),
              ("node_B", "nat0000"), ("node_B", "nat0001"), ("node_C", "nat0002")]  # fmt: skip
INAT = ["nat0000", "nat0001", "nat0002"]
AIRCRAFT = [
    ("707-320", "Boeing 707", "Boeing"),
    ("737-200", "Boeing 737", "Boeing"),
    ("737-300", "Boeing 737", "Boeing"),
    ("Cessna 172", "Cessna 172", "Cessna"),  # a family named as its variant
]
CUB = [("001.Black_footed_Albatross", 1, 1, 1), ("002.Laysan_Albatross", 1, 1, 1),
       ("003.Groove_billed_Ani", 2, 2, 2), ("004.Crested_Auklet", 3, 3, 3),
       ("005.Parakeet_Auklet", 3, 3, 3)]  # fmt: skip

# CIFAR-100's format with 6 classes under 3 superclasses, and HAF's rows over them
FINE = ["apple", "pear", "rose", "tulip", "bee", "ant"]
COARSE = ["fruit", "flowers", "insects"]
PARENT = [0, 0, 1, 1, 2, 2]
# [class, superclass, level 3, level 2, level 1]
HAF_ROWS = [[0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [2, 1, 0, 0, 0], [3, 1, 0, 0, 0],
            [4, 2, 1, 1, 1], [5, 2, 1, 1, 1]]  # fmt: skip


def _image(path: Path, shade: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.full((size, size, 3), shade % 256, dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path, format="PNG")


def write_isa(path: Path, edges: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p} {c}\n" for p, c in edges))
    return path


def write_split_zip(path: Path, top: str, lists: dict[str, dict[str, list[str]]]) -> Path:
    """``<top>/<split>/<class>.txt`` members, one image name per line (folders listed too,
    as the authors' archive lists them)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/", "")
        for split, classes in lists.items():
            archive.writestr(f"{top}/{split}/", "")
            for name, images in classes.items():
                archive.writestr(f"{top}/{split}/{name}.txt", "\n".join(images) + "\n")
    return path


def write_tiered(root: Path, edges: list[tuple[str, str]], leaves: list[str], n: int = 2) -> Path:
    """An ImageNet folder (``train/<wnid>/<wnid>_i.JPEG``, ``val/<wnid>/ILSVRC2012_val_*``)
    with the tieredImageNet-H files: ``n`` training images per class, ``n`` val and ``n``
    test images taken from ImageNet's val, as the authors' lists do."""
    lists: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}, "test": {}}
    count = 0
    for c, wnid in enumerate(leaves):
        lists["train"][wnid] = [f"{wnid}_{i}.JPEG" for i in range(n)]
        for i in range(n):
            _image(root / "train" / wnid / f"{wnid}_{i}.JPEG", 40 * c + i)
        for split in ("val", "test"):
            names = []
            for _ in range(n):
                count += 1
                names.append(f"ILSVRC2012_val_{count:08d}.JPEG")
                _image(root / "val" / wnid / names[-1], 40 * c + 7)
            lists[split][wnid] = names
    write_isa(root / "tiered_imagenet_isa.txt", edges)
    write_split_zip(root / "splits_tiered.zip", "splits_tieredImageNet-H", lists)
    return root


def write_inat19(root: Path, edges: list[tuple[str, str]], leaves: list[str], n: int = 2) -> Path:
    """An iNaturalist 2019 folder (``train_val2019/<supercategory>/<category id>/<md5>.jpg``,
    the last class under ``Birds``, the others under ``Plants``) with the iNaturalist-19
    files: ``natNNNN.txt`` lists of the images' base names, as the code that consumes the
    authors' archive reads it (docs/data.md)."""
    lists: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}, "test": {}}
    for c, name in enumerate(leaves):
        group = "Birds" if c == len(leaves) - 1 else "Plants"
        for s, split in enumerate(lists):
            files = [hashlib.md5(f"{name}{split}{i}".encode()).hexdigest() + ".jpg"
                     for i in range(n)]  # fmt: skip
            for i, f in enumerate(files):
                _image(root / "train_val2019" / group / str(int(name[3:])) / f, 40 * c + 3 * s + i)
            lists[split][name] = files
    write_isa(root / "inaturalist19_isa.txt", edges)
    write_split_zip(root / "splits_inat19.zip", "splits_inat19", lists)
    return root


def write_aircraft(root: Path, rows: list[tuple[str, str, str]], n: int = 2) -> Path:
    """``fgvc-aircraft-2013b/data``: per (variant, family, manufacturer) row ``n`` images in
    each of train, val and test, listed in ``images_<level>_<split>.txt``."""
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("".join(f"{v}\n" for v, _, _ in rows))
    image = 1000000
    for split in ("train", "val", "test"):
        lines: dict[str, list[str]] = {"variant": [], "family": [], "manufacturer": []}
        for c, row in enumerate(rows):
            for _ in range(n):
                image += 1
                _image(data / "images" / f"{image}.jpg", 40 * c + image % 7)
                for level, name in zip(lines, row):
                    lines[level].append(f"{image} {name}\n")
        for level, text in lines.items():
            (data / f"images_{level}_{split}.txt").write_text("".join(text))
    return root


def write_cub(root: Path, species: list[tuple[str, int, int, int]], n: int = 2) -> Path:
    """``CUB_200_2011`` with ``classes.txt``, ``images.txt``, ``train_test_split.txt``,
    ``image_class_labels.txt`` and ``images/``; per ``(class folder, genus, family, order)``
    ``n`` training and ``n`` test images; and the HSE/HRN tree list
    ``train_images_4_level_V1.txt`` over the training images."""
    folder = root / "CUB_200_2011"
    folder.mkdir(parents=True)
    classes, images, split, labels, tree = [], [], [], [], []
    image = 0
    for c, (name, genus, family, order) in enumerate(species, start=1):
        classes.append(f"{c} {name}\n")
        for i in range(2 * n):
            image += 1
            path = f"{name}/{name.split('.', 1)[1]}_{i:04d}.jpg"
            _image(folder / "images" / path, 40 * c + i)
            images.append(f"{image} {path}\n")
            labels.append(f"{image} {c}\n")
            split.append(f"{image} {int(i < n)}\n")
            if i < n:
                tree.append(f"{path} {c} {genus} {family} {order}\n")
    for file, lines in (("classes.txt", classes), ("images.txt", images),
                        ("train_test_split.txt", split), ("image_class_labels.txt", labels),
                        ("train_images_4_level_V1.txt", tree)):  # fmt: skip
        (folder / file).write_text("".join(lines))
    return root


def write_haf(path: Path, rows: list[list[int]], prelude: str = "") -> Path:
    """A file laid out as HAF's ``cifar100_get_tree_target_level5.py``: imports, the
    ``trees`` list of ``[class, level 4, level 3, level 2, level 1]`` rows, functions."""
    body = ",\n".join(f"    {row}" for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"import numpy as np\nimport torch\n{prelude}\ntrees = [\n{body}]\n\n"
        "def get_targets(targets):\n    global trees\n    return trees\n"
    )
    return path
