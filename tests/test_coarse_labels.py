"""Coarsely-labelled training data, simulated (``data.coarse_fraction``): which labels move
and where, their determinism, the counts a run reports, the untouched evaluation splits, the
checks and refusals, on every kind of training set the data modules make, and runs from the
command line on the embedded data."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torch.utils.data import TensorDataset

from hierot.config import build, check_config, compose_config
from hierot.data import SyntheticDataModule
from hierot.data.coarse import CoarseLabels, coarse_labels, coarse_targets, dataset_labels
from hierot.errors import ConfigError, DataError
from hierot.hierarchy.labels import label_names
from hierot.logs import inner_labels_line
from hierot.train import precheck

from helpers.benchmarks import AIRCRAFT, write_aircraft
from helpers.files import write_cifar100, write_folders
from helpers.trees import TREES

# the embedded data, small: 24 classes x 4 training images, 2 per class in val and test
TINY = ["data.train_per_class=4", "data.val_per_class=2", "data.test_per_class=2",
        "data.image_size=16"]  # fmt: skip
TINY_OPTIONS = {"train_per_class": 4, "val_per_class": 2, "test_per_class": 2, "image_size": 16}


def data(*overrides, setup=True):
    """The data module of the composed config (the embedded data: ``TINY`` first)."""
    synthetic = not any(o.startswith("data=") for o in overrides)
    dm = build(compose_config([*(TINY if synthetic else []), *overrides]).data, "data")
    if setup:
        dm.setup()
    return dm


@pytest.fixture(scope="module")
def plain():
    return data()


def made_like(plain, **options):
    """The embedded data with ``options``, given ``plain``'s images as its setup makes them
    (the same assignment of ``train_set``; the images are made once for the module)."""
    dm = SyntheticDataModule(**TINY_OPTIONS, **options)
    dm.train_set, dm.val_set, dm.test_set = plain.train_set, plain.val_set, plain.test_set
    return dm


def ancestor(tree, leaf, level):
    path = tree.path(leaf)
    at = len(path) - 2 if level is None else level
    return path[at] if 1 <= at < len(path) - 1 else leaf


def check_moved(dm, before, fraction, level):
    """The training labels of ``dm`` are ``before`` with round(fraction x class labels)
    moved, each to its class's ancestor at ``level``; the items read them; the evaluation
    splits and what a kNN bank reads hold classes only; the counts say how many moved."""
    tree, k = dm.hierarchy, dm.hierarchy.num_classes
    after = dataset_labels(dm.train_set)
    moved = (after != before).nonzero().flatten()
    assert len(moved) == round(fraction * int((before < k).sum())) > 0
    names = label_names(tree)
    for i in moved.tolist():
        assert names[after[i]] == ancestor(tree, tree.leaves[before[i]], level)
        assert dm.train_set[i][1] == int(after[i])
    assert [dm.train_set[i][1] for i in range(len(after))] == after.tolist()
    counts = Counter(names[int(y)] for y in after[after >= k])
    assert dm.inner_labels == dict(counts) and dm.description()["inner_labels"] == dict(counts)
    for split in (dm.val_set, dm.test_set):
        assert int(max(split[i][1] for i in range(len(split)))) < k
    bank = dm.plain_train_set()
    assert len(bank) == int((after < k).sum())
    assert all(bank[i][1] < k for i in range(len(bank)))
    return after


def test_fraction_zero_changes_nothing(plain):
    assert plain.coarse_fraction == 0 and plain.inner_nodes == [] and plain.inner_labels == {}
    assert type(plain.train_set) is TensorDataset  # the subclass's own set, no wrapper
    assert plain.plain_train_set() is plain.train_set
    assert "inner_labels" not in plain.description()


@pytest.mark.parametrize("level", [None, 1, 2])
def test_a_fraction_moves_round_f_n_class_labels_to_their_ancestor(plain, level):
    before = dataset_labels(plain.train_set)
    dm = made_like(plain, coarse_fraction=0.3, coarse_level=level)
    after = check_moved(dm, before, 0.3, level)
    assert type(dm.train_set) is CoarseLabels
    assert torch.equal(dm.train_set[5][0], plain.train_set[5][0])  # the subclass's images
    again = made_like(plain, coarse_fraction=0.3, coarse_level=level)
    other = made_like(plain, coarse_fraction=0.3, coarse_level=level, coarse_seed=1)
    assert torch.equal(dataset_labels(again.train_set), after)
    assert not torch.equal(dataset_labels(other.train_set), after)


def test_the_nodes_are_known_before_setup_and_counted_after(plain):
    dm = SyntheticDataModule(**TINY_OPTIONS, coarse_fraction=0.5)
    tree = dm.hierarchy
    parents = sorted({tree.parent(leaf) for leaf in tree.leaves}, key=label_names(tree).index)
    assert dm.inner_nodes == parents and dm.inner_labels == {}
    dm.train_set = plain.train_set  # what its setup does
    assert sum(dm.inner_labels.values()) == 48 and set(dm.inner_labels) <= set(parents)
    line = inner_labels_line(dm.inner_labels)
    assert line.startswith("48 images labelled at inner nodes (") and "and 1 more nodes" in line
    top = SyntheticDataModule(**TINY_OPTIONS, coarse_fraction=0.5, coarse_level=1)
    assert top.inner_nodes == ["red", "green", "blue"]


def test_only_class_labels_move_and_a_class_no_deeper_than_the_level_stays():
    tree = TREES["unbalanced"]  # classes at depths 2, 3 and 4
    k, names = tree.num_classes, label_names(tree)
    for level in (None, 1, 2, 3):
        targets = coarse_targets(tree, level)
        want = [names.index(ancestor(tree, leaf, level)) for leaf in tree.leaves]
        assert targets.tolist() == want
    assert coarse_targets(tree, 3).tolist()[:5] == [0, 1, 2, 3, 4]  # depths 2, 2, 3, 3, 3
    labels = torch.cat([torch.arange(k).repeat(3), torch.tensor([k, k + 3, k + 5])])
    moved = coarse_labels(labels, coarse_targets(tree, 1), 0.5, seed=7)
    assert torch.equal(moved[-3:], labels[-3:])  # already at inner nodes
    drawn = (moved != labels).sum()
    assert drawn == round(0.5 * 3 * k)  # every class is deeper than level 1
    assert torch.equal(moved, coarse_labels(labels, coarse_targets(tree, 1), 0.5, seed=7))
    assert torch.equal(coarse_labels(labels, coarse_targets(tree, 1), 0.0, seed=7), labels)


def test_bad_options_are_one_line_errors():
    cfg = compose_config([*TINY, "data.coarse_fraction=0.2"])
    good = {"data.coarse_fraction": 0.2, "data.coarse_level": None, "data.coarse_seed": 0}
    for override, message in [
        ("data.coarse_fraction=1.5", "data.coarse_fraction must be a number in [0, 1], got 1.5"),
        ("data.coarse_fraction=abc", "data.coarse_fraction must be a number in [0, 1], got 'abc'"),
        ("data.coarse_level=0", "data.coarse_level must be an integer >= 1, got 0"),
        ("data.coarse_seed=-1", "data.coarse_seed must be an integer >= 0, got -1"),
    ]:
        key, value = override.split("=")
        OmegaConf.update(cfg, key, yaml.safe_load(value))
        with pytest.raises(ConfigError) as caught:
            check_config(cfg)
        assert str(caught.value) == message
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            build(cfg.data, "data")
        OmegaConf.update(cfg, key, good[key])
    # the embedded tree is 3 levels deep: no class lies below level 3
    deep = SyntheticDataModule(**TINY_OPTIONS, coarse_fraction=0.2, coarse_level=3)
    with pytest.raises(DataError, match=r"data.coarse_level=3: no class of .* deeper than level 3"):
        deep.inner_nodes  # noqa: B018
    assert SyntheticDataModule(**TINY_OPTIONS, coarse_level=3).inner_nodes == []


def test_an_objective_without_inner_labels_is_refused_before_the_run():
    with pytest.raises(ConfigError) as caught:
        precheck([*TINY, "data.coarse_fraction=0.3", "objective=supcon", "trainer.max_epochs=10"])
    line = str(caught.value)
    assert line.startswith("objective.name: objective supcon cannot take labels at inner nodes")
    assert "'red-disc' (and 5 more nodes)" in line and "data.coarse_fraction=0" in line
    assert "\n" not in line
    precheck([*TINY, "data.coarse_fraction=0.3", "objective=hxe", "lam=1"])


# ------------------------------------------------------------------ every kind of data


def test_cifar_moves_labels_after_validation_is_carved(tmp_path):
    fine, coarse, parent = ["apple", "pear", "rose", "tulip", "bee", "ant"], ["fruit",
        "flowers", "insects"], [0, 0, 1, 1, 2, 2]  # fmt: skip
    write_cifar100(tmp_path, fine, coarse, parent, n=5)
    args = ["data=cifar100", f"data.root={tmp_path}", "data.val_fraction=0.2"]
    before = dataset_labels(data(*args).train_set)
    dm = data(*args, "data.coarse_fraction=0.5")
    assert len(dm.train_set) == 24 and len(dm.val_set) == 6
    check_moved(dm, before, 0.5, None)
    assert dm.plain_train_set().dataset.transform is None  # unaugmented, as without


def test_a_list_reader_moves_labels(tmp_path):
    write_aircraft(tmp_path, AIRCRAFT, n=4)
    args = ["data=aircraft", f"data.root={tmp_path}", "data.image_size=8"]
    before = dataset_labels(data(*args).train_set)
    check_moved(data(*args, "data.coarse_fraction=0.5", "data.coarse_level=1"), before, 0.5, 1)


def test_image_folders_add_moved_labels_to_their_inner_node_folders(tmp_path):
    root = tmp_path / "data"
    classes = ["cat", "dog", "car", "bus"]
    write_folders(root, {"train": classes, "val": classes, "test": classes}, n=3, size=(8, 8))
    write_folders(root, {"train": ["animal"]}, n=2, size=(8, 8))
    tree = tmp_path / "tree.json"
    tree.write_text(json.dumps({"animal": ["cat", "dog"], "vehicle": ["car", "bus"]}))
    args = ["data=imagefolder", f"data.root={root}", f"data.hierarchy={tree}",
            "data.image_size=8"]  # fmt: skip
    plain = data(*args)
    before = dataset_labels(plain.train_set)
    dm = data(*args, "data.coarse_fraction=0.5", setup=False)
    assert dm.inner_nodes == ["animal", "vehicle"] and dm.inner_labels == {"animal": 2}
    dm.setup()
    after = dataset_labels(dm.train_set)
    assert torch.equal(after[before >= 4], before[before >= 4])  # the folder's stay
    assert int((after != before).sum()) == round(0.5 * 12) == 6
    assert sum(dm.inner_labels.values()) == 8 and dm.inner_labels["animal"] >= 2
    assert len(dm.plain_train_set()) == 6


# ------------------------------------------------------------------ the command line


@pytest.mark.slow
def test_runs_on_the_embedded_data_train_on_moved_labels_and_say_so(tmp_path):
    """Two objectives that take inner labels, with CPCC, from the command line (one
    process, a sweep of 2 runs, ~20 s): the log's count, data.json's, completed metrics."""
    run = subprocess.run(
        [sys.executable, "-m", "hierot.train", "-m", "debug=fast", *TINY,
         "data.coarse_fraction=0.3", "lam=1", "objective=hxe,mtl",
         f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${hydra.job.num}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    for job in ("0", "1"):
        out = tmp_path / job
        counts = json.loads((out / "data.json").read_text())["inner_labels"]
        assert sum(counts.values()) == round(0.3 * 96)
        log = (out / "train.log").read_text()
        assert inner_labels_line(counts) in log
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["lam"] == 1.0
        assert metrics["train/cpcc"] == metrics["train/cpcc"]  # CPCC ran on the batch
