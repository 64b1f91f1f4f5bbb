"""Training labels at inner nodes (a sample known only to its genus): the label encoding,
the objectives that take them against per-sample references from their definitions
(float64, loss and gradient, the four test trees), CPCC, the training accuracies, the
refusal of the other objectives, and the ImageFolder reader."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from hierot import CPCCLoss
from hierot.config import build, compose_config
from hierot.distances import group_by_class
from hierot.errors import ConfigError, DataError
from hierot.hierarchy.labels import (
    label_ancestors,
    label_depths,
    label_lca_heights,
    label_level_maps,
    label_members,
    label_names,
)
from hierot.metrics import LevelAccuracy
from hierot.objectives import build_objective, get_objective, list_objectives
from hierot.objectives.nodes import NodeSpace
from hierot.objectives.registry import check_inner_labels, check_objective_config
from hierot.syncs import SyncCounter

from helpers.files import write_folders
from helpers.inner_label_references import (
    cpcc_reference,
    hxe_node_reference,
    marginal_ce_reference,
    marginal_node_reference,
    mtl_node_reference,
    soft_labels_node_reference,
)
from helpers.loss_references import lca_height_reference
from helpers.trees import TREES


def ramp(tree):
    """Per-level weights that tell the levels apart: 0.5, 1, 1.5, ... top first."""
    return [0.5 * (level + 1) for level in range(tree.depth)]


# case -> (objective, its options (or a function of the tree giving them), the reference
# from the definition, a function of (tree, logits, labels[, level_logits]))
ACCEPTING = {
    "ce": ("ce", {}, marginal_ce_reference),
    "hxe": ("hxe", {"alpha": 0.4}, partial(hxe_node_reference, alpha=0.4, normalize=False)),
    "hxe normalized": (
        "hxe",
        {"alpha": 0.7, "normalize": True},
        partial(hxe_node_reference, alpha=0.7, normalize=True),
    ),
    "soft_labels": ("soft_labels", {"beta": 10.0}, partial(soft_labels_node_reference, beta=10.0)),
    "soft_labels beta 2": (
        "soft_labels",
        {"beta": 2.0},
        partial(soft_labels_node_reference, beta=2.0),
    ),
    "marginal": (
        "marginal",
        {},
        lambda tree, *args: marginal_node_reference(tree, *args, [1.0] * tree.depth),
    ),
    "marginal weighted": (
        "marginal",
        lambda tree: {"weights": ramp(tree)},
        lambda tree, *args: marginal_node_reference(tree, *args, ramp(tree)),
    ),
    "mtl": ("mtl", {}, lambda tree, *args: mtl_node_reference(tree, *args, [1.0] * tree.depth)),
    "mtl weighted": (
        "mtl",
        lambda tree: {"weights": ramp(tree)},
        lambda tree, *args: mtl_node_reference(tree, *args, ramp(tree)),
    ),
}


def mixed_batch(tree, n=24, seed=0, width=5):
    """Labels over every node below the root (each one at least once where n allows),
    logits and features in float64 with gradients."""
    g = torch.Generator().manual_seed(seed)
    names = label_names(tree)
    y = torch.cat([torch.arange(len(names)), torch.randint(0, len(names), (n,), generator=g)])
    y = y[torch.randperm(len(y), generator=g)][:n]
    logits = 3 * torch.randn(n, tree.num_classes, generator=g, dtype=torch.float64)
    z = torch.randn(n, width, generator=g, dtype=torch.float64)
    return logits.requires_grad_(), z.requires_grad_(), y


def objective(key, tree, inner=True):
    name, options, _ = ACCEPTING[key]
    torch.manual_seed(0)  # the same level heads (mtl) every time
    made = build_objective(name, tree, 5, options(tree) if callable(options) else options)
    if inner:
        made.use_inner_labels(tree)
    return made.double()


def reference_inputs(key, ours, z, logits):
    """What the reference reads besides the tree and the labels (mtl: its level heads on
    ``z``), and the inputs the gradients are compared on."""
    if ACCEPTING[key][0] == "mtl":
        return (logits, ours.level_logits(z)), (logits, z)
    return (logits,), (logits,)


def check_against(ours_fn, reference_fn, *inputs):
    ours = ours_fn()
    grads = torch.autograd.grad(ours, inputs)
    ref = reference_fn()
    ref_grads = torch.autograd.grad(ref, inputs)
    assert abs(float(ours) - float(ref)) < 1e-6, (float(ours), float(ref))
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), float((a - b).abs().max())


# ------------------------------------------------------------------ the encoding


@pytest.mark.parametrize("tree", TREES.values(), ids=TREES.keys())
def test_labels_are_the_classes_then_the_inner_nodes_as_node_space_orders_them(tree):
    names = label_names(tree)
    assert names[: tree.num_classes] == tree.leaves and names == NodeSpace(tree).names
    assert set(names) == set(tree.nodes) - {tree.root}
    members = label_members(tree)
    for i, node in enumerate(names):
        under = [k for k, leaf in enumerate(tree.leaves) if node in tree.path(leaf)]
        assert members[i].nonzero().flatten().tolist() == under
    assert torch.equal(members[: tree.num_classes], torch.eye(tree.num_classes, dtype=torch.bool))
    assert label_depths(tree).tolist() == [tree.node_depth(n) for n in names]


@pytest.mark.parametrize("tree", TREES.values(), ids=TREES.keys())
def test_label_tables_follow_the_root_paths(tree):
    names, k = label_names(tree), tree.num_classes
    for level, table in label_level_maps(tree).items():
        concepts = tree.level_map(level)[0]
        assert torch.equal(table[:k], tree.level_map(level)[1])
        for i, node in enumerate(names[k:], start=k):
            path = tree.path(node)
            want = concepts.index(path[level]) if len(path) > level else -1
            assert int(table[i]) == want
    heights = label_lca_heights(tree, torch.float64)
    assert torch.equal(heights[:k], tree.lca_heights(torch.float64))
    for i, node in enumerate(names):
        for j in range(k):
            lca = [a for a, b in zip(tree.path(node), tree.path(tree.leaves[j])) if a == b][-1]
            lca_leaf = tree.leaves.index(node) if node in tree.leaves else None
            want = (lca_height_reference(tree, lca_leaf, j) if lca_leaf is not None
                    else _height(tree, lca))  # fmt: skip
            assert heights[i, j] == want
    ancestors = label_ancestors(tree)
    assert torch.equal(ancestors[:, :k], tree.class_nodes())
    for i, node in enumerate(names):
        ids = [tree.nodes.index(n) for n in tree.path(node)]
        assert ancestors[:, i].tolist() == ids + [-1] * (tree.depth + 1 - len(ids))


def _height(tree, node):
    kids = tree.children(node)
    return 1 + max(_height(tree, c) for c in kids) if kids else 0


# ------------------------------------------------------------------ the objectives


@pytest.mark.parametrize("tree", TREES.values(), ids=TREES.keys())
@pytest.mark.parametrize("key", sorted(ACCEPTING))
def test_objectives_on_inner_labels_equal_their_definitions(key, tree):
    logits, z, y = mixed_batch(tree)
    assert int(y.max()) >= tree.num_classes  # inner labels in the batch
    ours = objective(key, tree)
    labels = [label_names(tree)[i] for i in y.tolist()]
    reference = ACCEPTING[key][2]
    read, inputs = reference_inputs(key, ours, z, logits)
    check_against(
        lambda: ours(z, logits, y), lambda: reference(tree, read[0], labels, *read[1:]), *inputs
    )


@pytest.mark.parametrize("tree", TREES.values(), ids=TREES.keys())
@pytest.mark.parametrize("key", sorted(ACCEPTING))
def test_class_labels_give_todays_loss(key, tree):
    """With class labels only the switched objective gives the loss of the objective as it
    was (within rounding: the same formula by other ops); an objective never switched runs
    the very same ops as before (ce: torch's cross_entropy, bit for bit)."""
    logits, z, y = mixed_batch(tree, seed=1)
    y = y % tree.num_classes
    before, after = objective(key, tree, inner=False), objective(key, tree)
    inputs = reference_inputs(key, before, z, logits)[1]
    check_against(lambda: after(z, logits, y), lambda: before(z, logits, y), *inputs)
    if key == "ce":
        assert torch.equal(before(z, logits, y), F.cross_entropy(logits, y))


@pytest.mark.parametrize("key", sorted(ACCEPTING))
def test_objectives_on_inner_labels_wait_for_nothing(key):
    tree = TREES["unbalanced"]
    logits, z, y = mixed_batch(tree)
    ours = objective(key, tree)
    with SyncCounter() as syncs:
        ours(z, logits, y).backward()
    assert syncs.total == 0, dict(syncs.counts)


def test_every_objective_either_takes_inner_labels_or_refuses_them_naming_itself_and_a_node():
    tree = TREES["3 levels"]
    node = label_names(tree)[tree.num_classes]
    takes = {name for name in list_objectives() if get_objective(name).inner_labels}
    assert {"ce", "hxe", "soft_labels", "mtl", "marginal"} <= takes
    for name in list_objectives():
        if name in takes:
            check_inner_labels(name, [node])
            continue
        with pytest.raises(ValueError) as caught:
            check_inner_labels(name, [node, "other"])
        line = str(caught.value)
        assert line.startswith(f"objective {name} cannot take labels at inner nodes")
        assert f"'{node}' (and 1 more nodes)" in line and "\n" not in line
        assert ", ".join(sorted(takes)) in line
    check_inner_labels("supcon", [])  # no inner labels: nothing to refuse


def test_the_config_check_and_the_model_refuse_in_one_line():
    from hierot.models import HierarchyModule

    tree = TREES["2 levels"]
    node = label_names(tree)[tree.num_classes]

    def cfg(name):
        return OmegaConf.create({"objective": {"name": name}, "trainer": {"max_epochs": 20}})

    with pytest.raises(ConfigError, match=f"objective.name: objective supcon cannot .*'{node}'"):
        check_objective_config(cfg("supcon"), tree, 2, [node])
    check_objective_config(cfg("hxe"), tree, 1, [node])
    backbone = torch.nn.Linear(5, 4)
    backbone.num_features = 4
    model = HierarchyModule(backbone, tree, dist="none", objective="quadruplet")
    with pytest.raises(ConfigError, match=f"objective quadruplet cannot .*'{node}'"):
        model.use_inner_labels(tree, [node])


# ------------------------------------------------------------------ CPCC and the metrics


@pytest.mark.parametrize("tree", TREES.values(), ids=TREES.keys())
@pytest.mark.parametrize("nodes", ["leaves", "all"])
def test_cpcc_leaves_inner_samples_out_of_the_classes_or_counts_them_at_their_node(nodes, tree):
    _, z, y = mixed_batch(tree, n=40, seed=2)
    loss = CPCCLoss(tree, "l2", nodes=nodes).double()
    loss.use_inner_labels(tree)
    labels = [label_names(tree)[i] for i in y.tolist()]
    check_against(
        lambda: 1 - loss(z, y), lambda: cpcc_reference(tree, z, labels, nodes == "all"), z
    )


def test_cpcc_with_class_labels_is_unchanged_and_still_waits_once():
    tree = TREES["4 levels"]
    _, z, y = mixed_batch(tree, n=40, seed=3)
    plain, inner = CPCCLoss(tree, "l2"), CPCCLoss(tree, "l2")
    inner.use_inner_labels(tree)
    classes = y % tree.num_classes
    assert torch.equal(plain(z, classes), inner(z, classes))
    for labels in (classes, y):
        with SyncCounter() as syncs:
            inner(z, labels).backward()
        assert syncs.total == 1, dict(syncs.counts)  # the class sizes: the batch's one read


def test_grouping_below_the_classes_is_the_grouping_of_the_class_samples():
    tree = TREES["unbalanced"]
    _, z, y = mixed_batch(tree, n=30, seed=4)
    k = tree.num_classes
    cut = group_by_class(z, y, labels_below=k)
    keep = y < k
    whole = group_by_class(z[keep], y[keep])
    assert torch.equal(cut.classes, whole.classes) and torch.equal(cut.counts, whole.counts)
    assert torch.allclose(cut.class_means, whole.class_means, atol=1e-12)
    assert cut.sizes.tolist() == whole.sizes.tolist()
    none = group_by_class(z[:3], torch.full((3,), k), labels_below=k)
    assert none.num_classes == 0


def test_training_accuracy_counts_an_inner_label_at_its_levels_only():
    tree = TREES["3 levels"]  # 12 classes under 2 x 2 concepts
    maps = label_level_maps(tree)
    names = label_names(tree)
    top = names.index(tree.path(tree.leaves[0])[1])  # level 1 node over classes 0-5
    preds, target = torch.tensor([0, 11, 0]), torch.tensor([top, top, 0])
    top_acc, fine_acc = LevelAccuracy(maps[1]), LevelAccuracy(maps[3])
    top_acc.update(preds, target)
    fine_acc.update(preds, target)
    assert float(top_acc.compute()) == pytest.approx(2 / 3)  # the wrong branch once
    assert float(fine_acc.compute()) == 1.0 and int(fine_acc.total) == 1  # the class label


# ------------------------------------------------------------------ ImageFolder


def genus_tree(tmp_path, inner_split="train", inner="animal"):
    """cat, dog under animal; car, bus under vehicle; images of ``inner`` in ``inner_split``."""
    root = tmp_path / "data"
    classes = ["cat", "dog", "car", "bus"]
    write_folders(root, {"train": classes, "val": classes, "test": classes}, n=1, size=(8, 8))
    write_folders(root, {inner_split: [inner]}, n=4, size=(8, 8))
    tree = tmp_path / "tree.json"
    tree.write_text(json.dumps({"animal": ["cat", "dog"], "vehicle": ["car", "bus"]}))
    return root, tree


def folder_data(root, tree, *extra):
    cfg = compose_config(["data=imagefolder", f"data.root={root}", f"data.hierarchy={tree}",
                          "data.image_size=8", *extra])  # fmt: skip
    dm = build(cfg.data, "data")
    dm.setup()
    return dm


def test_a_folder_named_after_an_inner_node_labels_its_images_at_that_node(tmp_path):
    root, tree = genus_tree(tmp_path)
    dm = folder_data(root, tree)
    assert dm.hierarchy.leaves == ["bus", "car", "cat", "dog"]  # the folder is no class
    assert dm.inner_labels == {"animal": 4}
    label = label_names(dm.hierarchy).index("animal")
    assert label >= 4 and dm.train_set.labels.tolist().count(label) == 4
    assert dm.description()["inner_labels"] == {"animal": 4}
    bank = dm.plain_train_set()  # what kNN banks and prototypes read: classes only
    assert len(bank) == 4 and max(int(bank[i][1]) for i in range(4)) < 4
    assert int(dm.val_set.labels.max()) < 4 and int(dm.test_set.labels.max()) < 4
    # held out from train: from the images of a class only
    carved = folder_data(root, tree, "data.val_split=null", "data.val_fraction=0.5")
    assert int(carved.val_set.labels.max()) < 4 and len(carved.val_set) == 2
    assert carved.train_set.labels.tolist().count(label) == 4
    plain = folder_data(*genus_tree(tmp_path / "plain", inner="cat"))
    assert plain.inner_labels == {} and "inner_labels" not in plain.description()


def test_inner_labels_in_a_test_split_or_at_the_root_are_refused(tmp_path):
    root, tree = genus_tree(tmp_path / "a")
    write_folders(root, {"test": ["animal"]}, n=1, size=(8, 8))
    with pytest.raises(DataError, match="test/animal: images labelled at inner node 'animal'"):
        folder_data(root, tree)
    root, tree = genus_tree(tmp_path / "b", inner="all")
    tree.write_text(json.dumps({"all": {"animal": ["cat", "dog"], "vehicle": ["car", "bus"]}}))
    with pytest.raises(DataError, match=r"'all' is the root of .*: a label there says nothing"):
        folder_data(root, tree)


@pytest.mark.slow
def test_a_run_trains_on_an_inner_node_folder_and_says_so(tmp_path):
    root, tree = genus_tree(tmp_path)
    out = tmp_path / "run"
    run = subprocess.run(
        [sys.executable, "-m", "hierot.train", "debug=fast", "objective=ce", "data=imagefolder",
         f"data.root={root}", f"data.hierarchy={tree}", "data.image_size=8", "dist=l2",
         f"hydra.run.dir={out}"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    log = (out / "train.log").read_text() if (out / "train.log").exists() else run.stderr
    assert "4 images labelled at inner nodes (animal 4)" in log + run.stderr + run.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["train/loss"] == metrics["train/loss"]
    assert json.loads((out / "data.json").read_text())["inner_labels"] == {"animal": 4}
