import json
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from hierot.config import build, compose_config
from hierot.data.images import read_image
from hierot.errors import DataError
from hierot.hierarchy import Hierarchy, HierarchyError

from helpers.files import write_cifar10, write_cifar100, write_folders

FINE = ["apple", "pear", "rose", "tulip", "bee", "ant"]
COARSE = ["fruit", "flowers", "insects"]
PARENT = [0, 0, 1, 1, 2, 2]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]  # fmt: skip
FAST = ["debug=fast"]


def data_module(*overrides):
    dm = build(compose_config(list(overrides)).data, "data")
    dm.setup()
    return dm


def run_main(tmp_path, *overrides):
    out = tmp_path / "run"
    run = subprocess.run(
        [sys.executable, "-m", "hierot.train", *FAST, *overrides, f"hydra.run.dir={out}"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def fails(tmp_path, *overrides):
    run = subprocess.run(
        [sys.executable, "-m", "hierot.train", *FAST, *overrides, f"hydra.run.dir={tmp_path}/r"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-3000:]
    # Lightning's own log lines may come first; the run ends with one line and no traceback.
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("hierot: error: ") and run.stderr.count("hierot: error") == 1
    return last


# ---------------------------------------------------------------- CIFAR


def test_cifar100_reads_the_official_pickles_and_superclasses(tmp_path):
    write_cifar100(tmp_path, FINE, COARSE, PARENT, n=5)
    dm = data_module("data=cifar100", f"data.root={tmp_path}", "data.val_fraction=0.2")
    assert dm.hierarchy.leaves == FINE and dm.hierarchy.depth == 2
    assert dm.hierarchy.ancestors_at(1) == [
        "fruit",
        "fruit",
        "flowers",
        "flowers",
        "insects",
        "insects",
    ]
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (24, 6, 30)
    x, y = dm.test_set[7]
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and y == 1
    assert dm.level_names == ["coarse"]


def test_cifar100_with_a_deeper_tree_file(tmp_path):
    write_cifar100(tmp_path, FINE, COARSE, PARENT)
    tree = tmp_path / "tree.csv"
    tree.write_text("".join(f"{'plant' if p < 2 else 'animal'},{COARSE[p]},{f}\n"
                            for f, p in zip(FINE, PARENT)))  # fmt: skip
    dm = data_module("data=cifar100", f"data.root={tmp_path}", f"data.hierarchy={tree}")
    assert dm.hierarchy.depth == 3 and dm.hierarchy.leaves == FINE


@pytest.mark.slow
def test_cifar100_trains_through_the_main_job(tmp_path):
    write_cifar100(tmp_path, FINE, COARSE, PARENT)
    metrics = run_main(tmp_path, "data=cifar100", f"data.root={tmp_path}")
    assert {"test/acc_fine", "test/acc_coarse", "test/cpcc"} <= set(metrics)
    assert metrics["steps"] == 1


@pytest.mark.slow
def test_cifar10_tree_from_config_and_main_job(tmp_path):
    write_cifar10(tmp_path, CIFAR10)
    dm = data_module("data=cifar10", f"data.root={tmp_path / 'cifar-10-batches-py'}")
    assert dm.hierarchy.leaves == CIFAR10
    assert dm.hierarchy.ancestors_at(1)[:3] == ["vehicle", "vehicle", "animal"]
    assert len(dm.train_set) + len(dm.val_set) == 100 and len(dm.test_set) == 20
    metrics = run_main(tmp_path, "data=cifar10", f"data.root={tmp_path}", "dist=emd")
    assert "test/acc_coarse" in metrics and metrics["dist"] == "emd"


def test_cifar10_source_and_target_are_the_papers_classes(tmp_path):
    folder = write_cifar10(tmp_path, CIFAR10)
    source = data_module("data=cifar10", f"data.root={folder}", "data.split=source")
    target = data_module("data=cifar10", f"data.root={folder}", "data.split=target")
    # uiuctml/OTCPCC dataset/cifar10/data.py: the class lists and coarse maps of its splits
    assert source.hierarchy.leaves == ["deer", "dog", "frog", "horse", "ship", "truck"]
    assert source.hierarchy.ancestors_at(1) == ["animal"] * 4 + ["vehicle"] * 2
    assert target.hierarchy.leaves == ["airplane", "automobile", "bird", "cat"]
    assert target.hierarchy.ancestors_at(1) == ["vehicle"] * 2 + ["animal"] * 2
    # 10 images per class in train (5 batches x 2), 2 in test; labels renumbered in order
    assert len(source.train_set) + len(source.val_set) == 60 and len(source.test_set) == 12
    assert target.test_set.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    x, y = source.test_set[0]
    full = data_module("data=cifar10", f"data.root={folder}")
    assert torch.equal(x, full.test_set[8][0]) and y == 0  # deer: class 4 of the full set
    with pytest.raises(DataError, match=r"data\.target_classes: 'plane' is not a class of"):
        data_module("data=cifar10", f"data.root={folder}", "data.split=target",
                    "data.target_classes=[plane]")  # fmt: skip


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "meta").write_text("not a pickle"),
         "meta: not the official CIFAR-100 python format"),
        (lambda f: (f / "train").unlink(), "train: missing (expected the official CIFAR-100"),
        (lambda f: __import__("pickle").dump({b"data": 1}, (f / "test").open("wb")),
         "test: not the official CIFAR-100 python format (no key 'fine_labels')"),
    ],
)  # fmt: skip
def test_cifar_file_not_in_the_official_format(tmp_path, damage, message):
    folder = write_cifar100(tmp_path, FINE, COARSE, PARENT)
    damage(folder)
    with pytest.raises(DataError, match=re.escape(message)):
        data_module("data=cifar100", f"data.root={tmp_path}")


@pytest.mark.parametrize(("data", "what"), [("cifar100", "CIFAR-100"), ("cifar10", "CIFAR-10")])
def test_a_missing_cifar_root_points_to_data_download(tmp_path, data, what):
    with pytest.raises(DataError) as info:
        data_module(f"data={data}", f"data.root={tmp_path / 'none'}")
    assert str(info.value) == (
        f"data.root: no such folder: {tmp_path / 'none'} (data.download=true downloads {what} "
        "into it)"
    )


