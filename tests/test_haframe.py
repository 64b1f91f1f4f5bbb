"""``haframe`` against HAFrame transcribed (tests/helpers/haframe_references.py), float64: the
frame (compared by its Gram matrix W W^T: an eigendecomposition fixes W only up to an
orthogonal map on the right, which the reference draws at random, and the Gram matrix, every
inner product between class vectors, is what the frame is), the similarity floor, the loss,
its gradients and the class scores on every tree of TREES; the reference's quirks with
their numbers; the option checks; the model predicting with the frame's scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hierot.hierarchy import Hierarchy
from hierot.objectives import build_objective, check_objective
from hierot.objectives.haframe import haf_frame, similarities, similarity_floor

from helpers import haframe_references as ref
from helpers.runs import loaded_test_scores
from helpers.trees import TREES, balanced

# the scripts' gammas (type-II-haframe.sh): FGVC-Aircraft, CIFAR-100, tieredImageNet, iNat-19
GAMMAS = [1.0, 2.0, 3.0, 5.0]
# a root with one child: the largest LCA height among the classes (2) is below the root's (3)
ONE_CHILD_ROOT = Hierarchy.from_paths([["r", "a", "x"], ["r", "a", "y"], ["r", "b", "z"]])


@pytest.fixture(params=list(TREES))
def tree(request) -> Hierarchy:
    return TREES[request.param]


def reference_frame(tree: Hierarchy, gamma: float, seed: int = 0):
    np.random.seed(seed)  # noqa: NPY002 (the reference draws its rotation from this stream)
    k = tree.num_classes
    return ref.distance_matrix_to_haf_cls_weights(ref.distance_matrix(tree), tree.leaves, k, gamma)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_the_frame_equals_haframe_solver(tree, gamma):
    w, s = haf_frame(tree, gamma)
    w_ref, s_ref, floor_ref = reference_frame(tree, gamma)
    assert np.array_equal(ref.distance_matrix(tree), tree.lca_heights(torch.float64).numpy())
    assert similarity_floor(tree.lca_heights(torch.float64), gamma) == pytest.approx(
        floor_ref, abs=1e-15
    )
    np.testing.assert_allclose(s.numpy(), s_ref, rtol=0, atol=1e-14)
    # W itself is the reference's up to its random rotation: compare the Gram matrices
    np.testing.assert_allclose((w @ w.T).numpy(), w_ref @ w_ref.T, rtol=0, atol=1e-12)
    assert np.abs(w.numpy() - w_ref).max() > 0.1
    # and the Gram matrix is the shifted similarity itself, unit norms on the diagonal
    torch.testing.assert_close(w @ w.T, s, rtol=0, atol=1e-12)
    torch.testing.assert_close(s.diagonal(), torch.ones(tree.num_classes, dtype=s.dtype))


@pytest.mark.parametrize("tree, gamma", [(balanced([2, 2, 5, 5]), 2.0), (ONE_CHILD_ROOT, 2.0)])
def test_the_frame_equals_haframe_solver_on_100_classes_and_a_one_child_root(tree, gamma):
    # the bisection finds the reference's 100-point scan's floor; both divide by the largest
    # LCA height among the classes, not the root's (embedding's h_root)
    w, s = haf_frame(tree, gamma)
    w_ref, s_ref, floor_ref = reference_frame(tree, gamma)
    assert similarity_floor(tree.lca_heights(torch.float64), gamma) == floor_ref
    np.testing.assert_allclose(s.numpy(), s_ref, rtol=0, atol=1e-14)
    np.testing.assert_allclose((w @ w.T).numpy(), w_ref @ w_ref.T, rtol=0, atol=1e-12)


def objective(tree: Hierarchy, **options):
    torch.manual_seed(0)
    return build_objective("haframe", tree, 6, options).double()


def reference_head(ours) -> torch.nn.Module:
    """HAF_resnet's ``features_1`` holding the objective's head's parameters and buffers."""
    head = ref.features_1(ours.frame.shape[0]).double()
    names = {"bn": "0", "residual_layer1": "1.residual_layer1"}
    names["residual_layer2"] = "1.residual_layer2"
    state = {}
    for key, value in ours.head.state_dict().items():
        first, rest = key.split(".", 1)
        state[f"{names[first]}.{rest}"] = value.clone()
    head.load_state_dict(state)
    return head


