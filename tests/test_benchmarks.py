"""The mistake-severity benchmarks' readers (tieredImageNet-H, iNaturalist-19, CIFAR-100 with
HAF's tree, FGVC-Aircraft, CUB-200-2011) on small files of the real formats, and the
download of the authors' files from a local server."""

import hashlib
import os
from pathlib import Path

import pytest
import torch

from hierot.config import build, compose_config
from hierot.data import (
    AircraftDataModule,
    BetterMistakesDataModule,
    Cifar100DataModule,
    CubDataModule,
    cub,
    haf,
    mbm,
)
from hierot.data.downloads import AuthorsFile
from hierot.errors import DataError

from helpers.benchmarks import (
    AIRCRAFT,
    COARSE,
    CUB,
    FINE,
    HAF_ROWS,
    INAT,
    INAT_EDGES,
    PARENT,
    TIERED,
    TIERED_EDGES,
    write_aircraft,
    write_cub,
    write_haf,
    write_inat19,
    write_isa,
    write_split_zip,
    write_tiered,
)
from helpers.files import write_cifar100


def data_module(*overrides):
    dm = build(compose_config(list(overrides)).data, "data")
    dm.setup()
    return dm


def one_line_error(cls, **kwargs) -> str:
    """The error of building ``cls(**kwargs)`` and setting it up (built directly: composing
    the config costs 0.2 s a time)."""
    with pytest.raises(DataError) as info:
        cls(**kwargs).setup()
    assert "\n" not in str(info.value)
    return str(info.value)


# ---------------------------------------------------------------- making-better-mistakes