# ---------------------------------------------------------------- ImageFolder


def folder_tree(tmp_path, **splits):
    classes = ["cat", "dog", "car", "bus"]
    write_folders(tmp_path / "data", {s: classes for s in splits or ("train", "test")})
    tree = tmp_path / "tree.json"
    tree.write_text(json.dumps({"animal": ["cat", "dog"], "vehicle": ["car", "bus"]}))
    return tmp_path / "data", tree


@pytest.mark.slow
def test_image_folder_resizes_and_trains(tmp_path):
    root, tree = folder_tree(tmp_path)
    dm = data_module("data=imagefolder", f"data.root={root}", f"data.hierarchy={tree}",
                     "data.image_size=16", "data.val_fraction=0.25")  # fmt: skip
    assert dm.hierarchy.leaves == ["bus", "car", "cat", "dog"]  # folder order
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (9, 3, 12)
    assert dm.test_set[0][0].shape == (3, 16, 16) and dm.train_set[0][0].shape == (3, 16, 16)
    metrics = run_main(tmp_path, "data=imagefolder", f"data.root={root}",
                       f"data.hierarchy={tree}", "data.image_size=16")  # fmt: skip
    assert "test/acc_level1" in metrics


def test_image_folder_plain_training_images_are_read_as_the_test_reads_them(tmp_path):
    # the kNN bank, prototypes and linear probes read the training images without the
    # training augmentation: the test transform, the same tensor on every read
    root, tree = folder_tree(tmp_path)
    dm = data_module("data=imagefolder", f"data.root={root}", f"data.hierarchy={tree}",
                     "data.image_size=16", "data.val_fraction=0.25")  # fmt: skip
    plain = dm.plain_train_set()
    assert plain.transform is dm.eval_tf and dm.train_set.transform is dm.train_tf
    assert plain.paths == dm.train_set.paths and torch.equal(plain.labels, dm.train_set.labels)
    assert torch.equal(plain[0][0], plain[0][0])
    assert torch.equal(plain[0][0], dm.eval_tf(read_image(plain.paths[0])))


def test_tree_leaves_without_data_are_named_and_a_csv_header_is_suspected(tmp_path, caplog):
    root, _ = folder_tree(tmp_path)
    tree = tmp_path / "tree.csv"
    tree.write_text("tier,class\nanimal,cat\nanimal,dog\nvehicle,car\nvehicle,bus\n")
    dm = build(compose_config(["data=imagefolder", f"data.root={root}",
                               f"data.hierarchy={tree}"]).data, "data")  # fmt: skip
    with caplog.at_level("WARNING"):
        assert dm.hierarchy.leaves == ["bus", "car", "cat", "dog"]
    assert f"{tree}: 1 leaf has no data and is left out: 'class' (a header row?" in caplog.text
    caplog.clear()
    tree.write_text("animal,cat\nanimal,dog\nvehicle,car\nvehicle,bus\n")
    dm = build(compose_config(["data=imagefolder", f"data.root={root}",
                               f"data.hierarchy={tree}"]).data, "data")  # fmt: skip
    with caplog.at_level("WARNING"):
        dm.hierarchy  # noqa: B018
    assert caplog.text == ""


def test_image_folder_split_file_marks_source_and_target_classes(tmp_path):
    root, tree = folder_tree(tmp_path)
    marks = tmp_path / "split.txt"
    marks.write_text("# class  half\ncat target\ndog source\ncar target  # one per parent\n"
                     "bus source\n")  # fmt: skip
    common = ["data=imagefolder", f"data.root={root}", f"data.hierarchy={tree}",
              f"data.split_file={marks}", "data.image_size=16"]  # fmt: skip
    source = data_module(*common, "data.split=source")
    target = data_module(*common, "data.split=target")
    assert source.hierarchy.leaves == ["bus", "dog"] and target.hierarchy.leaves == ["car", "cat"]
    assert source.hierarchy.ancestors_at(1) == ["vehicle", "animal"]
    assert len(source.test_set) == 6 and source.test_set.labels.tolist() == [0] * 3 + [1] * 3
    assert source.description()["split"] == "source"
    marks.write_text("cat target\ndog source\ncar sauce\n")
    with pytest.raises(DataError, match=re.escape(f"{marks}:3: expected '<class> source' or")):
        data_module(*common, "data.split=source")
    marks.write_text("cat target\ndog source\ncar target\n")
    with pytest.raises(DataError, match="class folder 'bus' is neither source nor target"):
        data_module(*common, "data.split=source")
    with pytest.raises(DataError, match=r"data\.split_file: not set; data\.split=target needs"):
        data_module(*common[:3], "data.split=target")


def test_image_folder_with_its_own_val_split(tmp_path):
    root, tree = folder_tree(tmp_path, train=1, val=1, test=1)
    dm = data_module("data=imagefolder", f"data.root={root}", f"data.hierarchy={tree}")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 12, 12)


def test_missing_root_and_split_folder(tmp_path):
    root, tree = folder_tree(tmp_path)
    with pytest.raises(DataError, match=r"data\.root: no such folder: .*nowhere"):
        data_module(
            "data=imagefolder", f"data.root={tmp_path / 'nowhere'}", f"data.hierarchy={tree}"
        )
    with pytest.raises(DataError, match=r"data/exam: missing split folder"):
        data_module(
            "data=imagefolder",
            f"data.root={root}",
            f"data.hierarchy={tree}",
            "data.test_split=exam",
        )


def test_empty_split(tmp_path):
    root, tree = folder_tree(tmp_path)
    for d in (root / "test").iterdir():
        for f in d.iterdir():
            f.unlink()
    with pytest.raises(DataError, match=r"data/test: empty split \(no images"):
        data_module("data=imagefolder", f"data.root={root}", f"data.hierarchy={tree}")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"data/empty: empty split \(no class folders\)"):
        data_module(
            "data=imagefolder",
            f"data.root={root}",
            f"data.hierarchy={tree}",
            "data.test_split=empty",
        )


