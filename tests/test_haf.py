"""``haf`` against 07Agarg/HAF's loss code (tests/helpers/haf_references.py), in float64, loss
and gradients (features and every head's weights and biases) on 2-, 3- and 4-level trees and a
tree whose leaves sit at different depths; the pair sampler against the reference's loop; the
reference's quirks with their numbers; the option checks; the level heads in ``acc_path``."""

import math
import random
from collections import Counter
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from hierot.hierarchy import Hierarchy
from hierot.objectives import build_objective, check_objective
from hierot.objectives.haf import (
    adjacent_pair_counts,
    jensen_shannon,
    kl_to_log_mix,
    margin_hinges,
)

from helpers.haf_references import (
    JSDDissimilarLoss,
    JSDSimilarLoss,
    create_dissimilar_pairs,
    features_1,
    haf_reference_terms,
    shuffles,
)
from helpers.necks import randomize_neck
from helpers.trees import TREES


@pytest.fixture(params=list(TREES))
def tree(request) -> Hierarchy:
    return TREES[request.param]


def batch(tree: Hierarchy, size: int, dim: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, tree.num_classes, (size,), generator=g)
    z = (2 * torch.randn(size, dim, generator=g, dtype=torch.float64)).requires_grad_()
    return z, y


def haf(tree: Hierarchy, **options):
    torch.manual_seed(0)
    return build_objective("haf", tree, 6, options).double()


def with_orders(objective, orders: torch.Tensor):
    """``objective`` drawing ``orders`` (the reference's shuffles) as its pairs' orders."""
    objective.pair_orders = lambda levels, size, device: orders[:levels]
    return objective


def assert_same_loss_and_gradient(ours, reference, inputs):
    g_ours = torch.autograd.grad(ours, inputs, retain_graph=True)
    g_ref = torch.autograd.grad(reference, inputs, retain_graph=True)
    assert float(ours.detach()) == pytest.approx(float(reference.detach()), rel=1e-6, abs=1e-9)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "size, seed, options",
    [
        (40, 0, {}),  # the slots all filled, the reference's defaults
        (6, 1, {}),  # 6 samples: at most 30 of the 256 slots filled
        (40, 2, {"margin": 0.2, "pair_slots": 50}),  # some hinges inactive, pairs cut off
        (
            24,
            3,
            {"margin_from": 2, "pair_slots": 64, "jsd": 0.5, "geometric": 2.0, "dissimilar": 0.7},
        ),
    ],
)
def test_haf_equals_the_reference(tree, size, seed, options):
    margin_from = options.get("margin_from", 1)
    if margin_from > tree.depth - 1:
        pytest.skip("a 2-level tree has one level above the classes")
    z, y = batch(tree, size, seed=seed)
    ours = with_orders(haf(tree, **options), shuffles(seed, tree.depth - margin_from, size))
    random.seed(seed)  # the reference draws the same shuffles
    ce, jsd, cosines, dissim = haf_reference_terms(
        tree, z, list(ours.heads), y, margin_from=margin_from,
        limit=options.get("pair_slots", 256), margin=options.get("margin", 3.0),
    )  # fmt: skip
    # the reference weighs its four terms 1 (ce + jsd - cosines + dissim)
    w = {k: options.get(k, 1.0) for k in ("jsd", "geometric", "dissimilar")}
    ref = ce + w["jsd"] * jsd - w["geometric"] * cosines + w["dissimilar"] * dissim
    assert_same_loss_and_gradient(ours(z, None, y), ref, [z, *ours.parameters()])
    terms = torch.stack([dissim, jsd, cosines.abs()]).detach()
    assert bool((terms > 0).all())  # every term counts


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_haf_with_the_neck_equals_the_reference(tree, mode):
    # the ResNet-18 models' features_1 before the heads: loss, gradients (features, neck,
    # heads), the class scores, and in training mode the running statistics moved once (the
    # neck runs on the batch for the loss's terms, for the margin term's pairs and for the
    # scores; only the first moves them)
    size, seed, slots = 12, 4, 20  # 20 of the reference's 256 slots: its loops are slow
    z, y = batch(tree, size, seed=seed)
    ours = with_orders(haf(tree, neck=10, pair_slots=slots), shuffles(seed, tree.depth - 1, size))
    randomize_neck(ours.neck, seed)
    neck = features_1(6, 10)
    neck.load_state_dict(ours.neck.state_dict())
    ours.train(mode == "train"), neck.train(mode == "train")
    loss = ours(z, None, y)
    random.seed(seed)
    x = neck(z)  # the reference's forward: x = self.features_1(x), then the loss on x
    ce, jsd, cosines, dissim = haf_reference_terms(tree, x, list(ours.heads), y, limit=slots)
    ref = ce + jsd - cosines + dissim
    heads = list(ours.heads.parameters())
    g_ours = torch.autograd.grad(loss, [z, *ours.neck.parameters(), *heads])
    g_ref = torch.autograd.grad(ref, [z, *neck.parameters(), *heads])
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-6, abs=1e-9)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert all(bool(g.abs().sum() > 0) for g in g_ours)
    with torch.no_grad():
        scores = ours.class_scores(z, None)
        fine = ours.heads[-1]
        torch.testing.assert_close(scores, x @ F.normalize(fine.weight, dim=1).T + fine.bias)
    for (key, a), b in zip(ours.neck.state_dict().items(), neck.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0, msg=key)


