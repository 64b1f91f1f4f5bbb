import numpy as np
import pytest
import torch

from hierot.distances import (
    EVALUATION_SEED,
    class_distances,
    evaluation_options,
    list_distances,
    register_distance,
)
from hierot.distances import registry as registry_module

from helpers.batches import class_pairs, multimodal_batch
from helpers.references import euclidean, greedy_plan, plan_for, reference_distance

# Every registered distance: a new one must get a reference in helpers/references.py.
METHODS = list_distances()
REG = 0.7
SINKHORN = {"reg": REG, "reg_scale": "none", "max_iter": 20_000, "tol": 1e-12}


def options(method, dim, dtype=torch.float64, seed=0):
    if method == "sinkhorn":
        return dict(SINKHORN)
    if method == "swd":
        theta = torch.randn(dim, 40, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        return {"projections": theta / theta.norm(dim=0)}
    return {}


def test_registry_lists_the_shipped_methods():
    assert {"l2", "emd", "sinkhorn", "swd", "fastft"} <= set(list_distances())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_per_pair_reference_float64(method, seed):
    z, y = multimodal_batch(seed=seed)
    opts = options(method, z.shape[1], seed=seed)
    classes, dist = class_distances(z, y, method, **opts)
    assert classes.tolist() == torch.unique(y).tolist()
    k = len(classes)
    assert dist.shape == (k * (k - 1) // 2,) and dist.dtype == torch.float64
    proj = opts.get("projections")
    ref = [
        reference_distance(
            method, za, zb, projections=None if proj is None else proj.numpy(), reg=REG
        )
        for _, _, za, zb in class_pairs(z, y)
    ]
    np.testing.assert_allclose(dist.numpy(), ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_float32_agrees_with_float64(method, device):
    z, y = multimodal_batch(seed=3)
    opts = options(method, z.shape[1])
    _, d64 = class_distances(z, y, method, **opts)
    opts32 = {k: v.float() if torch.is_tensor(v) else v for k, v in opts.items()}
    if method == "sinkhorn":
        opts32["tol"] = 1e-6
    _, d32 = class_distances(z.float().to(device), y.to(device), method, **opts32)
    assert d32.dtype == torch.float32 and d32.device.type == device
    np.testing.assert_allclose(d32.cpu().double().numpy(), d64.numpy(), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("seed", range(4))
def test_ordering_properties(seed):
    z, y = multimodal_batch(seed=seed)
    got = {m: class_distances(z, y, m, **options(m, z.shape[1]))[1] for m in METHODS}
    tol = 1e-9
    assert torch.all(got["l2"] <= got["emd"] + tol)  # Jensen
    assert torch.all(got["emd"] <= got["fastft"] + tol)  # greedy plan is feasible
    assert torch.all(got["emd"] <= got["sinkhorn"] + tol)  # entropic plan is feasible
    # and the bounds are not trivially tight on multi-modal classes
    assert (got["fastft"] - got["emd"]).max() > 0.1
    assert (got["emd"] - got["l2"]).max() > 0.1


# At reg 0.02 one pair stops a little short of tol=1e-10 after 50 000 iterations
# (marginal error ~1e-8); the gaps asserted are far larger than that.
@pytest.mark.slow  # 50 000 iterations at the smallest reg
@pytest.mark.filterwarnings("ignore:sinkhorn. 1 of .* did not converge:RuntimeWarning")
def test_sinkhorn_tends_to_emd_as_reg_shrinks():
    z, y = multimodal_batch(seed=5)
    _, emd = class_distances(z, y, "emd")
    gaps = []
    for reg in [2.0, 0.5, 0.1, 0.02]:
        _, sk = class_distances(
            z, y, "sinkhorn", reg=reg, reg_scale="none", max_iter=50_000, tol=1e-10
        )
        gaps.append(float((sk - emd).abs().max() / emd.max()))
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 1e-3 < gaps[0]


# the twins at reg 0.005 stop short of tol=1e-12 (marginal error ~6e-7, distance < 1e-6)
@pytest.mark.filterwarnings("ignore:sinkhorn. 1 of 1 class pairs did not converge:RuntimeWarning")
@pytest.mark.parametrize("method", METHODS)
def test_symmetric_and_zero_on_identical_sets(method):
    z, y = multimodal_batch(num_classes=3, seed=7)
    opts = options(method, z.shape[1])
    # relabel so the pair order flips: a distance must not depend on which class is "a"
    _, d = class_distances(z, y, method, **opts)
    _, d_flip = class_distances(z, -y, method, **opts)
    k = 3
    a, b = torch.triu_indices(k, k, 1)
    flip = {(int(i), int(j)): n for n, (i, j) in enumerate(zip(a, b))}
    # class c becomes position k-1-c after negating labels
    perm = [flip[(k - 1 - int(j), k - 1 - int(i))] for i, j in zip(a, b)]
    np.testing.assert_allclose(d.numpy(), d_flip[perm].numpy(), rtol=1e-9, atol=1e-12)
    # identical sets (same samples, same batch order) under two labels are at distance 0;
    # the entropic plan spreads mass, so for sinkhorn that holds only as reg -> 0
    x = z[:9]
    twins = torch.cat([x, x]), torch.tensor([0] * 9 + [1] * 9)
    if method == "sinkhorn":
        assert float(class_distances(*twins, method, **opts)[1][0]) > 0.1
        opts = {**opts, "reg": 0.005}
    _, same = class_distances(*twins, method, **opts)
    assert abs(float(same[0])) < 1e-6


def test_gaussians_with_equal_covariance_have_emd_close_to_l2():
    g = torch.Generator().manual_seed(0)
    n, shift = 300, torch.tensor([6.0, -2.0], dtype=torch.float64)
    za = torch.randn(n, 2, generator=g, dtype=torch.float64)
    zb = torch.randn(n, 2, generator=g, dtype=torch.float64) + shift
    z, y = torch.cat([za, zb]), torch.tensor([0] * n + [1] * n)
    _, l2 = class_distances(z, y, "l2")
    _, emd = class_distances(z, y, "emd")
    assert float(emd) == pytest.approx(float(l2), rel=0.03)
    # while for a bimodal class the mean hides everything and optimal transport does not
    zc = torch.cat([za[: n // 2] + 5, za[n // 2 :] - 5])
    _, l2_bi = class_distances(torch.cat([za, zc]), y, "l2")
    _, emd_bi = class_distances(torch.cat([za, zc]), y, "emd")
    assert float(l2_bi) < 0.5 < 3.0 < float(emd_bi)


@pytest.mark.parametrize("method", ["emd", "sinkhorn", "fastft"])
def test_envelope_gradient_matches_loop_with_fixed_plan(method):
    z, y = multimodal_batch(seed=11)
    weights = torch.linspace(-1.0, 2.0, 15, dtype=torch.float64)
    z1 = z.clone().requires_grad_()
    _, dist = class_distances(z1, y, method, **options(method, z.shape[1]))
    (weights * dist).sum().backward()

    z2 = z.clone().requires_grad_()
    classes = torch.unique(y)
    k = len(classes)
    total = 0
    for p, (a, b) in enumerate(zip(*torch.triu_indices(k, k, 1).tolist())):
        za, zb = z2[y == classes[a]], z2[y == classes[b]]
        plan = torch.from_numpy(plan_for(method, za.detach().numpy(), zb.detach().numpy(), REG))
        total = total + weights[p] * (plan * euclidean(za, zb)).sum()
    total.backward()
    np.testing.assert_allclose(z1.grad.numpy(), z2.grad.numpy(), rtol=1e-7, atol=1e-9)


def test_swd_and_l2_gradients_match_pot_and_loop():
    import ot

    z, y = multimodal_batch(seed=12)
    theta = options("swd", z.shape[1])["projections"]
    for method in ["swd", "l2"]:
        z1 = z.clone().requires_grad_()
        opts = {"projections": theta} if method == "swd" else {}
        _, dist = class_distances(z1, y, method, **opts)
        dist.sum().backward()
        z2 = z.clone().requires_grad_()
        total = 0
        for _, _, za, zb in class_pairs(z2, y):
            if method == "swd":  # POT's torch backend differentiates through the sort
                total = total + ot.sliced_wasserstein_distance(za, zb, projections=theta, p=2)
            else:
                total = total + (za.mean(0) - zb.mean(0)).norm()
        total.backward()
        np.testing.assert_allclose(z1.grad.numpy(), z2.grad.numpy(), rtol=1e-7, atol=1e-9)


def test_swd_seeded_projections_are_reproducible_and_shaped():
    z, y = multimodal_batch(seed=2)
    _, a = class_distances(z, y, "swd", n_projections=30, seed=4)
    _, b = class_distances(z, y, "swd", n_projections=30, seed=4)
    _, c = class_distances(z, y, "swd", n_projections=30, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match=r"projections must be \(dim=5, L\)"):
        class_distances(z, y, "swd", projections=torch.randn(4, 3))


def test_evaluation_fixes_the_seed_of_random_distances_only():
    assert evaluation_options("swd", {"seed": None, "p": 1}) == {"seed": EVALUATION_SEED, "p": 1}
    assert evaluation_options("swd", {}) == {"seed": EVALUATION_SEED}
    assert evaluation_options("swd", {"seed": 7}) == {"seed": 7}  # a chosen seed stays
    assert evaluation_options("emd", {"max_iter": 5}) == {"max_iter": 5}
    assert evaluation_options("sinkhorn", {}) == {} == evaluation_options("fastft", {})


def test_bad_method_and_options_are_named():
    z, y = multimodal_batch(seed=0)
    with pytest.raises(ValueError, match="unknown class distance 'wasserstein'; available: emd"):
        class_distances(z, y, "wasserstein")
    with pytest.raises(ValueError, match="'sinkhorn' has no option 'epsilon'; its options: reg"):
        class_distances(z, y, "sinkhorn", epsilon=0.1)
    with pytest.raises(ValueError, match="reg must be > 0"):
        class_distances(z, y, "sinkhorn", reg=0.0)
    with pytest.raises(ValueError, match="labels must be integers"):
        class_distances(z, y.float())
    with pytest.raises(ValueError, match=rf"labels must be \({len(y)},\) to match the features"):
        class_distances(z, y[:-1])


@pytest.mark.parametrize("method", METHODS)
def test_single_class_and_single_samples(method):
    z, y = multimodal_batch(seed=0)
    classes, dist = class_distances(z, torch.zeros_like(y), method)
    assert classes.tolist() == [0] and dist.numel() == 0
    # one sample per class: every method but swd is the plain point distance
    x = z[:5].clone().requires_grad_()
    _, dist = class_distances(x, torch.arange(5), method, **options(method, 5))
    a, b = torch.triu_indices(5, 5, 1)
    expect = (z[:5][a] - z[:5][b]).norm(p=1 if method == "l1" else 2, dim=1)
    if method not in ("swd", "hyperbolic"):  # hyperbolic: the distance in the ball
        np.testing.assert_allclose(dist.detach().numpy(), expect.numpy(), rtol=1e-9)
    dist.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("method", METHODS)
def test_half_precision_and_autocast_compute_in_float32(method):
    z, y = multimodal_batch(seed=0)
    _, ref = class_distances(z.float(), y, method, **options(method, 5, torch.float32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, d = class_distances(z.bfloat16(), y, method, **options(method, 5, torch.float32))
    assert d.dtype == torch.float32
    np.testing.assert_allclose(d.numpy(), ref.numpy(), rtol=0.05)


def test_a_registered_distance_is_one_function():
    @register_distance("test_first_sample")
    def first_sample(batch, scale: float = 1.0):
        first = batch.z[batch.members[:, 0]]
        return scale * (first[batch.pair_a] - first[batch.pair_b]).norm(dim=1)

    try:
        z, y = multimodal_batch(seed=0)
        _, d = class_distances(z, y, "test_first_sample", scale=2.0)
        c = torch.unique(y)
        first = torch.stack([z[(y == v).nonzero()[0, 0]] for v in c])
        assert float(d[0]) == pytest.approx(2 * float((first[0] - first[1]).norm()))
        with pytest.raises(ValueError, match="already registered"):
            register_distance("l2")(first_sample)
    finally:
        registry_module._DISTANCES.pop("test_first_sample")


def test_greedy_reference_is_a_feasible_plan():
    # guards the reference itself: rows and columns carry the uniform weights
    plan = greedy_plan(4, 6)
    np.testing.assert_allclose(plan.sum(1), 0.25)
    np.testing.assert_allclose(plan.sum(0), 1 / 6)