def test_class_folder_absent_from_the_hierarchy(tmp_path):
    root, tree = folder_tree(tmp_path)
    (root / "test" / "zebra").mkdir()
    write_folders(root, {"train": ["zebra"]})
    with pytest.raises(HierarchyError, match="zebra"):
        data_module("data=imagefolder", f"data.root={root}", f"data.hierarchy={tree}")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("tree.txt", "animal cat\nvehicle cat\n", "tree.txt:2: node 'cat' has two parents"),
        ("tree.txt", "a b\nb c\nc a\n", "tree.txt:.*cycle"),
        ("tree.json", '{"animal": ["cat" "dog"]}', "tree.json:1: malformed JSON"),
        ("tree.yaml", "animal: [cat, dog\n", "tree.yaml:.*malformed YAML"),
        ("tree.csv", 'animal,"cat\n', "tree.csv:1: malformed CSV"),
    ],
)
def test_bad_hierarchy_file(tmp_path, name, text, message):
    root, _ = folder_tree(tmp_path)
    (tmp_path / name).write_text(text)
    with pytest.raises(HierarchyError, match=message):
        data_module("data=imagefolder", f"data.root={root}", f"data.hierarchy={tmp_path / name}")


@pytest.mark.slow
def test_corrupt_image_is_named(tmp_path):
    root, tree = folder_tree(tmp_path)
    bad = root / "train" / "cat" / "img1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    line = fails(tmp_path, "data=imagefolder", f"data.root={root}", f"data.hierarchy={tree}",
                 "data.num_workers=1", "trainer.limit_train_batches=null")  # fmt: skip
    assert line.startswith(f"hierot: error: {bad}: corrupt or unreadable image")


@pytest.mark.slow
def test_bad_data_from_the_command_line_is_one_line(tmp_path):
    line = fails(tmp_path, "data=cifar100", f"data.root={tmp_path / 'none'}")
    assert line == (f"hierot: error: data.root: no such folder: {tmp_path / 'none'} "
                    "(data.download=true downloads CIFAR-100 into it)")  # fmt: skip
    assert (
        fails(tmp_path, "data=cifar100")
        == "hierot: error: data: Missing mandatory value: data.root"
    )
    root, tree = folder_tree(tmp_path)
    line = fails(tmp_path, "data=imagefolder", f"data.root={root}", f"data.hierarchy={tree}",
                 "data.level_names=[a,b]")  # fmt: skip
    assert line == ("hierot: error: data.level_names: 2 names (a, b) but the tree has 1 levels "
                    "above the classes")  # fmt: skip
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- iNaturalist


INAT = [
    "00000_Animalia_Arthropoda_Insecta_Hymenoptera_Apidae_Apis_mellifera",
    "00001_Animalia_Arthropoda_Insecta_Hymenoptera_Formicidae_Formica_rufa",
    "00002_Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus_corax",
    "00003_Plantae_Tracheophyta_Magnoliopsida_Rosales_Rosaceae_Rosa_canina",
]


@pytest.mark.slow
def test_inat_tree_from_folder_names_and_rank_choice(tmp_path):
    write_folders(tmp_path, {"train_mini": INAT, "val": INAT}, n=4)
    dm = data_module("data=inat", f"data.root={tmp_path}", "data.image_size=16")
    assert dm.hierarchy.depth == 7 and dm.level_names[0] == "kingdom"
    assert dm.hierarchy.tree_distances()[0, 1] == 6  # same family, different genus
    dm = data_module("data=inat", f"data.root={tmp_path}", "data.ranks=[class,family]")
    assert dm.hierarchy.depth == 3 and dm.level_names == ["class", "family"]
    assert dm.hierarchy.ancestors_at(1) == [
        "class:Insecta",
        "class:Insecta",
        "class:Aves",
        "class:Magnoliopsida",
    ]
    metrics = run_main(tmp_path, "data=inat", f"data.root={tmp_path}", "data.image_size=16",
                       "data.ranks=[kingdom,order]")  # fmt: skip
    assert {"test/acc_kingdom", "test/acc_order", "test/acc_fine"} <= set(metrics)


# Phyla with 3 and 5 classes, one with 2 and one with 1 (left out of a split); Insecta and
# Aves hold two species each.
INAT_PAPER = [
    "00000_Animalia_Arthropoda_Insecta_Hymenoptera_Apidae_Apis_mellifera",
    "00001_Animalia_Arthropoda_Insecta_Hymenoptera_Formicidae_Formica_rufa",
    "00002_Animalia_Arthropoda_Arachnida_Araneae_Araneidae_Araneus_diadematus",
    "00003_Animalia_Arthropoda_Malacostraca_Decapoda_Cancridae_Cancer_pagurus",
    "00004_Animalia_Chordata_Actinopterygii_Perciformes_Percidae_Perca_fluviatilis",
    "00005_Animalia_Chordata_Amphibia_Anura_Ranidae_Rana_temporaria",
    "00006_Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus_corax",
    "00007_Animalia_Chordata_Aves_Passeriformes_Paridae_Parus_major",
    "00008_Animalia_Chordata_Mammalia_Carnivora_Felidae_Felis_catus",
    "00009_Animalia_Chordata_Reptilia_Squamata_Lacertidae_Lacerta_agilis",
    "00010_Fungi_Basidiomycota_Agaricomycetes_Agaricales_Amanitaceae_Amanita_muscaria",
    "00011_Plantae_Tracheophyta_Liliopsida_Asparagales_Orchidaceae_Orchis_mascula",
    "00012_Plantae_Tracheophyta_Magnoliopsida_Rosales_Rosaceae_Rosa_canina",
]


def authors_inat_split(folders, images_per_folder):
    """uiuctml/OTCPCC dataset/inat/data.py, transcribed: class ids by first appearance, the
    phylum of each, and their loop over the training images sorted by class."""
    index = {}
    fine = []
    for name in folders:
        pieces = name.split("_")
        fine.append(index.setdefault(pieces[3], len(index)))
    species2fine = np.array(fine)
    phyla = {}
    species2coarse = np.array([phyla.setdefault(n.split("_")[2], len(phyla)) for n in folders])
    targets = species2fine[np.repeat(np.arange(len(folders)), images_per_folder)]
    unique_fine, first = np.unique(species2fine, return_index=True)
    coarse_map = species2coarse[first][np.argsort(unique_fine)]
    counts = {c: int((coarse_map == c).sum()) for c in set(coarse_map.tolist())}
    small = {c for c, n in counts.items() if n <= 2}
    seen = {c: [] for c in counts}
    train_target, train_source = [], []
    for fine_id in np.sort(targets):
        c = int(coarse_map[fine_id])
        if c in small:
            continue
        seen[c].append(int(fine_id))
        (train_target if len(set(seen[c])) <= int(0.4 * counts[c]) else train_source).append(
            int(fine_id))  # fmt: skip
    names = {v: k for k, v in index.items()}
    return ([names[i] for i in sorted(set(train_source))],
            [names[i] for i in sorted(set(train_target))])  # fmt: skip