# -- the pair sampler ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, classes, slots", [(8, 3, 256), (40, 4, 256), (30, 30, 20), (5, 1, 9)]
)
def test_the_pair_counts_fill_the_reference_slots(size, classes, slots):
    # each sample's "distribution" is its one-hot, so a slot names the pair it holds
    g = torch.Generator().manual_seed(size)
    labels = torch.randint(0, classes, (size,), generator=g)
    random.seed(7)
    pairs = create_dissimilar_pairs(labels, torch.eye(size, dtype=torch.float64), "cpu", slots)
    held = pairs.sum(2) > 0  # (slots, 2): an empty slot holds zeros
    assert bool((held[:, 0] == held[:, 1]).all())
    reference = Counter(tuple(p.argmax(1).tolist()) for p, h in zip(pairs, held[:, 0]) if h)
    first, second, counts, filled = adjacent_pair_counts(labels[None], shuffles(7, 1, size), slots)
    ours = {(int(a), int(b)): int(c) for a, b, c in zip(first[0], second[0], counts[0]) if c}
    assert ours == dict(reference)
    assert int(filled[0]) == int(held[:, 0].sum()) == sum(ours.values())


def test_the_reference_weighs_its_pairs_unevenly_and_counts_empty_slots():
    order = torch.arange(64)[None]
    # 64 samples, 50 dissimilar neighbours: 256 = 5 x 50 + 6, the first 6 pairs fill 6 slots
    labels = torch.tensor([i % 2 if i < 50 else 0 for i in range(64)])[None]
    *_, counts, filled = adjacent_pair_counts(labels, order, 256)
    assert counts[0, :6].tolist() == [6] * 6 and counts[0, 6:50].tolist() == [5] * 44
    assert int(counts[0, 50:].sum()) == 0 and int(filled[0]) == 256
    # debug=fast's 8 samples: at most 7 neighbours x 8 passes = 56 of the 256 slots; the other
    # 200 each add the margin: 200 x 3 / 256 = 2.34 of the term is a constant
    labels = torch.tensor([[0, 1, 0, 1, 0, 1, 0, 0]])
    *_, counts, filled = adjacent_pair_counts(labels, torch.arange(8)[None], 256)
    assert counts[0].tolist() == [8] * 6 + [0] and int(filled[0]) == 48


def test_each_level_draws_its_own_permutation():
    torch.manual_seed(0)
    orders = haf(TREES["4 levels"]).pair_orders(3, 50, torch.device("cpu"))
    assert torch.equal(orders.sort(1).values, torch.arange(50).expand(3, 50))
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])


# -- the reference's quirks -----------------------------------------------------------------------


