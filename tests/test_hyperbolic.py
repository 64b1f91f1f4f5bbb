"""dist=hyperbolic and cpcc.nodes=all against HypStructure's CPCC (tests/helpers/
hyp_references.py), in float64, loss and gradient; the references' quirks with the numbers
that differ; HierarchyCPCC's ``poincare``, which is not hyperbolic."""

import math

import pytest
import torch

from hierot.correlation import CPCCLoss, pearson
from hierot.distances import batch_centre, check_options
from hierot.distances.hyperbolic import BALL_EPS, expmap0
from hierot.hierarchy import Hierarchy

from helpers.hyp_references import (
    hierarchy_cpcc_poincare,
    hypstructure_cpcc,
    poincare_expmap0,
    poincare_mean,
)
from helpers.trees import TREES


@pytest.fixture(params=list(TREES))
def tree(request):
    return TREES[request.param]


def features(tree, per_class=3, dim=6, seed=0, scale=0.5):
    """Every class a few samples around its own centre; norms below 2.5, so the map to the
    ball stays inside float32's radius (no projection) unless ``scale`` is raised."""
    g = torch.Generator().manual_seed(seed)
    k = tree.num_classes
    y = torch.arange(k).repeat_interleave(per_class)
    centres = scale * torch.randn(k, dim, generator=g, dtype=torch.float64)
    z = centres[y] + 0.1 * scale * torch.randn(len(y), dim, generator=g, dtype=torch.float64)
    return z.requires_grad_(), y


def same_loss_and_gradient(ours, reference, z):
    (g_ours,) = torch.autograd.grad(ours, z)
    (g_ref,) = torch.autograd.grad(reference, z)
    assert float(ours.detach()) == pytest.approx(float(reference.detach()), rel=1e-6, abs=1e-9)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-6, atol=1e-9)


# balanced trees: on the others the reference's leaf_only drops leaves (see the quirk test)
@pytest.mark.parametrize("name", ["2 levels", "3 levels", "4 levels"])
def test_einstein_centres_equal_hypstructure_poincare_mean(name):
    tree = TREES[name]
    z, y = features(tree)
    ours = CPCCLoss(tree, "hyperbolic", mean="einstein")(z, y)
    reference = hypstructure_cpcc(tree, z, y, "poincare_mean", leaf_only=True)
    same_loss_and_gradient(ours, reference, z)


@pytest.mark.parametrize("method, reference_name", [("l2", "l2"), ("l1", "l1"),
                                                    ("hyperbolic", "poincare_mean")])  # fmt: skip
def test_all_nodes_equal_hypstructure(tree, method, reference_name):
    z, y = features(tree, seed=1)
    ours = CPCCLoss(tree, method, nodes="all")(z, y)
    reference = hypstructure_cpcc(tree, z, y, reference_name, leaf_only=False)
    same_loss_and_gradient(ours, reference, z)


@pytest.mark.parametrize("scale", [0.5, 3.0])  # 3.0: class means beyond clip_r = 2.3
def test_euclidean_centres_equal_hypstructure_exp_c(scale):
    tree = TREES["3 levels"]
    z, y = features(tree, seed=2, scale=scale)
    ours = CPCCLoss(tree, "hyperbolic", mean="euclidean", c=1.0, clip_r=2.3)(z, y)
    # its riemannian gradient is kept: ToPoincare(riemannian=True)
    exact = hypstructure_cpcc(tree, z, y, "poincare_exp_c", leaf_only=True, quirks=False)
    same_loss_and_gradient(ours, exact, z)


def test_hypstructure_constants_move_its_exp_c_distances():
    # pmath's batched Mobius addition divides by (denominator + 1e-5): far-apart centres
    # near the boundary, where the denominator is small, come out shorter
    from helpers.hyp_references import dist_matrix, to_poincare

    g = torch.Generator().manual_seed(3)
    means = 3 * torch.randn(12, 6, generator=g, dtype=torch.float64)
    x = to_poincare(means, 1.0, 2.3, riemannian=False, quirks=False)
    exact = dist_matrix(x, x, quirks=False)
    as_written = dist_matrix(x, x, quirks=True)
    off = ~torch.eye(12, dtype=torch.bool)
    relative = ((as_written - exact).abs() / exact)[off]
    assert float(relative.max()) == pytest.approx(2.1e-3, rel=0.05)  # on this draw
    # and CPCC, a correlation, barely moves
    tree = TREES["3 levels"]
    z, y = features(tree, seed=2, scale=3.0)
    a = hypstructure_cpcc(tree, z, y, "poincare_exp_c", leaf_only=True, quirks=True)
    b = hypstructure_cpcc(tree, z, y, "poincare_exp_c", leaf_only=True, quirks=False)
    assert abs(float((a - b).detach())) < 1e-4


def test_hypstructure_leaf_only_drops_shallow_leaves():
    # its label map pads each leaf-to-root path in front, so column 0 (leaf_only) is '' for
    # a leaf above the deepest level: those classes leave the CPCC
    tree = Hierarchy.from_paths(
        [["a", "a1"], ["b", "b1", "b11"], ["b", "b1", "b12"], ["b", "b2", "b21"],
         ["b", "b2", "b22"], ["c", "c1", "c11"], ["c", "c1", "c12"]]
    )  # fmt: skip
    z, y = features(tree)
    z = z.detach()
    with_all = CPCCLoss(tree, "l2")(z, y)
    deepest = [i for i, d in enumerate(tree.leaf_depths) if d == tree.depth]
    keep = torch.isin(y, torch.tensor(deepest))
    only_deepest = CPCCLoss(tree, "l2")(z[keep], y[keep])
    reference = hypstructure_cpcc(tree, z, y, "l2", leaf_only=True)
    assert float(reference) == pytest.approx(float(only_deepest), rel=1e-9)
    assert abs(float(reference) - float(with_all)) > 0.01


