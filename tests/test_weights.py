"""OT sample weights (``weights=uniform|far|near``) against the authors' definitions and
per-pair POT references."""

import numpy as np
import ot
import pytest
import torch

from hierot.distances import class_distances, group_by_class, monotone_coupling
from hierot.distances.coupling import weighted_monotone_coupling
from hierot.distances.weights import sample_weights

from helpers.batches import class_pairs, multimodal_batch
from helpers.references import authors_fft_plan, authors_weights, euclidean, greedy_plan_weighted

REG = 0.7


def dense_plan(pair, r, s, mass, p, n, m):
    plan = torch.zeros(p, n, m, dtype=torch.float64)
    plan.index_put_((pair, r, s), mass.double(), accumulate=True)
    return plan


@pytest.mark.parametrize("kind", ["far", "near"])
def test_sample_weights_are_the_authors_softmax_per_class(kind):
    z, y = multimodal_batch(seed=4)
    batch = group_by_class(z, y)
    w = sample_weights(batch, kind)
    for c in torch.unique(y):
        expected = authors_weights(z[y == c], far=kind == "far")
        np.testing.assert_allclose(w[y == c].numpy(), expected.numpy(), rtol=1e-12)
    u = sample_weights(batch, "uniform")
    assert torch.allclose(u * batch.counts[batch.inverse], torch.ones(len(y), dtype=u.dtype))
    # far favours the samples far from their class mean, near the close ones
    means = batch.class_means[batch.inverse]
    d = (z - means).norm(dim=1)
    c = y == y[0]
    order = d[c].argsort()
    assert (w[c][order].diff() > 0).all() == (kind == "far")


def per_pair_weights(z, y, kind):
    return [
        (authors_weights(za, kind == "far").numpy(), authors_weights(zb, kind == "far").numpy())
        for _, _, za, zb in class_pairs(z, y)
    ]


@pytest.mark.parametrize("kind", ["far", "near"])
def test_weighted_emd_and_sinkhorn_match_pot_per_pair(kind):
    z, y = multimodal_batch(seed=5)
    weights = per_pair_weights(z, y, kind)
    costs = [
        ot.dist(za.numpy(), zb.numpy(), metric="euclidean") for *_, za, zb in class_pairs(z, y)
    ]
    _, emd = class_distances(z, y, "emd", weights=kind)
    ref = [ot.emd2(a, b, m) for (a, b), m in zip(weights, costs)]
    np.testing.assert_allclose(emd.numpy(), ref, rtol=1e-9)
    _, uniform = class_distances(z, y, "emd")
    assert not np.allclose(emd.numpy(), uniform.numpy(), rtol=1e-3)
    opts = {"reg": REG, "reg_scale": "none", "max_iter": 20_000, "tol": 1e-12}
    _, sk = class_distances(z, y, "sinkhorn", weights=kind, **opts)
    ref = [
        (ot.sinkhorn(a, b, m, REG, numItermax=100_000, stopThr=1e-13) * m).sum()
        for (a, b), m in zip(weights, costs)
    ]
    np.testing.assert_allclose(sk.numpy(), ref, rtol=1e-8)


@pytest.mark.parametrize("kind", ["far", "near"])
def test_weighted_fastft_is_the_north_west_corner_plan_of_the_weights(kind):
    z, y = multimodal_batch(seed=6)
    _, dist = class_distances(z, y, "fastft", weights=kind)
    ref = []
    for (a, b), (*_, za, zb) in zip(per_pair_weights(z, y, kind), class_pairs(z, y)):
        plan = greedy_plan_weighted(a, b)
        np.testing.assert_allclose(plan.sum(1), a / a.sum(), atol=1e-12)
        ref.append(float((plan * euclidean(za, zb).numpy()).sum()))
    np.testing.assert_allclose(dist.numpy(), ref, rtol=1e-9)


