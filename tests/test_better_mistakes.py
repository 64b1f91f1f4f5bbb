"""The newer papers' metrics and decoders, against their transcribed code
(tests/helpers/eval_references.py): HOPS (Hier-COS's notebook), full-path accuracy (Hier-COS's
HAFeat-style FPA, and the level heads' path), hierarchical ensembles' post-hoc adjustment
(``hie``), hd@20 on fewer than 20 classes."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from hierot.checks import run_checks
from hierot.config import compose_config
from hierot.errors import ConfigError
from hierot.hierarchy import Hierarchy
from hierot.metrics.decoding import hie_probabilities, ranked_classes
from hierot.metrics.features import evaluate_features, full_path_accuracy
from hierot.metrics.hops import hops, hops_weights, preference_ranks
from hierot.models.module import level_keys
from hierot.objectives.mtl import MultiTaskLevels
from hierot.predict import batch_predictions
from hierot.train import train
from tests.helpers.eval_references import (
    crm_table,
    full_path_accuracy_reference,
    haframe_lca_similarity,
    hie_reference,
    hops_reference,
)
from tests.helpers.reports import read_report
from tests.helpers.trees import TREES, balanced

KS = (1, 2, 3, 5, 20)


def scores(n, k, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=gen, dtype=torch.float64) * scale
    return logits, torch.randint(0, k, (n,), generator=gen)


def children_of(tree: Hierarchy) -> list[list[int]]:
    """Hierarchical-Ensembles' ``parent_to_child``: the classes of every parent, in the order
    of ``Hierarchy.parent_map``."""
    parent = tree.parent_map()
    return [torch.nonzero(parent == p).flatten().tolist() for p in range(int(parent.max()) + 1)]


def bottom_up(tree: Hierarchy) -> np.ndarray:
    """Hier-COS's ``bottom_up_hierarchy``: class id, then its concept at each level upwards."""
    maps = tree.label_maps()
    return torch.stack([maps[level] for level in reversed(tree.levels)], dim=1).numpy()


@pytest.mark.parametrize("name", list(TREES))
def test_hops_equals_the_hier_cos_notebook(name):
    tree = TREES[name]
    lca = tree.lca_heights(torch.float64)
    similarity = haframe_lca_similarity(lca.numpy())
    logits, target = scores(60, tree.num_classes, seed=1)
    for memory_mb in (256, 1e-3):  # all rows at once, and one row a block
        got = hops(logits, target, lca, KS, memory_mb=memory_mb)
        for k in (*KS, None):
            key = "hops" if k is None else f"hops@{k}"
            ref = hops_reference(logits.numpy(), target.numpy(), similarity, k)
            assert float(got[key]) == pytest.approx(ref, abs=1e-12), key


def test_hops_ranks_and_weights_by_hand():
    # true class 0 of balanced([2, 3]): itself (0), its 2 siblings (1), the 3 cousins (2)
    tree = balanced([2, 3])
    ranks, expected = preference_ranks(tree.lca_heights()[:1])
    assert ranks.tolist() == [[0, 1, 1, 2, 2, 2]]
    assert expected.tolist() == [[0, 1, 1, 2, 2, 2]]
    # rank 1: 1/2 falling towards 1/4 over 2 places; rank 2 (the deepest): 1/4 towards 0
    weights = hops_weights(expected)[0].tolist()
    assert weights == pytest.approx([1, 1 / 2, 3 / 8, 1 / 4, 1 / 6, 1 / 12], abs=1e-15)
    # the ranking 0, 3, 1, 2, 4, 5 has ranks 0, 2, 1, 1, 2, 2: |diff| 0, 1, 0, 1, 0, 0
    logits = torch.tensor([[6.0, 4, 3, 5, 2, 1]])
    target = torch.tensor([0])
    got = hops(logits, target, tree.lca_heights(), (1, 2, 3))
    worst = {2: 1 * 1 + 1 / 2 * 1, 3: 1 * 1 + 0 + 3 / 8 * 1}  # first k reversed: 1,0 / 1,1,0
    assert float(got["hops@1"]) == 1.0
    assert float(got["hops@2"]) == pytest.approx(1 - (1 / 2) / worst[2])
    assert float(got["hops@3"]) == pytest.approx(1 - (1 / 2) / worst[3])
    full = 1 * 2 + 1 / 2 + 3 / 8 + 1 / 4 + 1 / 6 + 1 / 12 * 2  # 0,1,1,2,2,2 against 2,2,2,1,1,0
    assert float(got["hops"]) == pytest.approx(1 - (1 / 2 + 1 / 4) / full)


