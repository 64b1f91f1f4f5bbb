"""Node predictions (Valmadre, NeurIPS 2022): our tensor rules, scores and operating curve
against the transcription of jvlmdr/hiercls in tests/helpers/node_references.py, on every
tree of TREES, and hand-made cases with known numbers."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from hierot.errors import ConfigError
from hierot.hierarchy import Hierarchy
from hierot.metrics.node_eval import check_node_config, node_metrics
from hierot.metrics.node_rules import (
    leaf_nodes,
    node_probabilities,
    node_tree,
    plurality_nodes,
    plurality_threshold,
    rule_nodes,
    threshold_nodes,
    top_down_nodes,
)
from hierot.metrics.node_scores import (
    CURVE_AREAS,
    NODE_METRICS,
    curve_sums,
    node_scores,
    pareto_integrate,
)

from helpers.node_references import (
    RefTree,
    curve_reference,
    leaf_reference,
    majority_reference,
    operating_curve,
    pareto_optimal_predictions,
    plurality_reference,
    scores_reference,
    top_down_reference,
)
from helpers.node_references import pareto_integrate as pareto_integrate_reference
from helpers.trees import TREES


def probabilities(n: int, k: int, seed: int) -> torch.Tensor:
    """(n, k) float64 softmax probabilities, from flat to peaked rows (so that every rule
    stops at the root for some samples and at a class for others)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-1, 1.3, n, dtype=torch.float64)[:, None]
    return (torch.randn(n, k, generator=g, dtype=torch.float64) * scale).softmax(dim=1)