def test_the_margin_of_3_is_always_active():
    # KL(p || (p + q) / 2) <= log 2, so margin - KL >= 3 - 0.693 = 2.307: no hinge ever
    # switches off and each slot is 3 - JSD(p, q), a constant minus the JSD
    g = torch.Generator().manual_seed(0)
    p, q = (F.softmax(8 * torch.randn(4000, 5, generator=g, dtype=torch.float64), 1)
            for _ in range(2))  # fmt: skip
    log_mix = torch.clamp(0.5 * (p + q), 1e-7, 1).log()
    kl = F.kl_div(log_mix, p, reduction="none").sum(1)
    assert math.log(2) - 3e-9 < float(kl.max()) <= math.log(2)  # 0.6931472
    disjoint = torch.eye(2, dtype=torch.float64)
    assert float(margin_hinges(disjoint[0], disjoint[1], 3.0)) == pytest.approx(3 - math.log(2))
    p.requires_grad_()
    hinges = margin_hinges(p, q, 3.0)
    log_mix = torch.clamp(0.5 * (p + q), 1e-7, 1).log()
    jsd = 0.5 * (kl_to_log_mix(p, log_mix) + kl_to_log_mix(q, log_mix))
    torch.testing.assert_close(hinges, 3 - jsd)
    (g_hinge,) = torch.autograd.grad(hinges.sum(), p)
    (g_jsd,) = torch.autograd.grad(-jsd.sum(), p)
    torch.testing.assert_close(g_hinge, g_jsd)  # the gradient of -JSD, for every pair
    # below log 2 the hinge does switch off for the far pairs
    (g_low,) = torch.autograd.grad(margin_hinges(p, q, 0.5).sum(), p)
    assert not torch.allclose(g_low, g_jsd)


def test_the_margin_term_on_a_batch_is_the_margin_less_the_slots_mean_jsd(tree):
    z, y = batch(tree, 40)
    ours = haf(tree)
    orders = ours.pair_orders(tree.depth - 1, 40, z.device)
    with_orders(ours, orders)
    levels = ours.maps[:-1][:, y]
    first, second, counts, _ = adjacent_pair_counts(levels, orders, 256)
    expected = 0.0
    for i in range(tree.depth - 1):
        p = F.softmax(ours.head_logits(z, i + 1), 1)
        a, b = p[first[i]], p[second[i]]
        log_mix = torch.clamp(0.5 * (a + b), 1e-7, 1).log()
        kl = F.kl_div(log_mix, a, reduction="none") + F.kl_div(log_mix, b, reduction="none")
        expected += 3 - float((counts[i] * 0.5 * kl.sum(1)).sum().detach()) / 256
    term = float(ours.batch_loss(z, y).detach())
    assert term == pytest.approx(expected, rel=1e-12)
    # per level between 3 - log 2 = 2.307 and 3
    assert (tree.depth - 1) * (3 - math.log(2)) <= term <= 3 * (tree.depth - 1)


def test_the_reference_gradient_is_nan_where_a_probability_underflows():
    # kl_div's gradient in its target is log(target) + 1: -inf at a probability of exactly
    # 0, which the softmax's Jacobian turns into NaN for every logit of the row. float64's
    # softmax underflows past a logit gap of ~745 (float32's past ~104: with unit-norm head
    # weights, features of norm above ~52 reach it); ours takes such a term as 0, the limit.
    q = torch.tensor([[0.3, 0.3, 0.4]], dtype=torch.float64)
    reference_margin = JSDDissimilarLoss(3.0)
    pairs = [
        (jensen_shannon, JSDSimilarLoss()),
        (lambda p, q: margin_hinges(p, q, 3.0).mean(),
         lambda p, q: reference_margin(p, q, "cpu", margin=3.0)),
    ]  # fmt: skip
    for ours, reference in pairs:
        p0, near = softmax_gradient(700.0, partial(reference, q=q))
        assert p0 > 0 and bool(near.isfinite().all())
        p0, under = softmax_gradient(800.0, partial(reference, q=q))
        assert p0 == 0 and bool(under.isnan().all())
        _, ours_under = softmax_gradient(800.0, partial(ours, q=q))
        torch.testing.assert_close(ours_under, near, rtol=0, atol=1e-12)