def test_inat_paper_split_classes_under_phyla(tmp_path):
    write_folders(tmp_path, {"train_mini": INAT_PAPER, "val": INAT_PAPER}, n=2)
    common = ["data=inat", f"data.root={tmp_path}", "data.image_size=16", "data.fine_rank=class",
              "data.ranks=[phylum]"]  # fmt: skip
    source_ref, target_ref = authors_inat_split(INAT_PAPER, 2)
    assert target_ref == ["Insecta", "Actinopterygii", "Amphibia"]
    source = data_module(*common, "data.split=source")
    target = data_module(*common, "data.split=target")
    assert source.hierarchy.leaves == [f"class:{c}" for c in source_ref]
    assert target.hierarchy.leaves == [f"class:{c}" for c in target_ref]
    assert target.hierarchy.ancestors_at(1) == ["phylum:Arthropoda"] + ["phylum:Chordata"] * 2
    assert source.level_names == ["phylum"]
    # a class pools its species' folders: Insecta holds two, 4 test images
    folders = target.description()["folders"]
    assert folders["class:Insecta"] == INAT_PAPER[:2]
    assert target.test_set.labels.tolist() == [0] * 4 + [1] * 2 + [2] * 2
    # without a split: every class, numbered by first folder
    full = data_module(*common)
    assert full.hierarchy.num_classes == 11 and full.hierarchy.leaves[:2] == [
        "class:Insecta", "class:Arachnida"]  # fmt: skip
    with pytest.raises(DataError, match=r"data\.ranks: genus is not a rank above class"):
        data_module(*common[:-1], "data.ranks=[genus]")
    with pytest.raises(DataError, match=r"data\.fine_rank: unknown rank 'tribe'"):
        data_module(*common[:3], "data.fine_rank=tribe")


def test_inat_bad_folder_name_and_rank(tmp_path):
    write_folders(tmp_path, {"train_mini": [*INAT, "birds"], "val": INAT})
    with pytest.raises(DataError, match="birds: not an iNaturalist 2021 class folder name"):
        data_module("data=inat", f"data.root={tmp_path}")
    (tmp_path / "train_mini" / "birds").rename(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"data\.ranks: tribe is not a rank above species"):
        data_module("data=inat", f"data.root={tmp_path}", "data.ranks=[tribe]")


# ---------------------------------------------------------------- BREEDS

# entity -> {living -> {animal -> {dog: d1 d2 d3, cat: c1 c2}, plant -> {tree: t1 t2 t3 t4}},
#            artifact -> {tool -> {hammer: h1, saw: s1 s2 s3}}}; "lonely" is no ImageNet class.
EDGES = """n00001740 n00004258
n00001740 n00021939
n00004258 animal
n00004258 plant
animal dog
animal cat
plant tree
n00021939 tool
tool hammer
tool saw
saw lonely
dog d1
dog d2
dog d3
cat c1
cat c2
tree t1
tree t2
tree t3
tree t4
hammer h1
saw s1
saw s2
saw s3
"""
LEAVES = ["d1", "d2", "d3", "c1", "c2", "t1", "t2", "t3", "t4", "h1", "s1", "s2", "s3"]


def write_breeds(tmp_path):
    info = tmp_path / "info"
    info.mkdir()
    rows = [[i, w, f"name of {w}"] for i, w in enumerate(LEAVES)]
    (info / "dataset_class_info.json").write_text(json.dumps(rows))
    (info / "class_hierarchy.txt").write_text(EDGES)
    names = ["n00001740\tentity", "n00004258\tliving thing", "n00021939\tartifact", "dog\tdog"]
    (info / "node_names.txt").write_text("\n".join(names) + "\n")
    write_folders(tmp_path / "imagenet", {"train": [*LEAVES, "x9"], "val": [*LEAVES, "x9"]}, n=4)
    return info, tmp_path / "imagenet"


def test_breeds_tree_levels_and_selection(tmp_path):
    from hierot.data.breeds import BreedsTree

    info, _ = write_breeds(tmp_path)
    tree = BreedsTree(info)
    assert tree.levels["animal"] == 2 and tree.levels["dog"] == 3 and tree.levels["d1"] == 4
    assert tree.leaves_below("n00004258") == sorted(LEAVES[:9])
    # level 3 with 2 classes each: cat, dog, saw, tree (hammer has one); seeded choice per node
    chosen = tree.subset(level=3, ancestor=None, subclasses=2)
    rng = np.random.RandomState(2)
    expected = [(n, list(rng.choice(tree.leaves_below(n), 2, replace=False)))
                for n in ["cat", "dog", "saw", "tree"]]  # fmt: skip
    assert chosen == expected
    assert [s for s, _ in tree.subset(3, "n00004258", 2)] == ["cat", "dog", "tree"]


def test_breeds_subset_trains_through_the_main_job(tmp_path, monkeypatch):
    from hierot.data import breeds

    info, root = write_breeds(tmp_path)
    monkeypatch.setitem(breeds.SUBSETS, "living17", (3, "n00004258", 2))
    dm = data_module("data=breeds", f"data.root={root}", f"data.info_dir={info}",
                     "data.classes=subclass", "data.image_size=16",
                     "data.val_fraction=0.25")  # fmt: skip
    assert dm.hierarchy.num_classes == 6 and dm.hierarchy.depth == 2
    assert dm.hierarchy.ancestors_at(1)[0] == "cat (cat)"
    assert dm.hierarchy.ancestors_at(1)[2] == "dog (dog)"
    assert len(dm.test_set) == 24 and len(dm.train_set) + len(dm.val_set) == 24
    with pytest.raises(DataError, match=r"class_hierarchy\.txt: missing BREEDS hierarchy file"):
        (info / "class_hierarchy.txt").unlink()
        data_module("data=breeds", f"data.root={root}", f"data.info_dir={info}")


