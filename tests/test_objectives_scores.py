"""The objectives that score the classes themselves (``yolo``, ``embedding``, ``hiercos``)
against their transcribed references (tests/helpers/score_references.py), in float64, loss,
gradient and class scores, on 2-, 3- and 4-level trees and on a tree whose leaves sit at
different depths; the references' quirks, with the numbers; and the model predicting with
the objective's scores (``Objective.class_scores``) in every metric."""

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hierot.hierarchy import Hierarchy
from hierot.objectives import build_objective, check_objective
from hierot.objectives.embedding import class_embeddings

from helpers.batches import objective_batch as batch
from helpers.score_references import (
    HierCOSReference,
    all_node_classes,
    cosine_plus_xent_reference,
    unitsphere_reference,
    wordvec_ranking,
    yolo_reference,
)
from helpers.trees import TREES


@pytest.fixture(params=list(TREES))
def tree(request) -> Hierarchy:
    return TREES[request.param]


def objective(name: str, tree: Hierarchy, **options):
    torch.manual_seed(0)
    return build_objective(name, tree, 6, options).double()


def assert_same_loss_and_gradient(ours, reference, inputs):
    g_ours = torch.autograd.grad(ours, inputs, retain_graph=True)
    g_ref = torch.autograd.grad(reference, inputs, retain_graph=True)
    assert float(ours.detach()) == pytest.approx(float(reference.detach()), rel=1e-6, abs=1e-9)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def in_order(x: torch.Tensor, names: list[str], order: list[str], fill: torch.Tensor | None = None):
    """The columns of ``x`` (one per name of ``names``) in the order ``order``; a name not in
    ``names`` (the root) takes the column ``fill``."""
    pos = {n: i for i, n in enumerate(names)}
    return torch.stack([x[:, pos[n]] if n in pos else fill for n in order], 1)