def softmax_gradient(gap: float, loss) -> tuple[float, torch.Tensor]:
    """``(p_0, d loss / d logits)`` at the logits ``(0, gap, 1)``: p_0 = exp(-gap) or 0."""
    logits = torch.tensor([[0.0, gap, 1.0]], dtype=torch.float64, requires_grad=True)
    p = F.softmax(logits, 1)
    (grad,) = torch.autograd.grad(loss(p), logits)
    return float(p[0, 0].detach()), grad


# -- options, heads and the model ------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"margin": -1}, "haf: margin must be a number >= 0, got -1"),
        ({"jsd": float("inf")}, "haf: jsd must be finite, got inf"),
        ({"geometric": "x"}, "haf: geometric must be a number >= 0, got 'x'"),
        ({"pair_slots": 0}, "haf: pair_slots must be an integer >= 1, got 0"),
        ({"margin_from": 1.5}, "haf: margin_from must be an integer >= 1, got 1.5"),
        ({"margin_from": 3}, "haf: margin_from must be a level above the classes, 1 .. 2 (the "
                             "tree has 3 levels), got 3"),
        ({"lam": 1}, "objective 'haf' has no option 'lam'; its options: jsd, geometric"),
    ],
)  # fmt: skip
def test_bad_options_are_one_line(options, message):
    with pytest.raises(ValueError) as info:
        check_objective("haf", options, TREES["3 levels"])
    assert message in str(info.value) and "\n" not in str(info.value)


def module(tree: Hierarchy, **options):
    from hierot.models import HierarchyModule

    torch.manual_seed(0)
    backbone = torch.nn.Linear(5, 4)
    backbone.num_features = 4
    sgd = partial(torch.optim.SGD, lr=0.1)
    return HierarchyModule(backbone, tree, sgd, dist="none", objective="haf",
                           objective_options=options)  # fmt: skip


def test_the_level_heads_give_acc_path_and_the_fine_head_the_scores():
    from hierot.evaluate import level_logits
    from hierot.metrics.features import level_metrics
    from hierot.models.module import level_keys

    tree = TREES["unbalanced"]
    m = module(tree).eval()
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(3))
    o = m.objective
    with torch.no_grad():
        # each coarse head the sum of its children's unit weights, the cosine term's optimum
        for level in range(tree.depth - 1, 0, -1):
            children = F.normalize(o.heads[level].weight, dim=1)
            parent = getattr(o, f"parent{level + 1}")
            o.heads[level - 1].weight.zero_().index_add_(0, parent, children)
            o.heads[level - 1].bias.zero_()
        assert float(o.weight_cosines().sum()) == pytest.approx(tree.depth - 1)
        z, scores = m(x)
    y = scores.argmax(1)  # the classes all right: the path is right where the heads agree
    fine = o.heads[-1]
    torch.testing.assert_close(scores, z @ F.normalize(fine.weight, dim=1).T + fine.bias)
    heads = level_logits(m, z)
    assert sorted(heads) == [1, 2, 3]
    right = scores.argmax(1) == y
    for level, out in heads.items():
        assert out.shape[1] == len(tree.level_map(level)[0])
        right &= out.argmax(1) == tree.level_map(level)[1][y]
    out = level_metrics(z, scores, y, tree, level_keys(tree), heads, 64.0)
    assert float(out["acc_path"]) == pytest.approx(float(right.double().mean()))
    assert 0.2 < float(out["acc_path"]) < float(out["acc_fine"]) == 1
    assert 0.2 < float(out["acc_level1_head"]) < 1


def test_the_objective_heads_train_and_the_model_head_does_not():
    tree = TREES["3 levels"]
    m = module(tree)
    assert m.objective.unused_parameters and m.objective.batch_wide
    x, y = torch.randn(16, 5), torch.randint(0, 12, (16,))
    z, logits = m._head_forward(x)
    loss, *_ = m._losses(z, logits, y)
    loss.backward()
    assert m.head.weight.grad is None
    assert all(
        p.grad is not None and bool(p.grad.abs().sum() > 0) for p in m.objective.parameters()
    )
    saved = {k for k in m.state_dict() if k.startswith("objective.")}
    assert saved == {f"objective.heads.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    assert not module(tree, dissimilar=0.0).objective.batch_wide
