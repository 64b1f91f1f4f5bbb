import numpy as np
import pytest
import torch

from hierot.distances import monotone_coupling

from helpers.references import greedy_plan

SIZES = [(1, 1), (1, 5), (5, 1), (3, 3), (4, 6), (6, 4), (7, 5), (2, 9), (12, 8), (13, 17)]


def dense(n_a, n_b):
    pair, r, s, mass = monotone_coupling(torch.tensor(n_a), torch.tensor(n_b), torch.float64)
    plans = [np.zeros((a, b)) for a, b in zip(n_a, n_b)]
    for p, i, j, m in zip(pair.tolist(), r.tolist(), s.tolist(), mass.tolist()):
        plans[p][i, j] += m
    return plans, pair


def test_all_pairs_at_once_match_the_greedy_loop():
    n_a, n_b = zip(*SIZES)
    plans, pair = dense(list(n_a), list(n_b))
    for (a, b), plan in zip(SIZES, plans):
        np.testing.assert_allclose(plan, greedy_plan(a, b), atol=1e-15, err_msg=f"{a}x{b}")
        np.testing.assert_allclose(plan.sum(1), np.full(a, 1 / a), atol=1e-15)
        np.testing.assert_allclose(plan.sum(0), np.full(b, 1 / b), atol=1e-15)
    # at most n_a + n_b - 1 entries per pair: the coupling is linear in the class sizes
    counts = torch.bincount(pair, minlength=len(SIZES)).tolist()
    assert all(c <= a + b - 1 for c, (a, b) in zip(counts, SIZES))
    assert counts[SIZES.index((3, 3))] == 3  # shared breakpoints give no empty segment
    assert counts[SIZES.index((7, 5))] == 11


def test_plan_is_monotone():
    _, r, s, mass = monotone_coupling(torch.tensor([13]), torch.tensor([17]), torch.float64)
    order = torch.argsort(r * 17 + s)
    r, s = r[order], s[order]
    # a staircase from (0, 0) to (12, 16): each step moves right, down, or both
    assert torch.all(r[1:] >= r[:-1]) and torch.all(s[1:] >= s[:-1])
    assert r[0] == 0 and s[0] == 0 and r[-1] == 12 and s[-1] == 16
    assert float(mass.sum()) == pytest.approx(1.0, abs=1e-15)


def test_no_pairs():
    pair, r, s, mass = monotone_coupling(torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert pair.numel() == r.numel() == s.numel() == mass.numel() == 0


@pytest.mark.parametrize("n", [2, 3, 10])
def test_equal_sizes_give_the_identity_matching(n):
    plans, _ = dense([n], [n])
    np.testing.assert_allclose(plans[0], np.eye(n) / n)
