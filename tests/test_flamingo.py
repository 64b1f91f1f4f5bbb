"""``flamingo`` against its transcribed references (tests/helpers/flamingo_references.py), in
float64 on every tree of TREES: PRIS-CV's where the features divide evenly among the levels,
HAFrame's where they do not (PRIS-CV's own layers do not fit then); the detach, the options,
the references' quirks with their numbers, and the model predicting with the fine head."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from hierot.hierarchy import Hierarchy
from hierot.objectives import build_objective, check_objective

from helpers.flamingo_references import HAFrameFlamingo, PrisCVFlamingo
from helpers.necks import randomize_neck
from helpers.trees import TREES


@pytest.fixture(params=list(TREES))
def tree(request) -> Hierarchy:
    return TREES[request.param]


def batch(tree: Hierarchy, dim: int, size: int = 40, seed: int = 0, scale: float = 1.0):
    """Every class once, then random ones; float64 features with gradients."""
    g = torch.Generator().manual_seed(seed)
    k = tree.num_classes
    y = torch.cat([torch.arange(k), torch.randint(0, k, (size - k,), generator=g)])
    z = scale * torch.randn(size, dim, generator=g, dtype=torch.float64)
    return z.requires_grad_(), y


def flamingo(tree: Hierarchy, dim: int, **options):
    torch.manual_seed(0)
    return build_objective("flamingo", tree, dim, options).double()


def copy_heads(ours, reference) -> None:
    """The reference's classifiers given our heads' weights (``classifier_l[0]``)."""
    with torch.no_grad():
        for head, classifier in zip(ours.heads, reference.classifiers, strict=True):
            classifier[0].weight.copy_(head.weight)
            classifier[0].bias.copy_(head.bias)


def assert_same(ours, reference, z, y, probabilities: bool):
    """Loss, gradients (features, the neck if any and every head) and each level's
    predictions (the reference's outputs: ``probabilities`` or logits)."""
    ours_loss = ours(z, None, y)
    ref_loss, ref_outs = reference(z, y)
    params = [p for h in ours.heads for p in (h.weight, h.bias)]
    ref_params = [p for c in reference.classifiers for p in (c[0].weight, c[0].bias)]
    if ours.neck is not None:
        params, ref_params = [*ours.neck.parameters(), *params], [
            *reference.features_1.parameters(), *ref_params]  # fmt: skip
    g_ours = torch.autograd.grad(ours_loss, [z, *params])
    g_ref = torch.autograd.grad(ref_loss, [z, *ref_params])
    assert float(ours_loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-6, abs=1e-9)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    with torch.no_grad():
        coarse = ours.level_logits(z)
        mine = [*(coarse[level] for level in sorted(coarse)), ours.class_scores(z, None)]
    assert sorted(coarse) == list(range(1, len(ref_outs)))
    for logits, out in zip(mine, ref_outs, strict=True):
        probs = out.detach() if probabilities else out.detach().softmax(1)
        torch.testing.assert_close(logits.softmax(1), probs, rtol=1e-9, atol=1e-12)


# -- against the references ---------------------------------------------------------------------


def test_flamingo_equals_pris_cv_where_the_features_divide_evenly(tree):
    z, y = batch(tree, 12)  # 12 features: 2, 3 and 4 levels divide them
    ours = flamingo(tree, 12)
    reference = PrisCVFlamingo(tree, 12)
    copy_heads(ours, reference)
    assert_same(ours, reference, z, y, probabilities=True)
    assert [h.in_features for h in ours.heads] == [c[0].in_features for c in reference.classifiers]


def test_flamingo_equals_haframe_where_they_do_not(tree):
    # 14 features: 7 + 7 on 2 levels, 4 + 4 + 6 on 3, 3 + 3 + 3 + 5 on 4 (the classes take
    # the remainder)
    z, y = batch(tree, 14, seed=1)
    ours = flamingo(tree, 14)
    reference = HAFrameFlamingo(tree, 14)
    copy_heads(ours, reference)
    assert_same(ours, reference, z, y, probabilities=False)
    expected = {2: [7, 7], 3: [4, 4, 6], 4: [3, 3, 3, 5]}[tree.depth]
    assert ours.sizes == expected


def test_pris_cv_quirk_its_layers_do_not_fit_an_uneven_split():
    # PRIS-CV sizes the finer classifiers feature_size // 3 * 2 and feature_size // 3 but
    # slices the last part x[:, H // 3 * 2 : H]: ResNet-18's 512 features on 3 levels give
    # the classes 172 features and a Linear(170, K), and its forward fails
    tree = TREES["3 levels"]
    reference = PrisCVFlamingo(tree, 512)
    assert [c[0].in_features for c in reference.classifiers] == [512, 340, 170]
    z, y = batch(tree, 512)
    with pytest.raises(RuntimeError, match=r"40x342 and 340x"):
        reference(z, y)
    ours = flamingo(tree, 512)
    assert ours.sizes == [170, 170, 172]
    assert [h.in_features for h in ours.heads] == [512, 342, 172]
    assert torch.isfinite(ours(z, None, y))


def test_pris_cv_quirk_the_log_of_an_underflowed_softmax():
    # PRIS-CV takes log(Softmax(...)) (HAFrame and hierot: cross-entropy on the logits). In
    # float32, once the label's logit is more than 88.72 + log B below the top one (B the
    # batch, the mean's 1 / B), log's gradient 1 / (B p) overflows and the gradient is NaN;
    # past 103.97, p underflows to 0 and the loss is inf. hierot's loss stays log 3 (the top
    # level's uniform head) + the classes' logsumexp - 0.
    tree = TREES["2 levels"]  # 3 concepts, 9 classes
    ours = build_objective("flamingo", tree, 4, {})
    reference = PrisCVFlamingo(tree, 4).float()
    with torch.no_grad():
        for head in ours.heads:
            head.weight.zero_(), head.bias.zero_()
        ours.heads[-1].weight[0, 0] = 1.0  # the classes' logits: (gap, 0, ..., 0)
    copy_heads(ours, reference)
    y = torch.ones(4, dtype=torch.long)  # class 1: logit 0, gap below the top
    for gap, grad_finite, loss_finite in [(90.0, True, True), (91.0, False, True),
                                          (104.0, False, False)]:  # fmt: skip
        z = torch.zeros(4, 4)
        z[:, 2] = gap  # the first feature of the classes' slice (features 2 and 3)
        z.requires_grad_()
        ref_loss, _ = reference(z, y)
        (g_ref,) = torch.autograd.grad(ref_loss, [z])
        loss = ours(z, None, y)
        (g_ours,) = torch.autograd.grad(loss, [z])
        expected = math.log(3) + gap + math.log1p(8 * math.exp(-gap))
        assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
        assert torch.isfinite(g_ours).all()
        assert bool(torch.isfinite(g_ref).all()) is grad_finite, gap
        assert bool(torch.isfinite(ref_loss)) is loss_finite, gap
        if loss_finite:
            assert float(ref_loss.detach()) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_flamingo_with_the_neck_equals_both_references(tree, mode):
    # their features_1 before the slices, on 5 features: a 12-unit neck for PRIS-CV (2, 3
    # and 4 levels divide it), 14 for HAFrame; in training mode the batch's statistics and
    # the running ones moved once (the loss's pass; the predictions' pass leaves them)
    for reference, hidden, probabilities in ((PrisCVFlamingo, 12, True),
                                             (HAFrameFlamingo, 14, False)):  # fmt: skip
        z, y = batch(tree, 5, seed=hidden)
        ours = flamingo(tree, 5, neck=hidden)
        theirs = reference(tree, hidden, num_ftrs=5)
        randomize_neck(ours.neck, hidden)
        theirs.features_1.load_state_dict(ours.neck.state_dict())
        copy_heads(ours, theirs)
        ours.train(mode == "train"), theirs.train(mode == "train")
        assert_same(ours, theirs, z, y, probabilities)
        for (key, a), b in zip(ours.neck.state_dict().items(),
                               theirs.features_1.state_dict().values()):  # fmt: skip
            torch.testing.assert_close(a, b, rtol=1e-12, atol=0, msg=key)
        assert [h.in_features for h in ours.heads] == [c[0].in_features for c in theirs.classifiers]


# -- the detach -----------------------------------------------------------------------------------


def level_losses(ours, z, y):
    """Each level's cross-entropy, the top level first and the classes last."""
    outs = ours.all_level_logits(z)
    return [F.cross_entropy(out, m[y]) for out, m in zip(outs, ours.maps, strict=True)]


def test_each_coarse_head_trains_only_its_own_slice(tree):
    z, y = batch(tree, 14, seed=2)
    ours = flamingo(tree, 14)
    starts = ours.starts
    for level, loss in enumerate(level_losses(ours, z, y), start=1):
        (grad,) = torch.autograd.grad(loss, [z])
        own, finer = grad[:, starts[level - 1] : starts[level]], grad[:, starts[level] :]
        assert torch.equal(
            grad[:, : starts[level - 1]], torch.zeros_like(grad[:, : starts[level - 1]])
        )
        assert torch.equal(finer, torch.zeros_like(finer)), level
        assert own.abs().sum() > 0, level
    # so the whole loss trains each slice with its own level's loss alone
    (total,) = torch.autograd.grad(ours(z, None, y), [z])
    for level, loss in enumerate(level_losses(ours, z, y), start=1):
        (grad,) = torch.autograd.grad(loss, [z])
        cols = slice(starts[level - 1], starts[level])
        torch.testing.assert_close(total[:, cols], grad[:, cols], rtol=1e-12, atol=1e-15)


def test_without_detach_a_coarse_head_trains_the_finer_slices():
    tree = TREES["3 levels"]
    z, y = batch(tree, 12)
    ours = flamingo(tree, 12, detach=False)
    top = level_losses(ours, z, y)[0]
    (grad,) = torch.autograd.grad(top, [z])
    assert (grad[:, 4:].abs().sum(0) > 0).all()
    # and the loss is the same number, its gradient not
    detached = flamingo(tree, 12)
    assert float(detached(z, None, y).detach()) == pytest.approx(
        float(ours(z, None, y).detach()), rel=1e-12
    )
    (g_detached,) = torch.autograd.grad(detached(z, None, y), [z])
    (g_attached,) = torch.autograd.grad(ours(z, None, y), [z])
    assert not torch.allclose(g_detached, g_attached)


# -- options --------------------------------------------------------------------------------------


def test_weights_scale_each_level(tree):
    z, y = batch(tree, 14)
    weights = [0.5 * i for i in range(1, tree.depth + 1)]
    ours = flamingo(tree, 14, weights=weights)
    expected = sum(w * loss for w, loss in zip(weights, level_losses(ours, z, y), strict=True))
    assert float(ours(z, None, y).detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    zero = flamingo(tree, 14, weights=[0.0] + [1.0] * (tree.depth - 1))
    loss = zero(z, None, y)
    (grad,) = torch.autograd.grad(loss, [zero.heads[0].weight])
    assert torch.equal(grad, torch.zeros_like(grad))


def test_sizes_set_each_slice():
    tree = TREES["3 levels"]
    ours = flamingo(tree, 14, sizes=[2, 5, 7])
    assert ours.starts == [0, 2, 7, 14]
    assert [h.in_features for h in ours.heads] == [14, 12, 7]
    z, y = batch(tree, 14)
    (grad,) = torch.autograd.grad(level_losses(ours, z, y)[1], [z])
    assert torch.equal(grad[:, 7:], torch.zeros_like(grad[:, 7:])) and grad[:, 2:7].abs().sum() > 0
    # the default split is sizes [4, 4, 6]
    default, explicit = flamingo(tree, 14), flamingo(tree, 14, sizes=[4, 4, 6])
    assert float(default(z, None, y).detach()) == float(explicit(z, None, y).detach())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"weights": [1, 1]}, "flamingo: weights has 2 values but the tree has 3 levels"),
        ({"weights": [1, -1, 1]}, "flamingo: weights must be finite numbers >= 0"),
        ({"sizes": [4, 4]}, "flamingo: sizes has 2 values but the tree has 3 levels"),
        ({"sizes": [4, 0, 8]}, "flamingo: sizes must be integers >= 1, got [4, 0, 8]"),
        ({"sizes": 12}, "flamingo: sizes must be a list of integers, got 12"),
        ({"detach": "yes"}, "flamingo: detach must be true or false, got 'yes'"),
        ({"split": 1}, "objective 'flamingo' has no option 'split'; its options: weights, sizes"),
    ],
)
def test_bad_options_are_one_line(options, message):
    with pytest.raises(ValueError) as info:
        check_objective("flamingo", options, TREES["3 levels"])
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "dim, options, message",
    [
        (2, {}, "objective=flamingo: the backbone's 2 features cannot be cut into 3 slices"),
        (12, {"sizes": [4, 4, 5]}, "objective.options: flamingo: sizes [4, 4, 5] add up to "
                                   "13, not to the backbone's 12 features"),
    ],
)  # fmt: skip
def test_features_that_do_not_fit_are_one_line(dim, options, message):
    with pytest.raises(ValueError) as info:
        build_objective("flamingo", TREES["3 levels"], dim, options)
    assert message in str(info.value) and "\n" not in str(info.value)


# -- the model ------------------------------------------------------------------------------------


def test_the_model_predicts_with_the_fine_head_and_leaves_its_own_head_untrained():
    from hierot.models import HierarchyModule

    tree = TREES["unbalanced"]
    torch.manual_seed(0)
    backbone = torch.nn.Linear(5, 8)
    backbone.num_features = 8
    sgd = partial(torch.optim.SGD, lr=0.1)
    m = HierarchyModule(backbone, tree, sgd, dist="none", objective="flamingo")
    assert m.objective.unused_parameters and m.objective.sizes == [2, 2, 2, 2]
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(64, 5, generator=g), torch.randint(0, 8, (64,), generator=g)
    m.eval()
    with torch.no_grad():
        z, scores = m(x)
        torch.testing.assert_close(scores, m.objective.heads[-1](z[:, 6:]))
        assert not torch.equal(scores.argmax(1), m.head(z).argmax(1))  # they would differ
    m.train()
    z, logits = m._head_forward(x)
    loss, _, _ = m._losses(z, logits, y, 1)
    loss.backward()
    assert m.head.weight.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.objective.parameters())
    assert backbone.weight.grad.abs().sum() > 0