def test_breeds_split_halves_follow_robustness_rand_split(tmp_path):
    from hierot.data.breeds import BreedsTree

    info, _ = write_breeds(tmp_path)
    tree = BreedsTree(info)
    # robustness' split_superclass(split_type="rand"): one generator, superclasses in order,
    # each drawing from its pooled sorted ImageNet classes, first half source
    rng = np.random.RandomState(2)
    expected = []
    for node in ["cat", "dog", "saw", "tree"]:
        sel = list(rng.choice(tree.leaves_below(node), 2, replace=False))
        expected.append((node, sel[:1], sel[1:]))
    halves = tree.split_subset(level=3, ancestor=None, subclasses=2)
    assert halves == expected
    assert all(not set(a) & set(b) for _, a, b in halves)
    with pytest.raises(DataError, match="must be even and >= 2, got 3"):
        tree.split_subset(level=3, ancestor=None, subclasses=3)


def breeds_module(info, root, *overrides):
    return data_module("data=breeds", f"data.root={root}", f"data.info_dir={info}",
                       "data.level=3", "data.ancestor=''", "data.subclasses=2",
                       "data.image_size=16", "data.val_fraction=0.25", *overrides)  # fmt: skip


def test_breeds_superclasses_are_the_classes_with_the_papers_trees(tmp_path):
    info, root = write_breeds(tmp_path)
    labels = ["cat (cat)", "dog (dog)", "saw (saw)", "tree (tree)"]
    source = breeds_module(info, root, "data.split=source", "data.edges=[1,2]")
    target = breeds_module(info, root, "data.split=target", "data.edges=[1,2]")
    for dm in (source, target):
        assert dm.hierarchy.leaves == labels and dm.level_names == ["coarse"]
    # height 2: superclass -> 2 edges up (living thing for cat, dog, tree; artifact for saw)
    assert source.hierarchy.ancestors_at(1) == ["living thing (n00004258)"] * 2 + [
        "artifact (n00021939)", "living thing (n00004258)"]  # fmt: skip
    assert source.hierarchy.tree_distances()[0].tolist() == [0, 2, 4, 2]
    # every class pools its half of the ImageNet classes: one folder of 4 images here
    folders_s = source.description()["folders"]
    folders_t = target.description()["folders"]
    halves = {n: (a, b) for n, a, b in source_tree(info).split_subset(3, None, 2)}
    for label, node in zip(labels, ["cat", "dog", "saw", "tree"]):
        assert (folders_s[label], folders_t[label]) == halves[node]
    assert len(source.test_set) == 16 and len(source.train_set) + len(source.val_set) == 16
    test_labels = source.test_set.labels.tolist()
    assert test_labels == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    # height 3 adds the mid level 1 edge up: animal, animal, tool, plant
    deep = breeds_module(info, root, "data.split=source", "data.edges=[1,2]", "data.height=3")
    assert deep.level_names == ["coarse", "mid"]
    assert deep.hierarchy.ancestors_at(2) == ["animal (animal)", "animal (animal)",
                                              "tool (tool)", "plant (plant)"]  # fmt: skip
    assert deep.hierarchy.tree_distances()[0].tolist() == [0, 2, 6, 4]
    # all: robustness' split=None draw of 2 ImageNet classes per superclass
    full = breeds_module(info, root)
    drawn = dict(source_tree(info).subset(3, None, 2))
    assert full.description()["folders"]["tree (tree)"] == drawn["tree"]


def source_tree(info):
    from hierot.data.breeds import BreedsTree

    return BreedsTree(info)


def test_breeds_tree_with_one_coarse_ancestor(tmp_path):
    info, root = write_breeds(tmp_path)
    # under "living thing", cat, dog and tree share their coarse ancestor (2 edges up): at
    # height 3 it is the root and mid the only level; at height 2 nothing tells them apart
    common = ["data.ancestor=n00004258", "data.edges=[1,2]", "data.split=source"]
    deep = breeds_module(info, root, *common, "data.height=3")
    assert deep.hierarchy.depth == 2 and deep.level_names == ["mid"]
    assert deep.hierarchy.tree_distances()[0].tolist() == [0, 2, 4]
    with pytest.raises(DataError, match=r"share their ancestor living thing \(n00004258\)"):
        breeds_module(info, root, *common)


def test_breeds_levels_are_separate_namespaces(tmp_path):
    from hierot.data.breeds import paper_tree

    info, _ = write_breeds(tmp_path)
    # mid 1 edge up, coarse 1 edge up: the same WordNet node on two levels stays two nodes,
    # as the authors' per-level label maps keep them
    paths, levels = paper_tree(source_tree(info), ["cat", "dog", "tree"], (1, 1), 3)
    assert levels == ["coarse", "mid"]
    assert paths[0] == ["animal (animal) [coarse]", "animal (animal) [mid]", "cat (cat)"]
    tree = Hierarchy.from_paths(paths)
    assert tree.tree_distances()[0].tolist() == [0, 2, 6]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.classes=wnids", "data.classes: unknown 'wnids'; available: superclass, subclass"),
        ("data.split=half", "data.split: unknown 'half'; available: all, source, target"),
        ("data.height=4", "data.height: 4 is not a tree height of BREEDS; available: 2, 3"),
        ("data.edges=[1]", "data.edges: expected [mid, coarse], edges up from a superclass"),
    ],
)
def test_breeds_bad_options(tmp_path, override, message):
    info, root = write_breeds(tmp_path)
    with pytest.raises(DataError, match=re.escape(message)):
        breeds_module(info, root, override)


def test_breeds_subclass_classes_take_a_split_half(tmp_path):
    info, root = write_breeds(tmp_path)
    dm = breeds_module(info, root, "data.classes=subclass", "data.split=target")
    halves = source_tree(info).split_subset(3, None, 2)
    assert dm.hierarchy.leaves == [b[0] for _, _, b in halves]
    assert dm.level_names == ["superclass"]
    with pytest.raises(DataError, match=r"with data\.classes=subclass the tree is superclass"):
        breeds_module(info, root, "data.classes=subclass", "data.height=3")