def batch(tree: Hierarchy, size: int = 40, seed: int = 0, scale: float = 2.0):
    """Every class once, then random ones; float64 inputs of the head with gradients."""
    g = torch.Generator().manual_seed(seed)
    k = tree.num_classes
    y = torch.cat([torch.arange(k), torch.randint(0, k, (size - k,), generator=g)])
    logits = (scale * torch.randn(size, k, generator=g, dtype=torch.float64)).requires_grad_()
    return logits, y


@pytest.mark.parametrize("alpha, gamma", [(0.4, 2.0), (0.5, 1.0), (0.0, 5.0), (1.5, 3.0)])
def test_loss_gradients_and_scores_equal_haframe(tree, alpha, gamma):
    # the scripts' settings (CIFAR-100, FGVC-Aircraft), the ablation's alpha 0 (CE on the
    # frame alone), and alpha 1.5, where the reference's rule makes beta 1
    ours = objective(tree, alpha=alpha, gamma=gamma).train()
    head = reference_head(ours).train()
    logits, y = batch(tree)
    # the reference's step gets the model's frame, as run_xent.py passes classifier_3.weight
    ref_loss, ref_scores = ref.haframe_step(tree, head, ours.frame, logits, y, alpha, gamma)
    loss = ours(None, logits, y)
    params, ref_params = list(ours.head.parameters()), list(head.parameters())
    g_ours = torch.autograd.grad(loss, [logits, *params])
    g_ref = torch.autograd.grad(ref_loss, [logits, *ref_params])
    assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-6, abs=1e-9)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    scores = ours.class_scores(None, logits)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-9, atol=1e-9)
    # one step moved the running statistics once, the scores' pass left them: the same as
    # the reference's, and then the same scores in eval mode
    for a, b in zip(ours.head.buffers(), head.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    ours.eval(), head.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            ours.class_scores(None, logits), head(logits) @ ours.frame.T, rtol=1e-9, atol=1e-9
        )


def test_beta_follows_the_reference_rule_unless_set():
    tree = TREES["2 levels"]
    logits, y = batch(tree)
    parts = {}
    for alpha, beta in [(0.0, None), (1.0, 0.0)]:  # the cross-entropy alone, the cosines alone
        parts[alpha] = float(objective(tree, alpha=alpha, beta=beta)(None, logits, y).detach())
    assert float(objective(tree, alpha=0.4)(None, logits, y).detach()) == pytest.approx(
        0.6 * parts[0.0] + 0.4 * parts[1.0], rel=1e-12
    )
    assert float(objective(tree, alpha=2.0)(None, logits, y).detach()) == pytest.approx(
        parts[0.0] + 2.0 * parts[1.0], rel=1e-12
    )
    assert float(objective(tree, alpha=0.4, beta=3.0)(None, logits, y).detach()) == pytest.approx(
        3.0 * parts[0.0] + 0.4 * parts[1.0], rel=1e-12
    )


def test_the_bias_of_the_models_head_changes_nothing(tree):
    # the model's linear head stands for the reference's bias-free 1x1 convolution: the
    # batch normalisation after it takes out a shift of any coordinate, so the loss and the
    # scores do not move and the bias gets no gradient
    ours = objective(tree).train()
    logits, y = batch(tree)
    loss = ours(None, logits, y)
    (grad,) = torch.autograd.grad(loss, [logits])
    assert float(grad.sum(0).abs().max()) < 1e-12 < float(grad.abs().max())
    shift = 5 * torch.randn(tree.num_classes, dtype=torch.float64)
    shifted = ours(None, logits + shift, y)
    assert float(shifted.detach()) == pytest.approx(float(loss.detach()), rel=1e-12)
    torch.testing.assert_close(
        ours.class_scores(None, logits + shift), ours.class_scores(None, logits)
    )