def test_hops_is_one_for_the_trees_order_and_clipped_at_zero():
    tree = TREES["3 levels"]
    lca = tree.lca_heights(torch.float64)
    target = torch.arange(tree.num_classes)
    # scores falling with the cost, ties broken by a small class-dependent amount
    perfect = -lca[target] - 1e-3 * torch.arange(tree.num_classes)
    got = hops(perfect, target, lca, KS)
    assert all(float(v) == pytest.approx(1.0) for v in got.values())
    got = hops(-perfect, target, lca, KS)  # the reverse order: at least the worst of k
    assert all(float(v) == pytest.approx(0.0, abs=1e-12) for v in got.values())


def test_a_k_above_the_classes_ranks_them_all():
    tree = TREES["2 levels"]  # 9 classes
    lca = tree.lca_heights(torch.float64)
    logits, target = scores(40, tree.num_classes, seed=2)
    got = hops(logits, target, lca, (9, 20))
    assert float(got["hops@20"]) == float(got["hops@9"]) == float(got["hops"])
    names = level_keys(tree)
    out = evaluate_features(
        torch.randn(40, 4, dtype=torch.float64), logits, target, tree, names, {"l2": {}},
        ahd_k=[1, 5, 20], lca=lca,
    )  # fmt: skip
    # CRM's get_topk (heapq.nlargest) gives all 9 classes for k = 20 too
    ref = crm_table(logits.numpy(), target.numpy(), lca.numpy(), rerank=False)
    assert out["test/hdist_lca@20"] == pytest.approx(ref["hdist@20"], abs=1e-9)
    assert out["test/hdist_lca@20"] == pytest.approx(float(lca.mean()), abs=1e-9)
    assert out["test/hops@20"] == out["test/hops"]


@pytest.mark.parametrize("name", list(TREES))
def test_hie_equals_hierarchical_ensembles_post_hoc_adjustment(name):
    tree = TREES[name]
    logits, _ = scores(50, tree.num_classes, seed=3)
    expected = hie_reference(logits, children_of(tree))
    got = hie_probabilities(logits.softmax(dim=1), tree.parent_map())
    assert torch.allclose(got, expected, rtol=0, atol=1e-15)
    ranked = ranked_classes(logits, 5, "hie", parent=tree.parent_map(), memory_mb=1e-3)
    assert torch.equal(ranked, expected.topk(min(5, tree.num_classes), dim=1).indices)


@pytest.mark.parametrize("name", ["3 levels", "unbalanced"])
def test_hie_reads_the_parents_from_a_second_model(name):
    # decode_parent_ckpt: the parents' probabilities are another model's summed softmax
    tree = TREES[name]
    logits, target = scores(40, tree.num_classes, seed=7)
    other, _ = scores(40, tree.num_classes, seed=8)
    mapping = children_of(tree)
    coarse = torch.stack([other.softmax(1)[:, c].sum(1) for c in mapping], 1)
    expected = hie_reference(logits, mapping, coarse)
    parent = tree.parent_map()
    got = hie_probabilities(logits.softmax(dim=1), parent, other.softmax(dim=1))
    assert torch.allclose(got, expected, rtol=0, atol=1e-15)
    assert not torch.allclose(got, hie_reference(logits, mapping), atol=1e-3)
    ranked = ranked_classes(logits, 5, "hie", parent=parent, memory_mb=1e-3, parent_logits=other)
    assert torch.equal(ranked, expected.topk(5, dim=1).indices)
    lca = tree.lca_heights(torch.float64)
    own = hops(logits, target, lca, (1, 5), "hie", parent=parent)
    theirs = hops(logits, target, lca, (1, 5), "hie", parent=parent, parent_logits=other)
    # the same model as its own second model changes nothing
    assert hops(logits, target, lca, (1, 5), "hie", parent=parent, parent_logits=logits) == own
    assert theirs != own


