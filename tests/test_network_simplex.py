"""The one call into POT's private network-simplex API."""

import re
import warnings

import numpy as np
import ot
import pytest
import torch

from hierot.distances import class_distances, emd, network_simplex

from helpers.batches import multimodal_batch


def problem(seed, n=7, m=5):
    rng = np.random.default_rng(seed)
    a = rng.random(n) + 0.1
    b = rng.random(m) + 0.1
    cost = np.ascontiguousarray(rng.random((n, m)))
    return a / a.sum(), b / b.sum(), cost


def test_the_pinned_pot_offers_the_direct_solver():
    # If this fails, POT changed emd_c's signature: emd still works through ot.emd (below),
    # ~10x slower on small pairs; update EXPECTED_PARAMETERS to the new signature.
    assert network_simplex.direct_solver(), (
        "ot.lp.emd_wrap.emd_c no longer takes (a, b, M, max_iter, numThreads, ...)"
    )


@pytest.mark.parametrize("direct", [True, False])
def test_plans_equal_ot_emd(monkeypatch, direct):
    if not direct:
        monkeypatch.setattr(network_simplex, "_EMD_C", None)
    assert network_simplex.direct_solver() == direct
    for seed in range(3):
        a, b, cost = problem(seed)
        plan, _ = network_simplex.exact_plan(a, b, cost, 100_000)
        np.testing.assert_allclose(plan, ot.emd(a, b, cost), atol=1e-15)
        np.testing.assert_allclose(plan.sum(1), a, atol=1e-12)


def test_a_changed_signature_falls_back_to_ot_emd(monkeypatch):
    import ot.lp.emd_wrap as wrap

    def emd_c(a, b, M, numThreads, max_iter):  # the parameters reordered
        raise AssertionError("must not be called")

    monkeypatch.setattr(wrap, "emd_c", emd_c)
    assert network_simplex._find_emd_c() is None


@pytest.mark.parametrize("direct", [True, False])
def test_the_result_code_comes_with_the_plan(monkeypatch, direct):
    if not direct:
        monkeypatch.setattr(network_simplex, "_EMD_C", None)
    a, b, cost = problem(0, n=30, m=30)
    assert network_simplex.exact_plan(a, b, cost, 100_000)[1] == network_simplex.OPTIMAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ot.emd's own warning, on the fallback route
        _, code = network_simplex.exact_plan(a, b, cost, 2)
    assert code == network_simplex.MAX_ITER_REACHED


def test_pairs_stopped_at_the_iteration_limit_warn_once_and_are_counted():
    """POT's ot.emd warns on a plan that hit numItermax; emd's direct call to the solver
    warns on the first such class pair of a run, naming it and the limit, and counts all."""
    unfinished = emd.UNFINISHED_PLANS
    unfinished.reset()
    z, y = multimodal_batch(num_classes=5, per_class=(12, 20), seed=1)
    with pytest.warns(RuntimeWarning) as caught:
        _, dist = class_distances(z, y, "emd", max_iter=2)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert re.search(r"classes \d+ and \d+", message) and "max_iter=2" in message, message
    # every pair of 5 classes of 12 to 20 samples needs more than 2 pivots
    assert unfinished.count == 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per run: no second warning
        class_distances(z, y, "emd", max_iter=2)
        class_distances(z, y, "emd")  # optimal plans: not counted
    assert unfinished.count == 20
    assert "20 class pairs" in unfinished.summary() and "max_iter=2" in unfinished.summary()
    # what made it worth a warning: a stopped plan does not even carry the unit mass
    assert torch.all(dist < class_distances(z, y, "emd")[1] - 1)
    unfinished.reset()
    assert unfinished.count == 0 and unfinished.summary() is None