# -- the reference's quirks ------------------------------------------------------------------


def test_reference_quirk_the_floor_is_not_the_lowest_similarity_and_stops_short_of_zero():
    tree = TREES["2 levels"]  # 9 classes: the grid runs from -1/8 to -1 in steps of 0.0088
    heights = tree.lca_heights(torch.float64)
    _, s = haf_frame(tree, 2.0)
    floor = similarity_floor(heights, 2.0)
    # "min_similarity" -0.3902 is (1 - s) e^-gamma + s = -0.2020 at the largest height
    assert floor == pytest.approx(-0.3902, abs=1e-4)
    assert float(s.min()) == pytest.approx(-0.2020, abs=1e-4)
    # the grid's floor sits above the exact boundary of semi-definiteness (-0.3949), where the
    # smallest eigenvalue would be 0: at the floor it is 0.0304
    exact = bisect_boundary(heights, 2.0)
    assert exact == pytest.approx(-0.3949, abs=1e-4)
    assert float(torch.linalg.eigvalsh(s).min()) == pytest.approx(0.0304, abs=1e-4)
    # and the grid ends at -1: on the 3-level tree at gamma 1 the floor is -1, the similarities
    # still 0.3612 (their smallest eigenvalue) from singular
    _, s3 = haf_frame(TREES["3 levels"], 1.0)
    assert similarity_floor(TREES["3 levels"].lca_heights(torch.float64), 1.0) == -1.0
    assert float(torch.linalg.eigvalsh(s3).min()) == pytest.approx(0.3612, abs=1e-4)


def bisect_boundary(heights: torch.Tensor, gamma: float) -> float:
    low, high = -1.0, -1.0 / (heights.shape[0] - 1)
    for _ in range(60):
        mid = (low + high) / 2
        semidefinite = torch.linalg.eigvalsh(similarities(heights, gamma, mid)).min() >= 0
        low, high = (low, mid) if semidefinite else (mid, high)
    return high


def test_reference_quirk_without_a_semidefinite_floor_its_similarities_are_nan():
    # a matrix of "heights" that no tree gives (two classes at 0 but a third at 1 and 3):
    # no floor of the grid is semi-definite; the reference's floor stays inf and its
    # similarities are NaN, here a one-line error
    heights = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 3.0], [0.0, 3.0, 0.0]], dtype=torch.float64)
    mapping = ref.map_hdistance_to_cosine_similarity_exponential_decay
    search = ref.find_max_separation_matrix_factorization_solver
    floor = search(heights.numpy(), 3, 100, mapping, 5.0)
    assert floor == float("inf")
    with np.errstate(invalid="ignore"):
        assert np.isnan(ref.hdistance_to_similarity_matrix(heights.numpy(), 5.0, 3)).all()
    with pytest.raises(ValueError) as info:
        similarity_floor(heights, 5.0)
    assert "not positive semi-definite at any floor" in str(info.value)
    assert "\n" not in str(info.value)


def test_reference_quirk_its_frame_is_rotated_by_the_seed():
    # np.random draws an orthogonal Q per run: the same Gram matrix, other class vectors, so
    # a head's features give other logits under another seed (by up to 3.989 on this draw
    # on an Intel Xeon, 4.101 on an AMD EPYC: the QR's LAPACK path differs by CPU; the
    # logits are of order 1, so a change above 1 is a change of prediction, not rounding)
    tree = TREES["3 levels"]
    w0, _, _ = reference_frame(tree, 2.0, seed=0)
    w1, _, _ = reference_frame(tree, 2.0, seed=1)
    np.testing.assert_allclose(w0 @ w0.T, w1 @ w1.T, rtol=0, atol=1e-12)
    f = np.random.default_rng(0).standard_normal((8, tree.num_classes))
    assert np.abs(f @ w0.T - f @ w1.T).max() > 1.0
    w, _ = haf_frame(tree, 2.0)  # hierot's: no rotation, the same on every call
    assert torch.equal(w, haf_frame(tree, 2.0)[0])