def test_weighted_coupling_matches_the_loop_and_the_uniform_coupling():
    g = torch.Generator().manual_seed(0)
    sizes = [(1, 1), (1, 7), (5, 3), (4, 4), (9, 2), (6, 6)]
    n = max(max(s) for s in sizes)
    wa = torch.zeros(len(sizes), n, dtype=torch.float64)
    wb = torch.zeros_like(wa)
    for p, (na, nb) in enumerate(sizes):
        wa[p, :na] = torch.softmax(torch.randn(na, generator=g, dtype=torch.float64), 0)
        wb[p, :nb] = torch.softmax(torch.randn(nb, generator=g, dtype=torch.float64), 0)
    plan = dense_plan(*weighted_monotone_coupling(wa, wb, torch.float64), len(sizes), n, n)
    for p, (na, nb) in enumerate(sizes):
        ref = greedy_plan_weighted(wa[p, :na].numpy(), wb[p, :nb].numpy())
        np.testing.assert_allclose(plan[p, :na, :nb].numpy(), ref, atol=1e-12)
        assert float(plan[p].sum()) == pytest.approx(1.0, abs=1e-12)
        assert float(plan[p, na:].abs().sum() + plan[p, :, nb:].abs().sum()) == 0
    # uniform weights: the exact uniform coupling
    na = torch.tensor([s[0] for s in sizes])
    nb = torch.tensor([s[1] for s in sizes])
    uniform_a = (torch.arange(n) < na[:, None]).double() / na[:, None]
    uniform_b = (torch.arange(n) < nb[:, None]).double() / nb[:, None]
    weighted = dense_plan(*weighted_monotone_coupling(uniform_a, uniform_b), len(sizes), n, n)
    exact = dense_plan(*monotone_coupling(na, nb, torch.float64), len(sizes), n, n)
    np.testing.assert_allclose(weighted.numpy(), exact.numpy(), atol=1e-7)


def test_authors_fft_equals_ours_only_for_mirror_symmetric_weights():
    g = torch.Generator().manual_seed(1)
    for na, nb in [(4, 6), (5, 3), (7, 7)]:
        # symmetric under reversal: the two-ended fill is the north-west-corner plan
        a = torch.softmax(torch.randn(na, generator=g, dtype=torch.float64), 0)
        b = torch.softmax(torch.randn(nb, generator=g, dtype=torch.float64), 0)
        a, b = (a + a.flip(0)) / 2, (b + b.flip(0)) / 2
        ours = greedy_plan_weighted(a.numpy(), b.numpy())
        np.testing.assert_allclose(authors_fft_plan(a.numpy(), b.numpy()), ours, atol=1e-12)
    # the authors' softmax weights are not symmetric: their fill is then no coupling (its
    # row sums miss the weights), while ours has the weights as marginals
    z, y = multimodal_batch(seed=7)
    (a, b), *_ = per_pair_weights(z, y, "far")
    theirs = authors_fft_plan(a, b)
    assert np.abs(theirs.sum(1) - a).max() > 1e-3
    ours = greedy_plan_weighted(a, b)
    np.testing.assert_allclose(ours.sum(1), a, atol=1e-12)
    np.testing.assert_allclose(ours.sum(0), b, atol=1e-12)


@pytest.mark.parametrize("method", ["emd", "sinkhorn", "fastft"])
def test_weighted_gradient_is_the_envelope_gradient_with_constant_weights(method):
    z, y = multimodal_batch(seed=8)
    opts = {"reg": REG, "reg_scale": "none", "max_iter": 20_000, "tol": 1e-12}
    opts = opts if method == "sinkhorn" else {}
    coef = torch.linspace(-1.0, 2.0, 15, dtype=torch.float64)
    z1 = z.clone().requires_grad_()
    _, dist = class_distances(z1, y, method, weights="near", **opts)
    (coef * dist).sum().backward()
    z2 = z.clone().requires_grad_()
    total = 0
    for p, (a, b) in enumerate(per_pair_weights(z, y, "near")):
        *_, za, zb = list(class_pairs(z2, y))[p]
        m = ot.dist(za.detach().numpy(), zb.detach().numpy(), metric="euclidean")
        if method == "emd":
            plan = ot.emd(a, b, m)
        elif method == "sinkhorn":
            plan = ot.sinkhorn(a, b, m, REG, numItermax=100_000, stopThr=1e-13)
        else:
            plan = greedy_plan_weighted(a, b)
        total = total + coef[p] * (torch.from_numpy(plan) * euclidean(za, zb)).sum()
    total.backward()
    np.testing.assert_allclose(z1.grad.numpy(), z2.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_weights_are_options_of_the_ot_distances_only():
    z, y = multimodal_batch(seed=9)
    with pytest.raises(ValueError, match="emd: weights must be one of uniform, far, near"):
        class_distances(z, y, "emd", weights="heavy")
    with pytest.raises(ValueError, match="class distance 'swd' has no option 'weights'"):
        class_distances(z, y, "swd", weights="far")