def test_hie_moves_the_prediction_into_the_heaviest_parent():
    tree = balanced([2, 3])  # parents: classes 0-2 and 3-5
    probs = torch.tensor([[0.25, 0.25, 0.0, 0.3, 0.1, 0.1]]) + 1e-9
    assert ranked_classes(probs.log(), 1).item() == 3  # argmax
    # p(parent) 0.5 against 0.5: 0.25^2 against 0.3 * 0.5; then a heavier first parent
    assert ranked_classes(probs.log(), 1, "hie", parent=tree.parent_map()).item() == 3
    probs = torch.tensor([[0.28, 0.28, 0.0, 0.3, 0.07, 0.07]]) + 1e-9
    adjusted = hie_probabilities(probs, tree.parent_map())
    assert adjusted[0, 0] > adjusted[0, 3]  # 0.28 * 0.56 > 0.3 * 0.44
    assert ranked_classes(probs.log(), 1, "hie", parent=tree.parent_map()).item() in (0, 1)
    with pytest.raises(ValueError, match=r"hie decoding needs the \(K,\) parent of every class"):
        ranked_classes(probs.log(), 1, "hie")


def test_predict_decodes_hie_as_evaluate_ranks():
    tree = TREES["3 levels"]
    logits, _ = scores(20, tree.num_classes, seed=4)
    logits = logits.float()  # as batch_predictions reads them
    found = batch_predictions(logits, 3, {}, ["argmax", "hie"], None, tree.parent_map())
    expected = ranked_classes(logits, 1, "hie", parent=tree.parent_map())[:, 0]
    assert torch.equal(found["hie"], expected)


@pytest.mark.parametrize("name", ["2 levels", "3 levels", "4 levels"])
def test_marginal_full_path_accuracy_equals_hier_cos(name):
    tree = TREES[name]
    logits, target = scores(200, tree.num_classes, seed=5, scale=1.0)
    target = torch.where(torch.rand(200, generator=torch.Generator().manual_seed(0)) < 0.5,
                         logits.argmax(1), target)  # fmt: skip
    ref = full_path_accuracy_reference(logits.softmax(1).numpy(), target.numpy(), bottom_up(tree))
    out = evaluate_features(
        torch.randn(200, 4, dtype=torch.float64), logits, target, tree, level_keys(tree),
        {"l2": {}}, ahd_k=[1],
    )  # fmt: skip
    assert out["test/acc_path_marginal"] == pytest.approx(ref, abs=1e-12)
    assert 0.2 < ref < out["test/acc_fine"]  # stricter than the fine level alone
    # without level heads every level is mapped from the fine class: the fine accuracy
    assert out["test/acc_path"] == pytest.approx(out["test/acc_fine"], abs=1e-7)  # float32


def test_hier_cos_full_path_accuracy_fails_on_a_concept_of_one_class():
    # Its probabilities[:, argwhere(...)].squeeze() drops the class axis of a one-class
    # concept, and .sum(1) then sums over nothing it can: the unbalanced tree's one-child
    # chain (c > c1 > c11) raises there, where hierot's marginal is that class's probability.
    tree = TREES["unbalanced"]
    logits, target = scores(30, tree.num_classes, seed=6)
    with pytest.raises(np.exceptions.AxisError):
        full_path_accuracy_reference(logits.softmax(1).numpy(), target.numpy(), bottom_up(tree))
    out = evaluate_features(
        torch.randn(30, 4, dtype=torch.float64), logits, target, tree, level_keys(tree),
        {"l2": {}}, ahd_k=[1],
    )  # fmt: skip
    assert 0 <= out["test/acc_path_marginal"] <= out["test/acc_fine"]