# -- options, the checkpoint, the model ------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"alpha": -1}, "haframe: alpha must be a number >= 0, got -1"),
        ({"alpha": float("nan")}, "haframe: alpha must be a number >= 0, got nan"),
        ({"beta": "x"}, "haframe: beta must be a number >= 0, got 'x'"),
        ({"beta": float("inf")}, "haframe: beta must be finite, got inf"),
        ({"gamma": 0}, "haframe: gamma must be > 0, got 0"),
        ({"gamma": float("inf")}, "haframe: gamma must be finite, got inf"),
        (
            {"delta": 1},
            "objective 'haframe' has no option 'delta'; its options: alpha, beta, gamma",
        ),
    ],
)
def test_bad_options_are_one_line(options, message):
    with pytest.raises(ValueError) as info:
        check_objective("haframe", options, TREES["3 levels"])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_checkpoint_keeps_its_frame():
    # the frame and its targets are saved: a checkpoint loads the frame its head was trained
    # against, not one decomposed anew (another LAPACK may pick another eigenbasis)
    tree = TREES["4 levels"]
    ours = build_objective("haframe", tree, 6)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))
    ours.frame.copy_(ours.frame @ q)
    fresh = build_objective("haframe", tree, 6)
    assert not torch.equal(fresh.frame, ours.frame)
    fresh.load_state_dict(ours.state_dict())
    assert torch.equal(fresh.frame, ours.frame)
    assert {"frame", "similarity"} <= set(ours.state_dict())


def test_the_model_predicts_and_measures_with_the_frame_scores():
    from functools import partial

    from hierot.models import HierarchyModule

    tree = TREES["unbalanced"]
    torch.manual_seed(0)
    backbone = torch.nn.Linear(5, 4)
    backbone.num_features = 4
    sgd = partial(torch.optim.SGD, lr=0.1)
    m = HierarchyModule(backbone, tree, sgd, dist="none", objective="haframe").eval()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(64, 5, generator=g), torch.randint(0, 8, (64,), generator=g)
    with torch.no_grad():
        z, scores = m(x)
        torch.testing.assert_close(scores, m.objective.head(m.head(z)) @ m.objective.frame.T)
        m._eval_step("test", (x, y))
        metrics = m.test_metrics.compute()
    acc = (scores.argmax(1) == y).double().mean()
    assert float(metrics["test/acc_fine"]) == pytest.approx(float(acc))
    assert float(metrics["test/loss"]) == pytest.approx(float(F.cross_entropy(scores, y)), rel=1e-5)
    saved = {k for k in m.state_dict() if k.startswith("objective.")}
    assert {"objective.frame", "objective.similarity", "objective.head.bn.running_mean"} <= saved


@pytest.mark.slow
def test_a_run_with_cpcc_tests_with_the_scores_its_checkpoint_gives(tmp_path):
    # the embedded data with CPCC (l2) on top; the checkpoint loads weights-only with the
    # frame it was trained against, and the run's test metrics are the frame's scores'
    import json

    from hierot.checkpoints import load_trained, run_datamodule
    from hierot.config import compose_config
    from hierot.train import train

    out = tmp_path / "run"
    train(compose_config(["debug=tiny", "trainer.limit_val_batches=1", "objective=haframe",
                          "dist=l2", f"output_dir={out}"]))  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == "haframe" and np.isfinite(metrics["test/cpcc"])
    ckpt = out / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert {"objective.frame", "objective.similarity", "objective.head.bn.weight"} <= set(saved)
    module, data = load_trained(ckpt), run_datamodule(ckpt)
    assert torch.equal(module.objective.frame, saved["objective.frame"])
    scores, y = loaded_test_scores(module, data)
    acc = float((scores.argmax(1) == y).double().mean())
    assert metrics["test/acc_fine"] == pytest.approx(acc, abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(float(F.cross_entropy(scores, y)), rel=1e-4)