def test_points_past_the_radius_are_projected_in_every_dtype():
    u = torch.tensor([[30.0, 40.0], [0.3, 0.4]], dtype=torch.float64)
    x = expmap0(u, 1.0)
    assert float(x[0].norm()) == pytest.approx(1 - BALL_EPS, rel=1e-12)
    assert float(x[1].norm()) == pytest.approx(math.tanh(0.5), rel=1e-12)
    torch.testing.assert_close(expmap0(u.float(), 1.0).double(), x, rtol=1e-6, atol=0)
    # the reference in float32 has the same radius
    ref = poincare_expmap0(u.float())
    assert float(ref[0].norm()) == pytest.approx(1 - BALL_EPS, rel=1e-6)


def test_float32_features_far_out_give_finite_distances_and_gradients():
    tree = TREES["3 levels"]
    z, y = features(tree, scale=20.0)  # every sample maps to the boundary
    z32 = z.detach().float().requires_grad_()
    loss = CPCCLoss(tree, "hyperbolic")(z32, y)
    (grad,) = torch.autograd.grad(loss, z32)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    loss64 = CPCCLoss(tree, "hyperbolic")(z.detach(), y)
    assert float(loss.detach()) == pytest.approx(float(loss64.detach()), abs=1e-5)


def test_centring_uses_the_einstein_midpoint_of_the_batch():
    z, _ = features(TREES["2 levels"], scale=1.0)
    z = z.detach()
    ours = batch_centre("hyperbolic", z, {})
    # at float32's radius, which hierot keeps in every dtype (some samples reach it)
    reference = poincare_mean(poincare_expmap0(z, BALL_EPS), dim=0, c=1.0)
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(batch_centre("l2", z, {}), z.mean(0))
    torch.testing.assert_close(batch_centre("hyperbolic", z, {"mean": "euclidean"}), z.mean(0))


def test_hierarchy_cpcc_poincare_is_two_log_chords():
    # rescaled to norm 1 - 1e-5, every class mean sits at the same radius; acosh of the
    # ratio is then 2 log(chord) + a constant to ~1e-9: a Euclidean quantity
    g = torch.Generator().manual_seed(0)
    means = torch.randn(10, 6, generator=g, dtype=torch.float64)
    dist = hierarchy_cpcc_poincare(means)
    unit = means / means.norm(dim=1, keepdim=True)
    chords = torch.nn.functional.pdist(unit)
    shift = dist - 2 * torch.log(chords)
    assert float(shift.max() - shift.min()) < 1e-8
    # acosh(1 + 2 R^2 chord^2 / (1 - R^2)^2) ~ log(4 R^2 chord^2 / (1 - R^2)^2), R = 1 - 1e-5
    radius = 1 - 1e-5
    constant = math.log(4 * radius**2 / (1 - radius**2) ** 2)
    assert float(shift.mean()) == pytest.approx(constant, rel=1e-9)
    # so CPCC with it is the CPCC of 2 log(chord)
    tree_dist = torch.rand(45, generator=g, dtype=torch.float64)
    r1 = pearson(dist, tree_dist)[0]
    r2 = pearson(2 * torch.log(chords), tree_dist)[0]
    assert float(r1) == pytest.approx(float(r2), abs=1e-9)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mean": "frechet"}, "mean must be one of einstein, euclidean, got 'frechet'"),
        ({"c": 0}, "c (the curvature's magnitude) must be > 0, got 0"),
        ({"clip_r": -1}, "clip_r must be a number > 0 or null, got -1"),
        ({"riemannian": "yes"}, "riemannian must be true or false, got 'yes'"),
    ],
)
def test_bad_options_are_one_line(options, message):
    with pytest.raises(ValueError) as info:
        check_options("hyperbolic", options)
    assert message in str(info.value)


def test_nodes_must_be_leaves_or_all():
    with pytest.raises(ValueError, match="nodes must be one of leaves, all, got 'inner'"):
        CPCCLoss(TREES["2 levels"], "l2", nodes="inner")


def test_centring_loss_adds_its_weight_times_the_centres_norm():
    from functools import partial

    from hierot.models import HierarchyModule

    tree = TREES["2 levels"]
    z, y = features(tree, scale=1.0)
    z = z.detach().float()
    backbone = torch.nn.Identity()
    backbone.num_features = z.shape[1]
    sgd = partial(torch.optim.SGD, lr=0.1)
    plain = HierarchyModule(backbone, tree, sgd, dist="hyperbolic")
    centred = HierarchyModule(backbone, tree, sgd, dist="hyperbolic", center=0.01)
    centred.load_state_dict(plain.state_dict())
    logits = plain.head(z)
    with torch.no_grad():
        difference = centred._losses(z, logits, y)[0] - plain._losses(z, logits, y)[0]
    expected = 0.01 * batch_centre("hyperbolic", z, {}).norm()
    assert float(difference) == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) > 1e-4