def test_full_path_accuracy_reads_each_level_from_its_own_head():
    tree = balanced([2, 3])  # level 1: concepts 0 (classes 0-2) and 1 (classes 3-5)
    target = torch.tensor([0, 1, 4, 5])
    logits = torch.full((4, 6), -5.0)
    logits[torch.arange(4), torch.tensor([0, 1, 4, 2])] = 5.0  # fine: right, right, right, wrong
    heads = {1: torch.tensor([[3.0, 0], [0, 3], [0, 3], [0, 3]])}  # right, wrong, right, right
    names = level_keys(tree, ["top"])
    z = torch.randn(4, 3, dtype=torch.float64)
    out = evaluate_features(z, logits, target, tree, names, {"l2": {}}, ahd_k=[1])
    assert out["test/acc_path"] == out["test/acc_fine"] == 0.75
    out = evaluate_features(z, logits, target, tree, names, {"l2": {}}, ahd_k=[1],
                            level_logits=heads)  # fmt: skip
    assert out["test/acc_top_head"] == 0.75
    assert out["test/acc_path"] == 0.5  # samples 0 and 2
    assert out["test/acc_fine"] == 0.75
    mapped = {1: torch.tensor([0, 1, 1, 1]), 2: torch.tensor([0, 1, 4, 5])}
    assert float(full_path_accuracy(mapped, target, tree)) == 0.75


def test_mtl_level_logits_are_its_heads_for_every_level_above_the_classes():
    tree = TREES["3 levels"]  # levels 1, 2 above the classes: 2 and 4 concepts
    objective = MultiTaskLevels(tree, 8)
    z = torch.randn(5, 8)
    got = objective.level_logits(z)
    assert sorted(got) == [1, 2]
    assert got[1].shape == (5, 2) and got[2].shape == (5, 4)
    assert torch.equal(got[2], objective.heads[1](z))


def test_evaluate_takes_hie_and_refuses_unknown_decodings():
    cfg = compose_config(["ckpt=x.ckpt", "decode=[argmax,crm,hie]"], config_name="evaluate")
    assert list(cfg.ahd_k) == [1, 5, 20]
    run_checks(cfg, "evaluate")
    cfg = compose_config(["ckpt=x.ckpt", "decode=[argmax,hei]"], config_name="evaluate")
    with pytest.raises(ConfigError) as info:
        run_checks(cfg, "evaluate")
    assert str(info.value) == "decode[1]: unknown decoding 'hei'; available: argmax, crm, hie"


@pytest.mark.slow
def test_evaluate_writes_the_new_keys_for_an_mtl_run(tmp_path):
    run = tmp_path / "run"
    tiny = ["debug=tiny", "data.test_per_class=2", "trainer.limit_train_batches=2"]
    train(compose_config([*tiny, "objective=mtl", f"output_dir={run}"]))
    trained = json.loads((run / "metrics.json").read_text())
    done = subprocess.run(
        [sys.executable, "-m", "hierot.evaluate", f"ckpt={trained['best_checkpoint']}",
         "decode=[argmax,crm,hie]", "ahd_k=[1,5,30]", "figures=false",
         "distances={l2: {}}", f"hydra.run.dir={tmp_path / 'eval'}", "enable_progress_bar=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    log = (tmp_path / "eval" / "evaluate.log").read_text()
    assert "ahd_k: 30 above the 24 classes: those @k metrics rank all 24 classes" in log
    for head in ("", "crm/", "hie/"):
        for key in ("hops", "hops@1", "hops@5", "hops@30", "acc_top1", "hdist_lca@30"):
            assert 0 <= got[f"test/{head}{key}"] <= 24, head + key
    assert got["test/hops@30"] == got["test/hops"]
    for key in ("acc_path", "acc_path_marginal", "acc_palette_head", "acc_shape_head"):
        assert 0 <= got[f"test/{key}"] <= got["test/acc_fine"] or key.endswith("_head"), key
    # the report puts each decoding in its column
    report = log.split("every metric of metrics.json, by family:\n\n")[1].split("\n\n[")[0]
    lines = [line.split() for line in report.splitlines()]
    assert ["accuracy", "value", "crm", "hie"] in lines
    assert ["mistakes", "value", "crm", "hie"] in lines
    printed = read_report(report)
    assert set(printed) == set(got)
    assert printed["test/hie/hops@5"][0] == "mistakes"
    assert printed["test/acc_path"][0] == printed["test/acc_shape_head"][0] == "accuracy"
