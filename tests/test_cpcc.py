import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from hierot import CPCCLoss, Hierarchy, class_distances, cpcc
from hierot.distances import list_distances

from helpers.batches import multimodal_batch

METHODS = list_distances()

# 12 classes: 3 top-level groups of 2 subgroups of 2 leaves; class i is leaf "c{i}".
TREE = {
    f"g{g}": {f"g{g}s{s}": [f"c{4 * g + 2 * s + i}" for i in range(2)] for s in range(2)}
    for g in range(3)
}


@pytest.fixture
def hierarchy() -> Hierarchy:
    return Hierarchy.from_nested(TREE)


def tree_features(h: Hierarchy, per_class: int = 6, noise: float = 0.05, seed: int = 0):
    """Features that embed the tree: one random direction per node on the leaf's path, so
    squared feature distance grows with tree distance (CPCC high, though below 1)."""
    g = torch.Generator().manual_seed(seed)
    node_vec = {n: torch.randn(32, generator=g, dtype=torch.float64) for n in h.nodes}
    centers = torch.stack([sum(node_vec[n] for n in h.path(leaf)) for leaf in h.leaves])
    y = torch.arange(len(h.leaves)).repeat_interleave(per_class)
    z = centers[y] + noise * torch.randn(len(y), 32, generator=g, dtype=torch.float64)
    return z, y


def test_cpcc_is_pearson_of_class_and_tree_distances(hierarchy):
    z, y = multimodal_batch(num_classes=6, seed=4)
    y = (y - 1) // 2 * 2  # labels 0, 2, ..., 10: a subset of the 12 classes
    t = hierarchy.tree_distances(torch.float64)
    for method in METHODS:
        opts = {"seed": 0} if method == "swd" else {}
        classes, dist = class_distances(z, y, method, **opts)
        k = len(classes)
        tvec = [float(t[classes[a], classes[b]]) for a, b in zip(*torch.triu_indices(k, k, 1))]
        expect = pearsonr(dist.numpy(), tvec).statistic
        got = cpcc(z, y, t, method, **opts)
        assert got.dim() == 0
        assert float(got) == pytest.approx(expect, abs=1e-12)


def test_features_that_embed_the_tree_score_near_one(hierarchy):
    z, y = tree_features(hierarchy)
    t = hierarchy.tree_distances()
    for method in METHODS:
        # 50 random 1-D projections of 32-D features blur the structure somewhat, and the
        # features are laid out for Euclidean distances, which l1 measures less faithfully
        floor = 0.7 if method in ("swd", "l1") else 0.8
        # swd draws its directions from the global RNG unless seeded; pytest plugins reseed it
        options = {"seed": 0} if method == "swd" else {}
        assert float(cpcc(z, y, t, method, **options)) > floor, method
    # shuffling which class sits where destroys it
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    assert abs(float(cpcc(z, perm[y], t, "l2"))) < 0.5


@pytest.mark.parametrize("method", METHODS)
def test_training_on_the_loss_raises_cpcc(method, hierarchy):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(12).repeat_interleave(4)
    z = torch.randn(len(y), 16, generator=g).requires_grad_()
    loss_fn = CPCCLoss(hierarchy, method)
    t = hierarchy.tree_distances()
    before = float(cpcc(z.detach(), y, t, method, **loss_fn.options))
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn(z, y)
        loss.backward()
        opt.step()
    after = float(cpcc(z.detach(), y, t, method, **loss_fn.options))
    assert before < 0.3 and after > 0.85, (before, after)


@pytest.mark.parametrize("method", METHODS)
def test_degenerate_batches_are_finite_and_add_nothing(method, hierarchy):
    loss_fn = CPCCLoss(hierarchy, method)
    t = hierarchy.tree_distances()
    g = torch.Generator().manual_seed(0)
    cases = {
        "two classes": torch.tensor([0, 0, 0, 5, 5, 5]),
        "one class": torch.tensor([3] * 6),
        "siblings only (constant tree distance)": torch.tensor([0, 0, 1, 1, 0, 1]),
        "cousins only": torch.tensor([0, 2, 0, 2, 0, 2]),
    }
    for name, y in cases.items():
        z = torch.randn(len(y), 8, generator=g).requires_grad_()
        loss = loss_fn(z, y)
        loss.backward()
        assert loss.item() == 0.0, name
        assert torch.equal(z.grad, torch.zeros_like(z)), name
        assert float(cpcc(z.detach(), y, t, method)) == 0.0
    # identical features for every class: distances constant up to rounding
    y = torch.arange(12).repeat(2)
    z = torch.randn(1, 8, generator=g).repeat(24, 1).requires_grad_()
    loss = loss_fn(z, y)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("method", METHODS)
def test_one_sample_per_class_trains(method, hierarchy):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(12, 8, generator=g).requires_grad_()
    loss = CPCCLoss(hierarchy, method)(z, torch.arange(12))
    loss.backward()
    assert 0 < loss.item() < 2
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_one_sample_per_class_is_the_same_for_every_plan(hierarchy):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(12, 8, generator=g, dtype=torch.float64)
    t = hierarchy.tree_distances()
    values = [float(cpcc(z, torch.arange(12), t, m)) for m in ["l2", "emd", "sinkhorn", "fastft"]]
    assert max(values) - min(values) < 1e-12


def test_bad_inputs_are_named(hierarchy):
    z = torch.randn(6, 4)
    with pytest.raises(ValueError, match="label 12 is outside the hierarchy's 12 classes"):
        cpcc(z, torch.tensor([0, 1, 2, 3, 4, 12]), hierarchy.tree_distances())
    with pytest.raises(ValueError, match="tree distances must be"):
        cpcc(z, torch.arange(6), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="'swd' has no option 'reg'"):
        CPCCLoss(hierarchy, "swd", reg=1.0)
    with pytest.raises(ValueError, match="unknown class distance 'ot'"):
        CPCCLoss(hierarchy, "ot")


def test_loss_module_moves_with_the_model_and_keeps_options(hierarchy):
    loss_fn = CPCCLoss(hierarchy, "sinkhorn", reg=0.5)
    assert "method='sinkhorn', reg=0.5" in repr(loss_fn)
    assert loss_fn.tree_dist.shape == (12, 12)
    assert "tree_dist" not in loss_fn.state_dict()  # derived from the hierarchy
    z, y = tree_features(hierarchy)
    loss64 = CPCCLoss(hierarchy, "fastft").double()(z, y)
    assert loss64.dtype == torch.float64 and 0 <= float(loss64) < 0.2
    if torch.cuda.is_available():
        cuda_loss = CPCCLoss(hierarchy, "fastft").cuda()(z.cuda(), y.cuda())
        np.testing.assert_allclose(float(cuda_loss), float(loss64), atol=1e-6)