@pytest.mark.parametrize("name", list(TREES))
def test_the_node_tree_is_the_hierarchy(name):
    tree, ref = node_tree(TREES[name]), RefTree(TREES[name])
    assert tree.depth.tolist() == ref.depths.tolist()
    assert tree.leaves.tolist() == ref.num_leaf_descendants.tolist()
    assert tree.class_node.tolist() == ref.class_node
    assert tree.parent.tolist() == [p[-2] if len(p) > 1 else -1 for p in ref.paths]
    assert tree.eligible.tolist() == ref.not_trivial.tolist()  # the roots have 3 children
    assert tree.fallback == ref.root
    probs = probabilities(30, TREES[name].num_classes, 0)
    ours = node_probabilities(probs, tree)
    theirs = np.stack([ref.node_probs(p) for p in probs.numpy()])
    assert np.allclose(ours.numpy(), theirs, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", list(TREES))
def test_every_rule_equals_the_reference(name):
    tree, ref = node_tree(TREES[name]), RefTree(TREES[name])
    probs = probabilities(200, TREES[name].num_classes, 1)
    nodes = node_probabilities(probs, tree)
    theirs = [ref.node_probs(p) for p in probs.numpy()]
    for rule, reference in [
        ("leaf", leaf_reference),
        ("majority", majority_reference),
        ("plurality", plurality_reference),
    ]:
        expected = [reference(ref, p) for p in theirs]
        assert rule_nodes(nodes, tree, rule).tolist() == expected, rule
    for t in (0.0, 0.3, 0.5, 0.9):
        expected = [top_down_reference(ref, p, t) for p in theirs]
        assert top_down_nodes(nodes, tree, t).tolist() == expected, t
    # the rules stopped above the classes for some samples and at a class for others
    for rule in ("majority", "plurality"):
        nodes_of = rule_nodes(nodes, tree, rule)
        assert (tree.leaves[nodes_of] > 1).any() and (tree.leaves[nodes_of] == 1).any(), rule


@pytest.mark.parametrize("name", list(TREES))
def test_the_scores_of_every_node_equal_the_reference(name):
    tree, ref = node_tree(TREES[name]), RefTree(TREES[name])
    k, m = TREES[name].num_classes, tree.num_nodes
    target = torch.arange(k)
    candidates = torch.arange(m).expand(k, m)  # every class against every node
    ours = node_scores(candidates, target, tree)
    assert set(ours) == set(NODE_METRICS)
    for c in range(k):
        for j in range(m):
            expected = scores_reference(ref, ref.class_node[c], j)
            got = {key: float(v[c, j]) for key, v in ours.items()}
            assert got == pytest.approx(expected, abs=1e-12), (c, j)


@pytest.mark.parametrize("name", list(TREES))
def test_the_operating_curve_equals_the_notebooks(name):
    tree, ref = node_tree(TREES[name]), RefTree(TREES[name])
    probs = probabilities(60, TREES[name].num_classes, 2)
    target = torch.randint(
        0, TREES[name].num_classes, (60,), generator=torch.Generator().manual_seed(3)
    )
    grid = torch.linspace(0, 1, 101, dtype=torch.float64)
    nodes = node_probabilities(probs, tree)
    ours = {key: v / 60 for key, v in curve_sums(nodes, target, tree, grid).items()}
    theirs = curve_reference(ref, probs.numpy(), target.numpy(), 101)
    for key in NODE_METRICS:
        assert np.allclose(ours[key].numpy(), theirs[key], rtol=0, atol=1e-12), key
    # the curve is the threshold rule at each threshold
    for i in (0, 17, 50, 99, 100):
        direct = node_scores(threshold_nodes(nodes, tree, float(grid[i]))[:, None], target, tree)
        for key in ("correct", "hf1", "info_rec"):
            assert float(ours[key][i]) == pytest.approx(float(direct[key].mean()), abs=1e-12)
    assert float(ours["depth"][-1]) == float(ours["hrec"][-1]) == 0.0  # t = 1: the root
    assert all(float(ours[key].min()) >= 0 for key in NODE_METRICS)  # sums, no cancellation
    assert float(ours["exact"][0]) == float(
        (tree.class_node[probs.argmax(1)] == tree.class_node[target]).double().mean()
    )
    for area, (x, y) in CURVE_AREAS.items():
        expected = pareto_integrate_reference(theirs[x], theirs[y])
        assert float(pareto_integrate(ours[x], ours[y])) == pytest.approx(expected, abs=1e-12), area


def test_node_metrics_are_the_means_of_the_reference_rules():
    hierarchy = TREES["unbalanced"]
    ref = RefTree(hierarchy)
    probs = probabilities(50, hierarchy.num_classes, 4)
    target = torch.randint(
        0, hierarchy.num_classes, (50,), generator=torch.Generator().manual_seed(5)
    )
    out, curve = node_metrics(probs.log(), target, hierarchy, curve_points=11, memory_mb=1e-3)
    assert curve["threshold"].tolist() == pytest.approx([i / 10 for i in range(11)])
    theirs = [ref.node_probs(p) for p in probs.numpy()]
    for rule, reference in [("majority", majority_reference), ("plurality", plurality_reference)]:
        scored = [scores_reference(ref, ref.class_node[int(y)], reference(ref, p))
                  for p, y in zip(theirs, target, strict=True)]  # fmt: skip
        for key in NODE_METRICS:
            expected = sum(s[key] for s in scored) / 50
            assert out[f"nodes/{rule}/{key}"] == pytest.approx(expected, abs=1e-12), (rule, key)
    assert out["nodes/leaf/exact"] == out["nodes/leaf/correct"]
    assert out["nodes/top_down/depth"] > out["nodes/majority/depth"]  # t = 0: to a class
    rules = ("leaf", "top_down", "majority", "plurality")
    keys = {f"nodes/{r}/{k}" for r in rules for k in NODE_METRICS}
    assert set(out) == keys | {f"nodes/curve/{a}" for a in CURVE_AREAS}
    assert 0 < out["nodes/curve/ac_info"] <= 1


def test_majority_is_the_threshold_rule_and_top_down_at_one_half():
    hierarchy = TREES["4 levels"]
    tree = node_tree(hierarchy)
    nodes = node_probabilities(probabilities(300, hierarchy.num_classes, 6), tree)
    majority = rule_nodes(nodes, tree, "majority")
    assert torch.equal(majority, threshold_nodes(nodes, tree, 0.5))
    assert torch.equal(majority, top_down_nodes(nodes, tree, 0.5))
    # t = 0 descends to a class, not always the most probable one (greedy)
    greedy = top_down_nodes(nodes, tree, 0.0)
    assert torch.isin(greedy, tree.class_node).all()
    assert (greedy != leaf_nodes(nodes, tree)).any()


# Valmadre's infer_test.py tree:  0 -> {1, 2}, 1 -> {3, 4, 5}, 2 -> {6, 7, 8}
BASIC = Hierarchy.from_paths(
    [["n1", c] for c in ("n3", "n4", "n5")] + [["n2", c] for c in ("n6", "n7", "n8")]
)


def basic_node_probs(values: dict[str, float]) -> tuple[torch.Tensor, dict[str, int]]:
    """Class probabilities by name -> (1, M) node probabilities and each name's node id."""
    tree = node_tree(BASIC)
    ids = {name: i for i, name in enumerate(BASIC.nodes)}
    probs = torch.tensor([[values.get(leaf, 0.0) for leaf in BASIC.leaves]], dtype=torch.float64)
    return node_probabilities(probs, tree), ids


def test_plurality_on_valmadres_own_case():
    # their TestPlurality.test_basic: p = [1.0, 0.8, 0.2, 0.4, 0.2, 0.2, 0.0, 0.0, 0.2]
    tree = node_tree(BASIC)
    nodes, ids = basic_node_probs({"n3": 0.4, "n4": 0.2, "n5": 0.2, "n8": 0.2})
    assert float(plurality_threshold(nodes, tree)) == pytest.approx(0.2)
    assert int(plurality_nodes(nodes, tree)) == ids["n3"]  # 0.4 > 0.2: down to the class
    assert int(rule_nodes(nodes, tree, "majority")) == ids["n1"]  # 0.8 > 0.5, 0.4 is not
    assert int(top_down_nodes(nodes, tree, 0.0)) == ids["n3"]
    # their test_2d's second row: second best 0.3 (0.7 against 0.3); n3 at 0.5 is above it
    nodes, ids = basic_node_probs({"n3": 0.5, "n4": 0.1, "n5": 0.1, "n6": 0.3})
    assert float(plurality_threshold(nodes, tree)) == pytest.approx(0.3)
    assert int(plurality_nodes(nodes, tree)) == ids["n3"]
    # a tie for the best child: the threshold is the tied value, no class exceeds it
    nodes, ids = basic_node_probs({"n3": 0.3, "n4": 0.3, "n5": 0.1, "n6": 0.3})
    assert int(plurality_nodes(nodes, tree)) == ids["n1"]


def test_scores_of_hand_made_predictions():
    tree = node_tree(BASIC)
    ids = {name: i for i, name in enumerate(BASIC.nodes)}
    truth = torch.tensor([BASIC.index("n3")] * 4)
    predicted = torch.tensor([[ids[BASIC.nodes[0]]], [ids["n3"]], [ids["n4"]], [ids["n1"]]])
    got = {k: v[:, 0].tolist() for k, v in node_scores(predicted, truth, tree).items()}
    # the root: recall 0, precision 1 (0 / 0), F 0, Wu-Palmer 2 * 1 / (1 + 3)
    assert [got[k][0] for k in ("correct", "exact", "hprec", "hrec", "hf1", "wup", "depth")] == (
        [1, 0, 1, 0, 0, 0.5, 0]
    )
    assert got["info_rec"][0] == 0 and got["info_prec"][0] == 1
    # the exact class: everything 1
    assert all(got[k][1] == 1 for k in NODE_METRICS if k != "depth") and got["depth"][1] == 2
    # a sibling class: the parent shared, P = R = 1/2, Wu-Palmer 2 * 2 / (3 + 3)
    assert [got[k][2] for k in ("correct", "hprec", "hrec", "hf0.5", "hf1", "hf2")] == [
        0,
        0.5,
        0.5,
        0.5,
        0.5,
        0.5,
    ]
    assert got["wup"][2] == pytest.approx(2 / 3)
    # the parent: correct, P = 1, R = 1/2, F_beta = (1 + b^2) R / (b^2 + R)
    assert got["correct"][3] == 1 and got["hprec"][3] == 1 and got["hrec"][3] == 0.5
    for beta in (0.5, 1, 2):
        assert got[f"hf{beta:g}"][3] == pytest.approx((1 + beta**2) * 0.5 / (beta**2 + 0.5))
    assert got["info_rec"][3] == pytest.approx(1 / np.log2(6))  # log2(6/3) / log2(6)


def test_with_edge_depths_wu_palmer_would_be_hf1():
    tree = node_tree(TREES["unbalanced"])
    k, m = TREES["unbalanced"].num_classes, tree.num_nodes
    candidates = torch.arange(m).expand(k, m)
    got = node_scores(candidates, torch.arange(k), tree)
    d_m, d_g = tree.depth[candidates].double(), tree.depth[tree.class_node][:, None].double()
    lca = got["hprec"] * d_m  # shared edges
    assert torch.allclose(2 * lca / (d_m + d_g), got["hf1"], atol=1e-12)
    assert (got["wup"] > got["hf1"]).any()


def test_a_one_child_chain_is_never_predicted():
    # the unbalanced tree's c -> c1 -> c11: c and c1 carry c11's probability
    hierarchy = TREES["unbalanced"]
    tree = node_tree(hierarchy)
    ids = {name: i for i, name in enumerate(hierarchy.nodes)}
    assert not tree.eligible[ids["c"]] and not tree.eligible[ids["c1"]]
    probs = torch.zeros(1, hierarchy.num_classes, dtype=torch.float64)
    probs[0, hierarchy.index("c11")] = 0.7
    probs[0, hierarchy.index("a1")] = 0.3
    nodes = node_probabilities(probs, tree)
    assert float(nodes[0, ids["c"]]) == float(nodes[0, ids["c11"]]) == 0.7
    for rule in ("majority", "plurality", "top_down"):
        assert int(rule_nodes(nodes, tree, rule)) == ids["c11"], rule
    assert int(threshold_nodes(nodes, tree, 0.69)) == ids["c11"]
    assert int(threshold_nodes(nodes, tree, 0.7)) == tree.fallback


def test_bad_options_are_one_line_errors():
    tree = node_tree(TREES["2 levels"])
    with pytest.raises(
        ValueError,
        match=r"^node rule: unknown rule 'greedy'; available: leaf, top_down, majority, plurality$",
    ):
        rule_nodes(torch.ones(1, tree.num_nodes, dtype=torch.float64), tree, "greedy")
    good = {"node_curve_points": 1001, "top_down_threshold": 0.0}
    check_node_config(OmegaConf.create(good))
    for bad, message in [
        ({"node_curve_points": 1}, "node_curve_points must be an integer >= 2, got 1"),
        ({"node_curve_points": 10.5}, "node_curve_points must be an integer >= 2, got 10.5"),
        ({"top_down_threshold": 1.0}, "top_down_threshold must be a number in [0, 1), got 1.0"),
        (
            {"top_down_threshold": "half"},
            "top_down_threshold must be a number in [0, 1), got 'half'",
        ),
    ]:
        with pytest.raises(ConfigError) as info:
            check_node_config(OmegaConf.create({**good, **bad}))
        assert str(info.value) == message


def test_a_node_at_exactly_the_threshold_is_not_predicted_there():
    # n3 and n6 at 0.5 each: Valmadre's own curve steps to n3 at the score 0.5 (>=), his
    # notebook's resampling at t = 0.5 (and majority's p > 0.5, and hierot) stay at the root
    ref, tree = RefTree(BASIC), node_tree(BASIC)
    nodes, ids = basic_node_probs({"n3": 0.5, "n6": 0.5})
    p = nodes[0].numpy()
    seq = pareto_optimal_predictions(ref.specificity, p, None, ref.not_trivial)
    assert seq.tolist() == [ids[BASIC.nodes[0]], ids["n3"]]
    scores, totals = operating_curve([p[seq]], {"depth": [ref.depths[seq].astype(float)]})
    assert scores.tolist() == [0.5] and totals["depth"].tolist() == [0.0, 2.0]  # >= at 0.5
    probs = torch.tensor([[0.5 if leaf in ("n3", "n6") else 0.0 for leaf in BASIC.leaves]])
    resampled = curve_reference(ref, probs.double().numpy(), np.array([0]), 3)  # t = 0, .5, 1
    assert resampled["depth"].tolist() == [2.0, 0.0, 0.0]
    grid = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    ours = curve_sums(nodes, torch.tensor([0]), tree, grid)["depth"]
    assert ours.tolist() == [2.0, 0.0, 0.0]
    assert int(rule_nodes(nodes, tree, "majority")) == tree.fallback