@pytest.mark.slow
def test_breeds_main_job_and_bad_subset(tmp_path):
    info, root = write_breeds(tmp_path)
    line = fails(tmp_path, "data=breeds", f"data.root={root}", f"data.info_dir={info}",
                 "data.subset=living99")  # fmt: skip
    assert line == ("hierot: error: data.subset: unknown 'living99'; available: entity13, "
                    "entity30, living17, nonliving26")  # fmt: skip
    metrics = run_main(tmp_path, "data=breeds", f"data.root={root}", f"data.info_dir={info}",
                       "data.level=3", "data.ancestor=''", "data.subclasses=2",
                       "data.split=source", "data.image_size=16")  # fmt: skip
    assert "test/acc_coarse" in metrics
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["split"] == "source" and data["subset"] == "living17"
    assert data["classes"] == ["cat (cat)", "dog (dog)", "saw (saw)", "tree (tree)"]
    assert data["images"]["test"] == 16
    assert sum(len(f) for f in data["folders"].values()) == 4
    line = fails(tmp_path, "data=breeds", f"data.root={root}", f"data.info_dir={info}",
                 "data.subset=entity30")  # fmt: skip
    assert line == "hierot: error: BREEDS: no superclass at level 4 has 8 ImageNet classes"


@pytest.mark.slow
def test_bad_hierarchy_file_from_the_command_line(tmp_path):
    root, _ = folder_tree(tmp_path)
    (tmp_path / "tree.txt").write_text("animal cat\nvehicle cat\n")
    line = fails(tmp_path, "data=imagefolder", f"data.root={root}",
                 f"data.hierarchy={tmp_path / 'tree.txt'}")  # fmt: skip
    assert line.startswith(f"hierot: error: {tmp_path / 'tree.txt'}:2: node 'cat' has two parents")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- the OT-CPCC CIFAR-100 protocol
PAPER_COARSE = ["aquatic_mammals", "fish", "flowers", "food_containers"]
# 5 classes per superclass, interleaved in id order as in the real release
PAPER_PARENT = [1, 0, 2, 3, 0, 1, 2, 3, 3, 0, 1, 2, 2, 3, 0, 1, 0, 1, 2, 3]
PAPER_FINE = [f"class{i:02d}" for i in range(20)]


def authors_maps(coarse_map):
    """fine -> mid and fine -> coarsest as uiuctml/OTCPCC's dataset/cifar100/data.py builds
    them (their loop, on our fixture's superclasses)."""
    coarse_map = np.array(coarse_map)
    mid_map = np.zeros(len(coarse_map))
    for i in range(coarse_map.max() + 1):
        idx = (coarse_map == i).nonzero()[0]
        mid_map[idx[:2]] = i + 0.5
        mid_map[idx[2:]] = i
    mid_map = (mid_map * 2).astype(int)
    coarsest_map = coarse_map // 2
    return mid_map, coarsest_map


def paper_tree_distance(a, b, height):
    """The authors' dT: 2 x the number of levels up to the first shared ancestor."""
    coarse = np.array(PAPER_PARENT)
    mid, coarsest = authors_maps(PAPER_PARENT)
    if a == b:
        return 0
    if height >= 3 and mid[a] == mid[b]:
        return 2
    if coarse[a] == coarse[b]:
        return 4 if height >= 3 else 2
    if height == 4 and coarsest[a] == coarsest[b]:
        return 6
    return {2: 4, 3: 6, 4: 8}[height]


@pytest.mark.parametrize("split", ["all", "source", "target"])
@pytest.mark.parametrize("height", [2, 3, 4])
def test_cifar100_paper_splits_and_heights(tmp_path, split, height):
    write_cifar100(tmp_path, PAPER_FINE, PAPER_COARSE, PAPER_PARENT, n=3)
    dm = data_module("data=cifar100", f"data.root={tmp_path}", f"data.split={split}",
                     f"data.height={height}", "data.val_fraction=0.2")  # fmt: skip
    lowest = {i for c in range(4) for i in [j for j, p in enumerate(PAPER_PARENT) if p == c][:2]}
    kept = [i for i in range(20) if split == "all" or (i in lowest) == (split == "target")]
    assert len(kept) == {"all": 20, "source": 12, "target": 8}[split]
    assert dm.hierarchy.leaves == [PAPER_FINE[i] for i in kept]
    assert dm.level_names == {2: ["coarse"], 3: ["coarse", "mid"],
                              4: ["coarsest", "coarse", "mid"]}[height]  # fmt: skip
    want = torch.tensor(
        [[paper_tree_distance(a, b, height) for b in kept] for a in kept], dtype=torch.float32
    )
    assert torch.equal(dm.hierarchy.tree_distances(), want)
    # images of the kept classes only, labels renumbered in original id order
    for dataset, per_class in ((dm.test_set, 3), (dm.train_set, None)):
        labels = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
        assert set(labels.tolist()) <= set(range(len(kept)))
        if per_class:
            assert torch.equal(torch.bincount(labels), torch.full((len(kept),), per_class))
    # the test split is the release's test images of the kept classes, in file order
    raw = pickle.loads((tmp_path / "cifar-100-python" / "test").read_bytes(), encoding="bytes")
    rows = [j for j, f in enumerate(raw[b"fine_labels"]) if f in kept]
    want_x = torch.as_tensor(raw[b"data"][rows]).view(-1, 3, 32, 32)
    want_y = torch.tensor([kept.index(raw[b"fine_labels"][j]) for j in rows])
    got = [dm.test_set[i] for i in range(len(dm.test_set))]
    assert torch.equal(torch.stack([torch.as_tensor(x) for x, _ in got]), want_x)
    assert torch.equal(torch.tensor([int(y) for _, y in got]), want_y)


