"""The one call into POT's private network-simplex API."""

import numpy as np
import ot
import pytest

from hierot.distances import network_simplex


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
        plan = network_simplex.exact_plan(a, b, cost, 100_000)
        np.testing.assert_allclose(plan, ot.emd(a, b, cost), atol=1e-15)
        np.testing.assert_allclose(plan.sum(1), a, atol=1e-12)


def test_a_changed_signature_falls_back_to_ot_emd(monkeypatch):
    import ot.lp.emd_wrap as wrap

    def emd_c(a, b, M, numThreads, max_iter):  # the parameters reordered
        raise AssertionError("must not be called")

    monkeypatch.setattr(wrap, "emd_c", emd_c)
    assert network_simplex._find_emd_c() is None
