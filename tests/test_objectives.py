"""Every objective against its transcribed reference (tests/helpers/loss_references.py), in
float64, loss and gradient, on 2-, 3- and 4-level trees and on trees whose leaves sit at
different depths; the option checks; the references' quirks, with the numbers that differ."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from hierot.hierarchy import Hierarchy
from hierot.objectives import build_objective, check_objective, list_objectives
from hierot.objectives.hxe import hxe_level_weights

from helpers.batches import objective_batch as batch
from helpers.loss_references import (
    group_lasso_reference,
    hxe_reference,
    lca_height_reference,
    quadruplet_reference,
    soft_labels_reference,
    sumloss_reference,
)
from helpers.trees import TREES


@pytest.fixture(params=list(TREES))
def tree(request) -> Hierarchy:
    return TREES[request.param]


def assert_same_loss_and_gradient(ours, reference, inputs):
    g_ours = torch.autograd.grad(ours, inputs, allow_unused=True, materialize_grads=True)
    g_ref = torch.autograd.grad(reference, inputs, allow_unused=True, materialize_grads=True)
    assert float(ours.detach()) == pytest.approx(float(reference.detach()), rel=1e-6, abs=1e-9)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_lca_heights_walk_the_paths(tree):
    k = tree.num_classes
    expected = torch.tensor(
        [[lca_height_reference(tree, i, j) for j in range(k)] for i in range(k)],
        dtype=torch.float32,
    )
    assert torch.equal(tree.lca_heights(), expected)
    if len(set(tree.leaf_depths)) == 1:
        # balanced, unit weights: path length = 2 x LCA height
        assert torch.equal(tree.tree_distances(), 2 * expected)


@pytest.mark.parametrize("alpha, normalize", [(0.4, False), (0.1, True), (0.9, True)])
def test_hxe_equals_making_better_mistakes(tree, alpha, normalize):
    z, logits, y = batch(tree)
    ours = build_objective("hxe", tree, 6, {"alpha": alpha, "normalize": normalize}).double()
    if min(tree.leaf_depths) == 1:
        pytest.skip("the reference cannot take a leaf under the root (see the quirk test)")
    assert_same_loss_and_gradient(
        ours(z, logits, y), hxe_reference(tree, logits, y, alpha, normalize), [logits]
    )


def test_hxe_with_alpha_zero_is_cross_entropy(tree):
    z, logits, y = batch(tree)
    ours = build_objective("hxe", tree, 6, {"alpha": 0.0}).double()
    loss, ce = ours(z, logits, y).detach(), F.cross_entropy(logits, y).detach()
    assert float(loss) == pytest.approx(float(ce), rel=1e-12)


def test_hxe_normalisation_counts_every_node():
    tree = TREES["2 levels"]  # 1 root, 3 concepts, 9 classes
    w = hxe_level_weights(tree, 0.5, normalize=True)
    total = 1 + 3 * math.exp(-0.5) + 9 * math.exp(-1.0)
    assert w.tolist() == pytest.approx([math.exp(-0.5) / total, math.exp(-1.0) / total])


def test_hxe_reference_quirks_where_a_probability_underflows_or_a_leaf_is_shallow():
    # 1. A class whose probability underflows to 0: the reference skips its term (num != 0),
    # which makes a confidently wrong prediction look almost free.
    tree = TREES["2 levels"]
    logits = torch.zeros(1, 9, dtype=torch.float64)
    logits[0, 8] = 800.0  # class 0 has probability exp(-800) = 0 in float64
    y = torch.tensor([0])
    ours = build_objective("hxe", tree, 6, {"alpha": 0.4}).double()
    ref = hxe_reference(tree, logits, y, 0.4, False)
    # the concept of class 0 also underflows: the reference's loss is 0, ours 536
    assert float(ref) == 0.0
    # -log P(concept) = 800 - log 3 at level 1, -log P(class | concept) = log 3 at level 2
    expected = (800 - math.log(3)) * math.exp(-0.4) + math.log(3) * math.exp(-0.8)
    assert float(ours(None, logits, y)) == pytest.approx(expected, rel=1e-9)
    # 2. A leaf directly under the root: the reference's last denominator lands one column
    # off (its j + 1 after a loop that did not run), dividing by 0.
    tree = Hierarchy.from_paths([["a", "a1"], ["a", "a2"], ["b"]])
    logits = torch.tensor([[0.5, -0.3, 0.2]], dtype=torch.float64)
    y = torch.tensor([2])
    assert not math.isfinite(float(hxe_reference(tree, logits, y, 0.4, False)))
    ours = build_objective("hxe", tree, 6, {"alpha": 0.4}).double()
    p_b = torch.softmax(logits, 1)[0, 2]
    assert float(ours(None, logits, y)) == pytest.approx(-math.exp(-0.4) * math.log(p_b))


@pytest.mark.parametrize("weights", [None, "ramp"])
def test_marginal_equals_hierarchy_cpcc_sumloss(tree, weights):
    z, logits, y = batch(tree)
    w = [1.0] * tree.depth if weights is None else [0.5 * (i + 1) for i in range(tree.depth)]
    ours = build_objective("marginal", tree, 6, {"weights": None if weights is None else w})
    assert_same_loss_and_gradient(
        ours.double()(z, logits, y), sumloss_reference(tree, logits, y, w), [logits]
    )


def test_marginal_stays_finite_where_sumloss_takes_the_log_of_zero():
    tree = TREES["2 levels"]
    logits = torch.zeros(2, 9, dtype=torch.float64)
    logits[:, 8] = 800.0  # the first concept's three classes underflow to probability 0
    y = torch.tensor([0, 1])
    assert math.isinf(float(sumloss_reference(tree, logits, y, [1.0, 1.0])))
    ours = build_objective("marginal", tree, 6, {}).double()
    # CE = 800 and -log P(concept) = 800 - log 3, per sample
    assert float(ours(None, logits, y)) == pytest.approx(1600 - math.log(3), rel=1e-12)


@pytest.mark.parametrize("beta", [4.0, 10.0, 30.0])
def test_soft_labels_equal_making_better_mistakes(tree, beta):
    z, logits, y = batch(tree)
    ours = build_objective("soft_labels", tree, 6, {"beta": beta}).double()
    ours.targets = ours.targets.double()
    assert_same_loss_and_gradient(
        ours(z, logits, y), soft_labels_reference(tree, logits, y, beta), [logits]
    )


def test_soft_label_rows_are_distributions_peaked_at_the_label():
    tree = TREES["3 levels"]
    q = build_objective("soft_labels", tree, 6, {"beta": 10.0}).targets
    assert torch.allclose(q.sum(1), torch.ones(tree.num_classes))
    assert torch.equal(q.argmax(1), torch.arange(tree.num_classes))
    # siblings (LCA height 1 of max 3) get exp(-10/3) of the label's mass
    assert float(q[0, 1] / q[0, 0]) == pytest.approx(math.exp(-10 / 3), rel=1e-5)


def test_mtl_sums_one_cross_entropy_per_level(tree):
    z, logits, y = batch(tree)
    w = [0.5 * (i + 1) for i in range(tree.depth)]
    ours = build_objective("mtl", tree, 6, {"weights": w}).double()
    assert len(ours.heads) == tree.depth - 1
    reference = w[-1] * F.cross_entropy(logits, y)
    for lvl, head, weight in zip(tree.levels[:-1], ours.heads, w, strict=False):
        names, fine_to_level = tree.level_map(lvl)
        assert head.out_features == len(names)
        reference = reference + weight * F.cross_entropy(
            z @ head.weight.T + head.bias, fine_to_level[y]
        )
    params = [z, logits, *ours.parameters()]
    assert_same_loss_and_gradient(ours(z, logits, y), reference, params)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quadruplet_equals_hierarchy_cpcc(tree, seed):
    z, logits, y = batch(tree, size=48, seed=seed)
    ours = build_objective("quadruplet", tree, 6, {}).double()
    parent = tree.parent_map().numpy()
    quad = quadruplet_reference(F.normalize(z, dim=-1), y, parent, 0.25, 0.15)
    assert torch.is_tensor(quad), "the batch must form at least one hard quadruplet"
    reference = 0.2 * quad + 0.8 * F.cross_entropy(logits, y)
    assert_same_loss_and_gradient(ours(z, logits, y), reference, [z, logits])


def test_quadruplet_without_a_hard_quadruplet_is_cross_entropy_alone():
    tree = TREES["2 levels"]
    y = torch.tensor([0, 0, 1, 3])  # class 0: a positive, a sibling (1), another parent (3)
    # far apart by parent, close within the class: no margin is violated
    z = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0.9, 0.1, 0], [-1.0, 0, 0]], dtype=torch.float64)
    z.requires_grad_()
    logits = torch.zeros(4, 9, dtype=torch.float64, requires_grad=True)
    assert quadruplet_reference(F.normalize(z, dim=-1), y, tree.parent_map().numpy()) == 0
    ours = build_objective("quadruplet", tree, 3, {}).double()
    loss = ours(z, logits, y)
    assert float(loss.detach()) == pytest.approx(0.8 * math.log(9))
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.equal(grad, torch.zeros_like(z))


def test_group_lasso_is_weight_decay_on_the_head():
    # HierarchyCPCC's GroupLasso sums squared norms over partitions of the head's rows at
    # three depths (2, 4 and 6 x lamb), so it is 12 x lamb x (|W|^2 + |b|^2).
    tree = TREES["2 levels"]
    g = torch.Generator().manual_seed(0)
    w = torch.randn(9, 5, generator=g, dtype=torch.float64)
    b = torch.randn(9, generator=g, dtype=torch.float64)
    coarse = tree.level_map(1)[1].numpy()
    for lamb in (0.01, 0.3):
        expected = 12 * lamb * (w.square().sum() + b.square().sum())
        assert float(group_lasso_reference(coarse, w, b, lamb)) == pytest.approx(float(expected))


def test_every_objective_runs_in_float32_with_finite_gradients(tree):
    z, logits, y = batch(tree)
    z, logits = z.detach().float().requires_grad_(), logits.detach().float().requires_grad_()
    for name in list_objectives():
        loss = build_objective(name, tree, 6, {})(z, logits, y)
        grads = torch.autograd.grad(loss, [logits], allow_unused=True, materialize_grads=True)
        assert loss.dtype == torch.float32 and torch.isfinite(loss), name
        assert all(torch.isfinite(g).all() for g in grads), name


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("hxe", {"alpha": -0.1}, "hxe: alpha must be a number >= 0, got -0.1"),
        ("hxe", {"normalize": "yes"}, "hxe: normalize must be true or false, got 'yes'"),
        ("soft_labels", {"beta": "x"}, "soft_labels: beta must be a number >= 0, got 'x'"),
        ("mtl", {"weights": [1, 1]}, "mtl: weights has 2 values but the tree has 3 levels"),
        ("marginal", {"weights": [1, -1, 1]}, "marginal: weights must be finite numbers >= 0"),
        ("quadruplet", {"m1": 0.1, "m2": 0.2}, "need m1 > m2 > 0, got m1=0.1, m2=0.2"),
        ("quadruplet", {"lambda_s": 1.5}, "lambda_s must lie in [0, 1], got 1.5"),
        ("ce", {"beta": 1}, "objective 'ce' has no option 'beta'; its options: none"),
        ("hinge", {}, "unknown objective 'hinge'; available: ce, curriculum, embedding"),
    ],
)
def test_bad_options_are_one_line(name, options, message):
    with pytest.raises(ValueError, match=None) as info:
        check_objective(name, options, TREES["3 levels"])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_group_lasso_steps_like_head_weight_decay():
    # one SGD step (momentum, Nesterov, weight decay) with CE + GroupLasso on the head equals
    # one step with CE and model.head_weight_decay = wd + 24 x lamb
    from hierot.models import HierarchyModule

    tree, lamb, wd = TREES["2 levels"], 0.01, 5e-4
    coarse = tree.level_map(1)[1].numpy()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 5, generator=g), torch.randint(0, 9, (16,), generator=g)

    def model(head_wd):
        torch.manual_seed(1)
        backbone = torch.nn.Linear(5, 4)
        backbone.num_features = 4
        sgd = partial(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True, weight_decay=wd)
        return HierarchyModule(backbone, tree, sgd, dist="none", head_weight_decay=head_wd)

    reference, ours = model(None), model(wd + 24 * lamb)
    for m, extra in ((reference, True), (ours, False)):
        optimizer = m.configure_optimizers()
        for _ in range(2):  # the second step runs through the momentum buffers
            optimizer.zero_grad()
            _, logits = m(x)
            loss = F.cross_entropy(logits, y)
            if extra:
                loss = loss + group_lasso_reference(coarse, m.head.weight, m.head.bias, lamb)
            loss.backward()
            optimizer.step()
    for a, b in zip(reference.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(reference.head.weight, model(None).head.weight)


def test_curriculum_stages_follow_hierarchy_cpcc():
    tree = TREES["3 levels"]
    objective = build_objective("curriculum", tree, 6, {}).double()
    # HierarchyCPCC: E' = int(1.25 E) epochs, the first int(0.2 E') on the coarse labels
    for recipe in (200, 100, 10):
        total = int(1.25 * recipe)
        assert objective.stage_epochs(total) == [int(0.2 * total), total - int(0.2 * total)]
    z, logits, y = batch(tree)
    parent_level = tree.level_map(tree.depth - 1)[1]
    objective.set_stage(0)
    assert objective.coarse and not objective.regularized
    coarse = F.cross_entropy(objective.coarse_head(z), parent_level[y])
    assert float(objective(z, logits, y).detach()) == pytest.approx(float(coarse.detach()))
    head = torch.nn.Linear(6, tree.num_classes).double()
    module = torch.nn.Module()
    module.head = head
    before = head.weight.detach().clone()
    objective.set_stage(1)
    assert not objective.coarse and objective.regularized
    assert torch.equal(before, head.weight)  # a mode only: a resumed run keeps its head
    objective.enter_stage(1, module)  # the transition itself
    assert not torch.equal(before, head.weight)  # a new fine head
    drawn = head.weight.detach().clone()
    objective.enter_stage(1, module)  # from the objective's saved seed, not the global one
    assert torch.equal(drawn, head.weight)
    fine = F.cross_entropy(logits, y)
    assert float(objective(z, logits, y).detach()) == pytest.approx(float(fine.detach()))


@pytest.mark.slow
def test_curriculum_restarts_the_optimizer_and_schedule_between_stages():
    import lightning as L

    from hierot.models import HierarchyModule
    from hierot.models.schedules import cosine

    tree = TREES["3 levels"]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 5, generator=g), torch.arange(12).repeat(8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=24)
    backbone = torch.nn.Linear(5, 4)
    backbone.num_features = 4
    sgd = partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    model = HierarchyModule(backbone, tree, sgd, scheduler=partial(cosine, warmup=0.0),
                            dist="l2", objective="curriculum")  # fmt: skip
    seen = []

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 0:
                optimizer = trainer.optimizers[0]
                seen.append((trainer.current_epoch, id(optimizer), len(optimizer.state),
                             optimizer.param_groups[0]["lr"], module.objective.coarse))  # fmt: skip

    trainer = L.Trainer(max_epochs=5, limit_val_batches=0, logger=False, callbacks=[Watch()],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(model, loader)
    # epoch 0 is the coarse stage (int(0.2 x 5) = 1 epoch); epoch 1 starts a new optimizer
    # with no momentum yet and the schedule from its top; epochs 2-4 continue it
    assert [s[4] for s in seen] == [True, False, False, False, False]
    assert seen[1][1] != seen[0][1] and seen[2][1] == seen[1][1]
    assert seen[1][2] == 0 and seen[2][2] > 0
    assert seen[0][3] == seen[1][3] == pytest.approx(0.1)
    assert seen[2][3] < 0.1


@pytest.mark.parametrize("views", [2, 3])
def test_supcon_equals_supcontrast(views):
    from hierot.objectives.supcon import supcon_loss

    from helpers.hyp_references import supcon_reference

    g = torch.Generator().manual_seed(views)
    labels = torch.randint(0, 5, (16,), generator=g)
    f = F.normalize(torch.randn(16, views, 8, generator=g, dtype=torch.float64), dim=-1)
    f.requires_grad_()
    reference = supcon_reference(f, labels)
    # hierot's rows: every view of an image in turn (b * views + v), labels repeated
    ours = supcon_loss(f.flatten(0, 1), labels.repeat_interleave(views), 0.1, 0.07)
    assert_same_loss_and_gradient(ours, reference, [f])


def test_supcon_probe_stage_freezes_the_backbone():
    from hierot.models import HierarchyModule

    tree = TREES["2 levels"]
    backbone = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4))
    backbone.num_features = 4
    model = HierarchyModule(backbone, tree, partial(torch.optim.SGD, lr=0.1), dist="l2",
                            objective="supcon")  # fmt: skip
    objective = model.objective
    assert objective.views == 2 and objective.stage_epochs(10) == [8, 2]
    x = torch.randn(8, 2, 5)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    z, logits = model._train_forward(x.flatten(0, 1))
    assert z.requires_grad and objective.regularized
    objective.set_stage(1)
    running = backbone[1].running_mean.clone()
    z, logits = model._train_forward(x.flatten(0, 1))
    assert not z.requires_grad and logits.requires_grad and not objective.regularized
    assert torch.equal(backbone[1].running_mean, running)  # eval mode: statistics kept
    loss = model._losses(z, logits, y.repeat_interleave(2), views=2)[0]
    assert float(loss.detach()) == pytest.approx(
        float(F.cross_entropy(logits, y.repeat_interleave(2)).detach())
    )
    with pytest.raises(ValueError, match=r"objective supcon needs data\.views >= 2"):
        model.training_step((x[:, 0], y), 0)


def test_supcon_trains_its_contrastive_stage_at_a_scaled_learning_rate():
    from hierot.models import HierarchyModule

    tree = TREES["2 levels"]
    backbone = torch.nn.Linear(5, 4)
    backbone.num_features = 4
    model = HierarchyModule(backbone, tree, partial(torch.optim.SGD, lr=0.1), dist="l2",
                            objective="supcon", objective_options={"lr_scale": 0.02})  # fmt: skip
    assert [model.objective.lr_scale(s) for s in (0, 1)] == [0.02, 1.0]
    optimizer = model.configure_optimizers()  # no trainer: stage 0, no schedule
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(0.002)]
    ce = HierarchyModule(backbone, tree, partial(torch.optim.SGD, lr=0.1), dist="l2")
    assert {g["lr"] for g in ce.configure_optimizers().param_groups} == {0.1}


@pytest.mark.slow
def test_supcon_at_the_default_rate_collapses_and_at_the_scaled_rate_separates():
    # SGD (momentum 0.9) from scratch on one batch of the embedded data, both views equal:
    # at lr 0.1 every projection goes to one point (the loss pins at log(2B - 1) T / T_base),
    # at lr 0.1 x 0.01 the loss falls.
    import math

    import timm

    from hierot.data import SyntheticDataModule
    from hierot.objectives.supcon import supcon_loss

    data = SyntheticDataModule(train_per_class=8, val_per_class=2, test_per_class=2)
    data.setup("fit")
    x, y = data.train_set.tensors
    x, y = data.normalize(x[:64]), y[:64]
    losses = {}
    for lr in (0.1, 0.001):
        torch.manual_seed(0)
        net = timm.create_model("resnet18", num_classes=0)
        proj = torch.nn.Sequential(
            torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 128)
        )
        opt = torch.optim.SGD([*net.parameters(), *proj.parameters()], lr=lr, momentum=0.9)
        for _ in range(12):
            f = F.normalize(proj(net(torch.cat([x, x]))), dim=1)
            loss = supcon_loss(f, torch.cat([y, y]), 0.1, 0.07)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[lr] = float(loss.detach()), float(f.detach().std(0).mean())
    pinned = math.log(2 * 64 - 1) * 0.1 / 0.07
    assert losses[0.1][0] == pytest.approx(pinned, abs=0.1) and losses[0.1][1] < 0.01
    assert losses[0.001][0] < pinned - 0.3 and losses[0.001][1] > 0.03


def test_views_draw_the_augmentation_anew():
    from hierot.data.images import Views

    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.rand(3, 2, 2), i

    x, label = Views(Noisy(), 2)[1]
    assert x.shape == (2, 3, 2, 2) and label == 1 and not torch.equal(x[0], x[1])