@pytest.mark.slow
def test_cifar100_target_split_run_records_its_tree_and_classes(tmp_path):
    write_cifar100(tmp_path, PAPER_FINE, PAPER_COARSE, PAPER_PARENT, n=3)
    metrics = run_main(tmp_path, "data=cifar100", f"data.root={tmp_path}", "data.split=target",
                       "data.height=3")  # fmt: skip
    assert "test/acc_mid" in metrics and "test/acc_coarse" in metrics
    run = tmp_path / "run"
    data = json.loads((run / "data.json").read_text())
    lowest = [i for c in range(4) for i in [j for j, p in enumerate(PAPER_PARENT) if p == c][:2]]
    assert data["classes"] == [PAPER_FINE[i] for i in sorted(lowest)]
    assert (data["dataset"], data["split"], data["images"]["test"]) == (
        "Cifar100DataModule",
        "target",
        8 * 3,
    )
    tree = Hierarchy.from_file(run / "hierarchy.json", classes=data["classes"])
    assert tree.leaves == data["classes"]
    want = [[paper_tree_distance(a, b, 3) for b in sorted(lowest)] for a in sorted(lowest)]
    assert tree.tree_distances().tolist() == want


def test_cifar100_paper_options_are_checked(tmp_path):
    write_cifar100(tmp_path, PAPER_FINE, PAPER_COARSE, PAPER_PARENT, n=2)
    for override, message in (
        ("data.split=holdout", "data.split: unknown 'holdout'; available: all, source, target"),
        ("data.height=5", "data.height: 5 is not a tree height of CIFAR-100; available: 2, 3, 4"),
    ):
        with pytest.raises(DataError, match=re.escape(message)):
            data_module("data=cifar100", f"data.root={tmp_path}", override)


@pytest.mark.slow
def test_breeds_source_run_transfers_to_the_target_subpopulations(tmp_path):
    info, root = write_breeds(tmp_path)
    common = [f"data.root={root}", f"data.info_dir={info}", "data.level=3", "data.ancestor=''",
              "data.subclasses=2", "data.image_size=16"]  # fmt: skip
    run_main(tmp_path, "data=breeds", *common, "data.split=source")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = tmp_path / "transfer"
    run = subprocess.run(
        [sys.executable, "-m", "hierot.transfer", f"ckpt={ckpt}", "level=mid", "data.height=3",
         "data.num_workers=0", f"hydra.run.dir={out}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    # the target halves: the same 4 superclasses, 3 mid classes (animal, plant, tool)
    assert m["data.split"] == "target" and m["source_classes"] == 4 and m["classes"] == 3
    assert m["train_images"] == 3 and m["test_images"] == 16
    assert 0 <= m["transfer/acc_mid"] <= 1


# ---------------------------------------------------------------- transforms


def robustness_lighting(img, alpha):
    """robustness' Lighting.__call__ with its random draw ``alpha`` given (float image)."""
    from hierot.data.images import PCA_EIGVAL, PCA_EIGVEC

    eigvec, eigval = torch.tensor(PCA_EIGVEC), torch.tensor(PCA_EIGVAL)
    rgb = eigvec.clone().mul(alpha.view(1, 3).expand(3, 3)).mul(eigval.view(1, 3).expand(3, 3))
    return img.add(rgb.sum(1).squeeze().view(3, 1, 1).expand_as(img))


def test_the_papers_augmentations():
    from hierot.data.images import eval_transform, lighting, train_transform

    g = torch.Generator().manual_seed(0)
    image = torch.randint(30, 220, (3, 40, 50), dtype=torch.uint8, generator=g)
    torch.manual_seed(3)
    out = lighting(image)
    torch.manual_seed(3)
    alpha = torch.randn(3) * 0.05
    ref = robustness_lighting(image.float() / 255, alpha) * 255
    assert out.dtype == torch.uint8
    assert (out.float() - ref).abs().max() <= 0.5 + 1e-4  # rounded to the nearest level
    assert not torch.equal(out, image)
    for augment in ("robustness", "imagenet", "crop_flip_rotate"):
        x = train_transform(24, augment)(image)
        assert x.shape == (3, 24, 24) and x.dtype == torch.uint8
    # ImageNet's test crop: resize the shorter side to 256 (here 32), centre 224 (here 28)
    x = eval_transform(28, 32)(image)
    resized = torch.nn.functional.interpolate(image[None].float(), size=(32, 40),
                                              mode="bilinear", antialias=True)[0]  # fmt: skip
    assert x.shape == (3, 28, 28)
    assert (x.float() - resized[:, 2:30, 6:34]).abs().max() <= 1
    with pytest.raises(DataError, match=r"data\.augment: unknown 'mixup'; available: crop_flip"):
        train_transform(24, "mixup")


@pytest.mark.slow
def test_data_modules_read_metadata_not_images_until_setup(tmp_path, monkeypatch):
    # Lightning's contract: __init__ opens no file; the tree comes from the metadata (for
    # CIFAR-100 the meta file and the training labels) without converting any image; the
    # early check keeps nothing, and the run reads the images once, in setup.
    from hierot.data import cifar
    from hierot.train import precheck, train

    write_cifar100(tmp_path, FINE, COARSE, PARENT)
    reads, images = [], []
    read, to_images = cifar.read_pickle, cifar._images
    monkeypatch.setattr(cifar, "read_pickle", lambda path, *a: reads.append(path.name)
                        or read(path, *a))  # fmt: skip
    overrides = ["data=cifar100", f"data.root={tmp_path}", *FAST]
    dm = build(compose_config(overrides).data, "data")
    assert reads == []
    monkeypatch.setattr(cifar, "_images", lambda batch, path, what: images.append(path.name)
                        or to_images(batch, path, what))  # fmt: skip
    assert dm.hierarchy.leaves == FINE and dm.level_names == ["coarse"]
    assert reads == ["meta", "train"] and images == [] and not hasattr(dm, "train_set")
    dm.setup("fit")
    assert reads[2:] == ["train", "test"] and images == ["train", "test"]
    reads.clear()
    precheck(overrides)
    assert reads == ["meta", "train"]
    train(compose_config([*overrides, f"output_dir={tmp_path / 'run'}"]))
    assert reads[2:] == ["meta", "train", "train", "test"]
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_cifar_downloads_through_torchvision_from_a_local_server(tmp_path, monkeypatch):
    import hashlib
    import tarfile

    import torchvision

    from helpers.http import serve

    write_cifar100(tmp_path / "release", FINE, COARSE, PARENT)
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "release" / "cifar-100-python", arcname="cifar-100-python")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    release = torchvision.datasets.CIFAR100
    with serve(served) as url:
        monkeypatch.setattr(release, "url", f"{url}/cifar-100-python.tar.gz")
        monkeypatch.setattr(release, "tgz_md5", md5)
        root = tmp_path / "data"
        dm = data_module("data=cifar100", f"data.root={root}", "data.download=true")
        assert dm.hierarchy.leaves == FINE and len(dm.test_set) == 4 * len(FINE)
        assert (root / "cifar-100-python" / "meta").is_file()
        # a second run finds the release and downloads nothing
        monkeypatch.setattr(release, "url", f"{url}/nothing-here.tar.gz")
        assert data_module("data=cifar100", f"data.root={root}", "data.download=true")
        # a corrupt download is one line naming the URL
        monkeypatch.setattr(release, "url", f"{url}/cifar-100-python.tar.gz")
        monkeypatch.setattr(release, "tgz_md5", "0" * 32)
        with pytest.raises(DataError, match=r"^data\.download: http://127\.0\.0\.1:\d+/cifar-100"):
            data_module("data=cifar100", f"data.root={tmp_path / 'other'}", "data.download=true")
    with pytest.raises(DataError, match=r"data\.root: no such folder"):
        data_module("data=cifar100", f"data.root={tmp_path / 'other2'}")  # download=false


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagefolder", "inat", "breeds",
                                     "tiered_imagenet_h", "inat19", "aircraft", "cub"])  # fmt: skip