# -- yolo ------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha, normalize", [(0.0, True), (0.0, False), (0.4, False), (0.9, True)])
def test_yolo_equals_making_better_mistakes(tree, alpha, normalize):
    z, logits, y = batch(tree)
    ours = objective("yolo", tree, alpha=alpha, normalize=normalize)
    nodes = ours.nodes.names
    assert nodes[: tree.num_classes] == tree.leaves and len(nodes) == len(tree.nodes) - 1
    x = torch.cat([logits, ours.inner(z)], 1)
    root_logit = torch.randn(len(y), dtype=torch.float64)  # the reference's, ignored
    inputs = in_order(x, nodes, all_node_classes(tree), fill=root_logit)
    ref_loss, ref_probs = yolo_reference(tree, inputs, y, alpha, normalize)
    assert_same_loss_and_gradient(ours(z, logits, y), ref_loss, [logits, z])
    scores = ours.class_scores(z, logits)
    torch.testing.assert_close(scores.exp(), ref_probs, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(scores.exp().sum(1), torch.ones(len(y), dtype=torch.float64))


def test_yolo_reference_quirks_the_root_logit_and_the_scale():
    tree = TREES["2 levels"]  # 1 root, 3 concepts, 9 classes: |V| = 13
    z, logits, y = batch(tree)
    ours = objective("yolo", tree)
    x = torch.cat([logits, ours.inner(z)], 1).detach()
    root = torch.zeros(len(y), dtype=torch.float64, requires_grad=True)
    inputs = in_order(x, ours.nodes.names, all_node_classes(tree), fill=root)
    loss, probs = yolo_reference(tree, inputs, y, 0.0, True)
    # 1. The root's logit is a softmax of one: log-probability 0, gradient 0 (left out here).
    (grad,) = torch.autograd.grad(loss, [root])
    assert torch.equal(grad, torch.zeros_like(grad))
    moved_inputs = in_order(x, ours.nodes.names, all_node_classes(tree), fill=root + 50)
    moved, moved_probs = yolo_reference(tree, moved_inputs, y, 0.0, True)
    assert float(moved.detach()) == float(loss.detach()) and torch.equal(moved_probs, probs)
    # 2. Its default weighting (alpha 0, normalised) is the plain sum over 13 nodes: the
    # loss and every gradient 13 times smaller (here 0.2518 against 3.274)
    loss, plain = float(loss.detach()), float(ours(z.detach(), logits.detach(), y))
    assert loss * 13 == pytest.approx(plain, rel=1e-12)
    assert loss == pytest.approx(0.2518, abs=1e-4) and plain == pytest.approx(3.274, abs=1e-3)


def test_yolo_a_single_child_gets_no_gradient():
    tree = TREES["unbalanced"]  # c -> c1 -> c11, a chain
    z, logits, y = batch(tree)
    ours = objective("yolo", tree)
    loss = ours(z, logits, y)
    (grad,) = torch.autograd.grad(loss, [logits])
    c11 = tree.index("c11")
    assert torch.equal(grad[:, c11], torch.zeros_like(grad[:, c11]))
    assert grad.abs().sum() > 0


# -- embedding ---------------------------------------------------------------------------------


def test_class_embeddings_equal_semantic_embeddings(tree):
    ours = class_embeddings(tree)
    ref = unitsphere_reference(tree)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-12)
    heights = tree.lca_heights(torch.float64)
    torch.testing.assert_close(ours @ ours.T, 1 - heights / heights.max(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("xent_weight", [0.1, 0.0, 1.0])
def test_embedding_equals_making_better_mistakes(tree, xent_weight):
    z, logits, y = batch(tree)
    ours = objective("embedding", tree, xent_weight=xent_weight)
    embeddings = torch.from_numpy(unitsphere_reference(tree))
    ref = cosine_plus_xent_reference(embeddings, logits, y, xent_weight)
    assert_same_loss_and_gradient(ours(z, logits, y), ref, [logits])
    # predictions: the reference ranks the classes by cosine distance
    k = min(5, tree.num_classes)
    ranked = ours.class_scores(z, logits).topk(k, dim=1).indices.numpy()
    np.testing.assert_array_equal(ranked, wordvec_ranking(logits, embeddings.numpy(), k))


def test_embedding_reference_quirk_the_cross_entropy_reads_the_embedding_as_logits():
    # making-better-mistakes' cross-entropy takes the embedding's coordinates as the class
    # logits: it pulls f towards the axis y, at cosine e_y[y] from e_y; 1 for the first
    # class, down to 0.8165 on the 2-level tree and 0.6404 on the 4-level one.
    assert float(class_embeddings(TREES["2 levels"]).diagonal().min()) == pytest.approx(
        0.8165, abs=1e-4
    )
    e = class_embeddings(TREES["4 levels"])
    assert float(e.diagonal().min()) == pytest.approx(0.6404, abs=1e-4)
    # f = e_y: the cosine loss is 0, the cross-entropy not (f's largest coordinate need not
    # be y's)
    ours = objective("embedding", TREES["4 levels"], xent_weight=0.1)
    y = torch.arange(16)
    loss = ours(None, e.clone(), y)
    # (the objective's embeddings are float32 buffers: agreement to 1e-6)
    assert float(loss) == pytest.approx(0.1 * float(F.cross_entropy(e, y)), rel=1e-6)
    assert float(loss) > 0.2


# -- hiercos -----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 1.0, 0.0])
def test_hiercos_equals_hier_cos(tree, alpha):
    z, logits, y = batch(tree)
    ours = objective("hiercos", tree, alpha=alpha)
    ref = HierCOSReference(tree, alpha)
    x = torch.cat([logits, ours.inner(z)], 1)
    order = sorted(ref.ids, key=ref.ids.__getitem__)
    ref_loss, ref_scores = ref(in_order(x, ours.nodes.names, order), y)
    assert_same_loss_and_gradient(ours(z, logits, y), ref_loss, [logits, z])
    torch.testing.assert_close(ours.class_scores(z, logits), ref_scores, rtol=1e-9, atol=1e-12)


def test_hiercos_scores_are_the_path_mask_norms(tree):
    # the identity basis: P_k is the 0/1 diagonal of k's path, the reference's dense
    # projections (with fa and fd) hold nothing else
    z, logits, _ = batch(tree)
    ours = objective("hiercos", tree)
    ref = HierCOSReference(tree, 0.05)
    names = ours.nodes.names
    mask = torch.zeros(tree.num_classes, len(names), dtype=torch.float64)
    for k, leaf in enumerate(tree.leaves):
        for n in tree.path(leaf)[1:]:
            mask[k, names.index(n)] = 1
    order = [names.index(n) for n in sorted(ref.ids, key=ref.ids.__getitem__)]
    dense = ref.params["projections"]
    assert torch.equal(dense, torch.diag_embed(mask[:, order]))
    assert torch.equal(HierCOSReference(tree, 0.05, fd=False).params["projections"], dense)
    x = torch.cat([logits, ours.inner(z)], 1)
    torch.testing.assert_close(ours.class_scores(z, logits), (x.square() @ mask.T).sqrt())


def test_hiercos_reference_quirk_skips_a_level_whose_batch_is_all_under_its_first_node():
    # `level_labels > 0` for `>= 0`: a batch of the first concept's classes only has level-1
    # labels all 0, and the reference drops that level's term; here it counts.
    tree = TREES["2 levels"]
    z, logits, _ = batch(tree)
    y = torch.tensor([0, 1, 2] * 4)
    z, logits = z[:12], logits[:12]
    ours = objective("hiercos", tree, alpha=1.0)
    ref = HierCOSReference(tree, 1.0)
    x = torch.cat([logits, ours.inner(z)], 1)
    order = sorted(ref.ids, key=ref.ids.__getitem__)
    ref_loss, _ = ref(in_order(x, ours.nodes.names, order), y)
    level1 = x[:, [ours.nodes.names.index(n) for n in tree.level_map(1)[0]]].abs()
    dropped = ((F.one_hot(torch.zeros(12, dtype=torch.long), 3) - F.normalize(level1, dim=1))
               .abs().sum(1).mean())  # fmt: skip
    ours_loss = ours(z, logits, y)
    assert float(ours_loss - ref_loss) == pytest.approx(float(dropped), rel=1e-6)
    # 1.428 of the level's at most 2 (|onehot - cos|_1 <= 2 for cos >= 0): the reference's
    # loss is 1.428 lower than the formula's on such a batch
    assert float(dropped) == pytest.approx(1.4280, abs=1e-4)


# -- checks and the model's scores ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("yolo", {"alpha": -1}, "yolo: alpha must be a number >= 0, got -1"),
        ("yolo", {"normalize": 1}, "yolo: normalize must be true or false, got 1"),
        ("embedding", {"xent_weight": "x"}, "embedding: xent_weight must be a number >= 0"),
        ("hiercos", {"alpha": float("inf")}, "hiercos: alpha must be finite, got inf"),
        ("hiercos", {"beta": 1}, "objective 'hiercos' has no option 'beta'; its options: alpha"),
    ],
)
def test_bad_options_are_one_line(name, options, message):
    with pytest.raises(ValueError) as info:
        check_objective(name, options, TREES["3 levels"])
    assert message in str(info.value) and "\n" not in str(info.value)