def test_tiered_reads_the_split_lists_over_imagenet_folders(tmp_path):
    write_tiered(tmp_path, TIERED_EDGES, TIERED)
    dm = data_module("data=tiered_imagenet_h", f"data.root={tmp_path}", "data.image_size=8")
    tree = dm.hierarchy
    assert tree.leaves == TIERED and tree.depth == 3 and tree.leaf_depths == [2, 3, 3, 2]
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [8, 8, 8]
    # training images from ImageNet's train, val and test both from ImageNet's val
    assert dm.train_set.paths[0] == str(tmp_path / "train" / "n01" / "n01_0.JPEG")
    assert dm.test_set.paths[0].startswith(str(tmp_path / "val" / "n01" / "ILSVRC2012_val_"))
    assert dm.test_set.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    x, y = dm.val_set[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.uint8 and y == 0


def test_inat19_list_lines_are_image_names_in_their_category_folder(tmp_path):
    write_inat19(tmp_path, INAT_EDGES, INAT)
    dm = data_module("data=inat19", f"data.root={tmp_path}", "data.image_size=8")
    assert dm.hierarchy.leaves == INAT and dm.hierarchy.depth == 3
    # nat0000's first training image, and nat0002's first test image (under another group)
    first = hashlib.md5(b"nat0000train0").hexdigest() + ".jpg"
    assert dm.train_set.paths[0] == str(tmp_path / "train_val2019" / "Plants" / "0" / first)
    assert dm.test_set.paths[-2].startswith(str(tmp_path / "train_val2019" / "Birds" / "2" / ""))
    assert dm.test_set.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # data.root may also be the train_val2019 folder itself
    dm = BetterMistakesDataModule(dataset="inat19", root=str(tmp_path / "train_val2019"),
                                  info_dir=str(tmp_path), image_size=8)  # fmt: skip
    dm.setup()
    assert dm.train_set.paths[0] == str(tmp_path / "train_val2019" / "Plants" / "0" / first)


def test_inat19_problems_are_one_line(tmp_path):
    write_inat19(tmp_path, INAT_EDGES, INAT)
    root = {"dataset": "inat19", "root": str(tmp_path)}
    birds = tmp_path / "train_val2019" / "Birds"
    birds.rename(tmp_path / "Birds")
    assert one_line_error(BetterMistakesDataModule, **root) == (
        "data.root: no folder train_val2019/<supercategory>/2/ for class 'nat0002' under "
        f"{tmp_path}"
    )
    (tmp_path / "Birds").rename(birds)
    (tmp_path / "train_val2019" / "Plants" / "2").mkdir()
    assert one_line_error(BetterMistakesDataModule, **root) == (
        f"data.root: category 2 is in both {birds / '2'} and {tmp_path / 'train_val2019/Plants/2'}"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    kwargs = {**root, "root": str(empty), "info_dir": str(tmp_path)}
    assert one_line_error(BetterMistakesDataModule, **kwargs) == (
        "data.root: no iNaturalist 2019 category folders (train_val2019/<supercategory>/<id>/) "
        f"under {empty}"
    )
    # a class list not named nat<category id>
    lists = mbm.read_split_lists(tmp_path / "splits_inat19.zip")
    for split in lists:
        lists[split]["oak"] = lists[split].pop("nat0000")
    write_split_zip(tmp_path / "splits_inat19.zip", "splits_inat19", lists)
    assert one_line_error(BetterMistakesDataModule, **root) == (
        f"{tmp_path / 'splits_inat19.zip'}: class 'oak' is not nat<category id>"
    )


def test_split_archive_and_tree_problems_are_one_line(tmp_path):
    write_tiered(tmp_path, TIERED_EDGES, TIERED)
    root = {"root": str(tmp_path)}
    (tmp_path / "tiered_imagenet_isa.txt").unlink()
    assert one_line_error(BetterMistakesDataModule, **root) == (
        f"data.info_dir: {tmp_path / 'tiered_imagenet_isa.txt'} is missing (data.download=true "
        f"fetches it from {mbm.DATASETS['tiered_imagenet_h'][0].url})"
    )
    write_isa(tmp_path / "tiered_imagenet_isa.txt", TIERED_EDGES[:-1])  # n04 not in the tree
    assert "n04" in one_line_error(BetterMistakesDataModule, **root)
    (tmp_path / "splits_tiered.zip").write_bytes(b"not a zip")
    message = one_line_error(BetterMistakesDataModule, **root)
    assert message.startswith(f"{tmp_path / 'splits_tiered.zip'}: not a split archive")


def test_download_checks_the_recorded_sha256(tmp_path, monkeypatch):
    from helpers.http import serve

    served = tmp_path / "served"
    write_tiered(served, TIERED_EDGES, TIERED)
    images = tmp_path / "imagenet"
    write_tiered(images, TIERED_EDGES, TIERED)
    for name in ("tiered_imagenet_isa.txt", "splits_tiered.zip"):
        (images / name).unlink()

    def digest(name):
        return hashlib.sha256((served / name).read_bytes()).hexdigest()

    info = tmp_path / "info"
    kwargs = {"root": str(images), "info_dir": str(info), "download": True, "image_size": 8}
    with serve(served) as url:
        files = [AuthorsFile(f.name, f"{url}/{f.name}", digest(f.name) if i < 2 else None)
                 for i, f in enumerate(mbm.DATASETS["tiered_imagenet_h"])]  # fmt: skip
        monkeypatch.setitem(mbm.DATASETS, "tiered_imagenet_h", tuple(files))
        dm = BetterMistakesDataModule(**kwargs)
        assert dm.hierarchy.leaves == TIERED and (info / "splits_tiered.zip").is_file()
        # a file whose checksum differs is removed, the error names its URL
        (info / "splits_tiered.zip").unlink()
        files[1] = AuthorsFile(files[1].name, files[1].url, "0" * 64)
        monkeypatch.setitem(mbm.DATASETS, "tiered_imagenet_h", tuple(files))
        message = one_line_error(BetterMistakesDataModule, **kwargs)
        assert message.startswith(f"data.download: {url}/splits_tiered.zip has sha256 ")
        assert not (info / "splits_tiered.zip").exists()
        # no recorded checksum (the iNaturalist-19 archive): never downloaded
        files[1] = AuthorsFile(files[1].name, files[1].url, digest(files[1].name))
        monkeypatch.setitem(mbm.DATASETS, "tiered_imagenet_h", tuple(files))
        message = one_line_error(BetterMistakesDataModule, **kwargs, distances="authors")
        assert message.startswith("data.download: no checksum is recorded for ")


def test_authors_distances_are_read_and_their_disagreement_is_one_warning(tmp_path, caplog):
    from test_distance_files import write_mbm

    write_tiered(tmp_path, TIERED_EDGES, TIERED)
    # the tree's LCA heights, but 2 where the tree says 1 (n02, n03): one pair differs
    heights = {("n01", "n02"): 2, ("n01", "n03"): 2, ("n01", "n04"): 3, ("n02", "n03"): 2,
               ("n02", "n04"): 3, ("n03", "n04"): 3}  # fmt: skip
    write_mbm(tmp_path / "tiered_imagenet_ilsvrc_distances.pkl.xz", heights)
    dm = BetterMistakesDataModule(root=str(tmp_path), distances="authors")
    with caplog.at_level("WARNING", logger="hierot.data.module"):
        assert dm.lca_heights()[1, 2] == 2 and dm.hierarchy.lca_heights()[1, 2] == 1
        dm.lca_heights()  # warned once per file
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"data.distances: {tmp_path / 'tiered_imagenet_ilsvrc_distances.pkl.xz'}: 1 of 6 class "
        "pairs differ from the tree's LCA heights (first: 'n02' and 'n03', 2 in the file, 1 "
        "in the tree)"
    ]


# Where the authors' real files are (a folder holding them, as fetched from their
# repositories): the trees' sizes against the papers' numbers. Not shipped: hierot's licence
# is MIT, theirs are non-commercial or absent.
REAL = os.environ.get("HIEROT_AUTHORS_FILES")


@pytest.mark.skipif(not REAL, reason="HIEROT_AUTHORS_FILES names no folder of the real files")
def test_the_real_trees_have_the_papers_sizes():
    from hierot.data.cub import read_tree_lines
    from hierot.data.downloads import sha256_of
    from hierot.hierarchy import Hierarchy

    folder = Path(str(REAL))
    for name, (classes, depth) in {"tiered_imagenet_h": (608, 12), "inat19": (1010, 7)}.items():
        isa = folder / mbm.DATASETS[name][0].name
        assert sha256_of(isa) == mbm.DATASETS[name][0].sha256
        tree = Hierarchy.from_file(isa)
        assert (tree.num_classes, tree.depth) == (classes, depth), name
    lines = folder / cub.TREE.name
    assert sha256_of(lines) == cub.TREE.sha256
    names = sorted({line.split("/")[0] for line in lines.read_text().split()[::5]})
    tree = Hierarchy.from_paths(read_tree_lines(lines, names))
    counts = [len(set(tree.ancestors_at(level))) for level in (1, 2, 3)]
    assert (tree.num_classes, counts) == (200, [13, 37, 122])
    rows = haf.read_haf_rows(folder / haf.HAF_TREE.name)
    assert [len({r[k] for r in rows}) for k in range(5)] == [100, 20, 8, 4, 2]


# ---------------------------------------------------------------- CIFAR-100 with HAF's tree


def test_cifar100_haf5_tree_from_the_authors_list(tmp_path):
    write_cifar100(tmp_path, FINE, COARSE, PARENT)
    marker = tmp_path / "ran"
    write_haf(tmp_path / haf.HAF_TREE.name, HAF_ROWS, prelude=f"open({str(marker)!r}, 'w')")
    dm = data_module("data=cifar100", f"data.root={tmp_path}", "data.tree=haf5")
    tree = dm.hierarchy
    assert tree.leaves == FINE and tree.depth == 5 and dm.level_names == haf.LEVEL_NAMES
    assert tree.path("bee")[1:] == ["l1-1", "l2-1", "l3-1", "insects", "bee"]
    assert not marker.exists()  # the file's statements were parsed, none run
    # the source / target split keeps HAF's tree over its classes
    dm = Cifar100DataModule(root=str(tmp_path), tree="haf5", split="target")
    assert dm.hierarchy.leaves == FINE and dm.hierarchy.depth == 5


def test_cifar100_haf5_problems_are_one_line(tmp_path):
    write_cifar100(tmp_path, FINE, COARSE, PARENT)
    file = tmp_path / haf.HAF_TREE.name
    root = {"root": str(tmp_path)}
    assert one_line_error(Cifar100DataModule, **root, tree="haf5").startswith(
        f"data.info_dir: {file} is missing (data.download=true fetches it from https://"
    )
    write_haf(file, [*HAF_ROWS[:5], [5, 1, 1, 1, 1]])
    assert one_line_error(Cifar100DataModule, **root, tree="haf5") == (
        f"{file}: class 5 ('ant') is under superclass 1, but CIFAR-100 puts it under 2 ('insects')"
    )
    write_haf(file, [*HAF_ROWS[:5], [5, 2, 1]])
    assert one_line_error(Cifar100DataModule, **root, tree="haf5") == (
        f"{file}:10: expected a row of 5 integer ids"
    )
    assert one_line_error(Cifar100DataModule, **root, tree="haf7") == (
        "data.tree: unknown 'haf7'; available: superclass, haf5"
    )
    assert one_line_error(Cifar100DataModule, **root, tree="haf5", height=3) == (
        "data.height: data.tree=haf5 brings its own tree; drop one"
    )


# ---------------------------------------------------------------- FGVC-Aircraft


def test_aircraft_tree_from_the_annotation_files(tmp_path):
    write_aircraft(tmp_path, AIRCRAFT)
    dm = data_module("data=aircraft", f"data.root={tmp_path}", "data.image_size=8")
    tree = dm.hierarchy
    assert tree.leaves == [v for v, _, _ in AIRCRAFT] and dm.level_names == ["manufacturer",
                                                                             "family"]  # fmt: skip
    # a family named as a variant stays a node of its own
    assert tree.path("Cessna 172")[1:] == ["manufacturer:Cessna", "family:Cessna 172", "Cessna 172"]
    assert [len(set(tree.ancestors_at(level))) for level in (1, 2)] == [2, 3]
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [8, 8, 8]
    # trainval with validation held out
    dm = AircraftDataModule(root=str(tmp_path), train_split="val", val_split=None,
                            val_fraction=0.25)  # fmt: skip
    dm.setup()
    assert [len(dm.train_set), len(dm.val_set)] == [6, 2]


def test_aircraft_inconsistent_annotations_name_the_line(tmp_path):
    write_aircraft(tmp_path, AIRCRAFT)
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    family = data / "images_family_test.txt"
    lines = family.read_text().splitlines()
    family.write_text("\n".join([*lines[:3], "1000020 Boeing 747", *lines[4:]]) + "\n")
    assert one_line_error(AircraftDataModule, root=str(tmp_path)) == (
        f"{family}:4: '737-200' is under two families"
    )
    (data / "variants.txt").write_text("707-320\n")
    family.write_text("\n".join(lines) + "\n")
    message = one_line_error(AircraftDataModule, root=str(tmp_path))
    assert message == f"{data / 'variants.txt'}: variant '737-200' of the annotations is not listed"


# ---------------------------------------------------------------- CUB-200-2011


def test_cub_four_level_tree_from_the_hse_list(tmp_path):
    write_cub(tmp_path, CUB)
    dm = data_module("data=cub", f"data.root={tmp_path}", "data.image_size=8",
                     "data.val_fraction=0.2")  # fmt: skip
    tree = dm.hierarchy
    assert tree.leaves == [c for c, *_ in CUB] and tree.depth == 4
    assert dm.level_names == ["order", "family", "genus"]
    assert tree.path("004.Crested_Auklet")[1:] == ["order:3", "family:3", "genus:3",
                                               "004.Crested_Auklet"]  # fmt: skip
    assert [len(dm.train_set) + len(dm.val_set), len(dm.test_set)] == [10, 10]
    assert dm.test_set.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_cub_list_problems_name_the_line(tmp_path):
    write_cub(tmp_path, CUB)
    lines_file = tmp_path / "CUB_200_2011" / cub.TREE.name
    lines = lines_file.read_text().splitlines()
    root = {"root": str(tmp_path)}
    first = lines[0].split()[0]
    lines_file.write_text("\n".join([f"{first} 1 1 2 1", *lines[1:]]) + "\n")
    message = one_line_error(CubDataModule, **root)
    assert message == f"{lines_file}:2: genus:1 is under family:2 and family:1"
    lines_file.write_text("\n".join([lines[0] + " 9", *lines[1:]]) + "\n")
    assert one_line_error(CubDataModule, **root).startswith(f"{lines_file}:1: expected '<image> ")
    lines_file.write_text("\n".join(lines[:-2]) + "\n")
    assert one_line_error(CubDataModule, **root) == (
        f"{lines_file}: class '005.Parakeet_Auklet' is not in the list"
    )