def test_building_a_data_module_opens_no_file(tmp_path, dataset):
    # a root that does not exist: building succeeds, the first use of the tree names it
    extra = {"imagefolder": ["data.hierarchy=tree.json"], "breeds": ["data.info_dir=info"]}
    overrides = [f"data={dataset}", f"data.root={tmp_path / 'nowhere'}", *extra.get(dataset, [])]
    dm = build(compose_config(overrides).data, "data")
    hint = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(dataset)
    hint = f" (data.download=true downloads {hint} into it)" if hint else ""
    message = f"data.root: no such folder: {tmp_path / 'nowhere'}{hint}"
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        dm.hierarchy  # noqa: B018


# ---------------------------------------------------------------- every objective


@pytest.mark.slow
def test_every_objective_runs_on_every_dataset(tmp_path, monkeypatch):
    # debug=fast (one batch of each split) in this process, each objective with CPCC on top
    from hierot.config import CONFIG_DIR
    from hierot.data import breeds, haf
    from hierot.objectives import get_objective
    from hierot.train import train

    from helpers import benchmarks as b

    write_cifar100(tmp_path / "c100", FINE, COARSE, PARENT)
    write_cifar10(tmp_path / "c10", CIFAR10)
    root, tree = folder_tree(tmp_path / "folders")
    write_folders(tmp_path / "inat", {"train_mini": INAT, "val": INAT}, n=4)
    (tmp_path / "breeds").mkdir()
    info, imagenet = write_breeds(tmp_path / "breeds")
    monkeypatch.setitem(breeds.SUBSETS, "living17", (3, "n00004258", 2))
    benchmarks = tmp_path / "benchmarks"
    b.write_tiered(benchmarks / "tiered", b.TIERED_EDGES, b.TIERED)
    b.write_inat19(benchmarks / "inat19", b.INAT_EDGES, b.INAT)
    b.write_aircraft(benchmarks / "aircraft", b.AIRCRAFT)
    b.write_cub(benchmarks / "cub", b.CUB)
    b.write_haf(tmp_path / "c100" / haf.HAF_TREE.name, b.HAF_ROWS)  # over FINE's 6 classes
    datasets = {
        "synthetic": [],
        "cifar100": ["data=cifar100", f"data.root={tmp_path / 'c100'}"],
        "cifar10": ["data=cifar10", f"data.root={tmp_path / 'c10'}"],
        "imagefolder": ["data=imagefolder", f"data.root={root}", f"data.hierarchy={tree}",
                        "data.image_size=16"],
        "inat": ["data=inat", f"data.root={tmp_path / 'inat'}", "data.image_size=16"],
        "breeds": ["data=breeds", f"data.root={imagenet}", f"data.info_dir={info}",
                   "data.classes=subclass", "data.image_size=16"],
        "tiered_imagenet_h": ["data=tiered_imagenet_h", f"data.root={benchmarks / 'tiered'}",
                              "data.image_size=16"],
        "cifar100-haf5": ["data=cifar100", f"data.root={tmp_path / 'c100'}", "data.tree=haf5"],
        **{name: [f"data={name}", f"data.root={benchmarks / name}", "data.image_size=16"]
           for name in ("aircraft", "cub", "inat19")},
    }  # fmt: skip
    # The last four read mistake-severity benchmarks whose trees are balanced, as the ones
    # above (3 to 5 levels): each objective runs on one of them, in turn (one run per
    # objective instead of four; each run costs what one of the datasets above costs).
    # tieredImageNet-H's tree is unbalanced (leaves 2 and 3 edges down), a shape no other
    # dataset here has: every objective runs on it.
    rotated = list(datasets)[-4:]
    objectives = sorted(p.stem for p in (CONFIG_DIR / "objective").glob("*.yaml"))
    assert {"ce", "mtl", "marginal", "soft_labels", "hxe", "quadruplet", "curriculum",
            "supcon"} <= set(objectives)  # fmt: skip
    for data, overrides in datasets.items():
        for i, objective in enumerate(objectives):
            if data in rotated and i % len(rotated) != rotated.index(data):
                continue
            out = tmp_path / "runs" / f"{data}-{objective}"
            # a staged objective (curriculum, supcon) needs an epoch for each of its stages
            staged = len(get_objective(objective).stage_names) > 1
            # two epochs (an epoch's end and the next start) on the embedded data, one on
            # the others: what differs between the datasets is their tree, read by step one
            epochs = f"trainer.max_epochs={5 if staged else 2 if data == 'synthetic' else 1}"
            # and the checkpoint the test reads alone, without the optimizer's state
            lean = ["checkpoint.save_last=false", "checkpoint.weights_only=true"]
            lean = [] if data == "synthetic" else lean
            train(compose_config([*FAST, *overrides, f"objective={objective}", epochs, *lean,
                                  f"output_dir={out}"]))  # fmt: skip
            metrics = json.loads((out / "metrics.json").read_text())
            assert metrics["objective"] == objective, (data, objective)
            assert 0 <= metrics["test/acc_fine"] <= 1, (data, objective)