def module(name: str, tree: Hierarchy):
    from hierot.models import HierarchyModule

    torch.manual_seed(0)
    backbone = torch.nn.Linear(5, 4)
    backbone.num_features = 4
    sgd = partial(torch.optim.SGD, lr=0.1)
    return HierarchyModule(backbone, tree, sgd, dist="none", objective=name)


@pytest.mark.parametrize("name", ["yolo", "embedding", "hiercos"])
def test_the_model_predicts_and_measures_with_the_objective_scores(name):
    tree = TREES["unbalanced"]
    m = module(name, tree).eval()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(64, 5, generator=g), torch.randint(0, 8, (64,), generator=g)
    with torch.no_grad():
        z, scores = m(x)
        logits = m.head(z)
        torch.testing.assert_close(scores, m.objective.class_scores(z, logits))
        assert not torch.equal(scores.argmax(1), logits.argmax(1))  # they would differ
        out = m.predict_step((x, y), 0)
        torch.testing.assert_close(out["logits"], scores)
        m._eval_step("test", (x, y))
        metrics = m.test_metrics.compute()
    acc = (scores.argmax(1) == y).double().mean()
    assert float(metrics["test/acc_fine"]) == pytest.approx(float(acc))
    assert float(metrics["test/loss"]) == pytest.approx(float(F.cross_entropy(scores, y)), rel=1e-5)
    # the objective's parameters are the model's, saved in its state dict
    extra = {k for k in m.state_dict() if k.startswith("objective.")}
    assert extra == ({"objective.inner.weight", "objective.inner.bias"} if name != "embedding"
                     else set())  # fmt: skip


def test_the_default_objective_scores_with_the_head_logits():
    m = module("ce", TREES["3 levels"]).eval()
    x = torch.randn(8, 5)
    with torch.no_grad():
        z, scores = m(x)
        assert torch.equal(scores, m.head(z))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolo", "hiercos"])
def test_a_run_tests_with_the_scores_its_checkpoint_gives(tmp_path, name):
    # trained through the composed config; the checkpoint loads weights-only with the
    # objective's head, and the run's test metrics are those of its class scores
    import json

    from hierot.checkpoints import load_trained, run_datamodule
    from hierot.config import compose_config
    from hierot.train import train

    out = tmp_path / "run"
    train(compose_config(["debug=tiny", "trainer.max_epochs=1", "trainer.limit_val_batches=1",
                          f"objective={name}", f"output_dir={out}"]))  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    ckpt = out / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert {"objective.inner.weight", "objective.inner.bias"} <= set(saved)
    module, data = load_trained(ckpt), run_datamodule(ckpt)
    data.setup("test")
    scores, logits, labels = [], [], []
    with torch.no_grad():
        for x, y in data.test_dataloader():
            z, s = module(data.normalize(x))
            scores.append(s), logits.append(module.head(z)), labels.append(y)
    scores, logits, y = torch.cat(scores), torch.cat(logits), torch.cat(labels)
    acc = float((scores.argmax(1) == y).double().mean())
    assert metrics["test/acc_fine"] == pytest.approx(acc, abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(float(F.cross_entropy(scores, y)), rel=1e-4)
    assert metrics["test/loss"] != pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-4)
